"""The README's commands are the ones CI and users run."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_command = [
            l for l in f.read().splitlines() if l and not l.startswith(("#", "set ", "cd "))
        ]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert len(ci_command) == 1
    assert ci_command[0] in readme
    first_commands = [l for l in readme.splitlines() if l.startswith("./setup.sh")][:2]
    assert first_commands[1] == ci_command[0]
    assert "videogen.main --config=experiments/quickstart.py" in first_commands[0]
