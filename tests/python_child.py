"""Running a snippet in a fresh Python process (a support module, not a test module).

For what one process cannot undo once done: a kernel library loaded or refused, malloc's
settings, an environment variable read at start."""

import os
import subprocess
import sys


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` with this interpreter on CPU, `env` added to this process's environment;
    fails the test (with the child's stderr) unless it exits 0."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out
