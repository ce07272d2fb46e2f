"""launch/: the launchers' dry runs, their retry / requeue logic against fake gcloud and
SLURM commands, the multi-host environment they give JAX, and the config keys their
documentation names.

Everything runs the scripts with bash in subprocesses; no JAX computation and no cloud.
The fake `gcloud`, `sbatch`, `srun`, `scontrol` and `scancel` on PATH record their calls,
so a dry run that ran anything is caught.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import pytest

from videogen import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
TPU = os.path.join(LAUNCH, "tpu_vm.sh")
SLURM = os.path.join(LAUNCH, "gpu_slurm.sbatch")
WORKER_RUN = os.path.join(LAUNCH, "tpu_worker_run.sh")
FAKED = ("gcloud", "sbatch", "srun", "scontrol", "scancel")


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH whose cloud and SLURM commands only append their arguments to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in FAKED:
        script = bin_dir / name
        script.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{tmp_path}/calls.log"\nexit 1\n')
        script.chmod(0o755)
    return tmp_path


def _bash(script, *args, env=None, path_dir=None, timeout=30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    full_env.update(env or {})
    if path_dir is not None:
        full_env["PATH"] = f"{path_dir / 'bin'}:{full_env['PATH']}"
    return subprocess.run(
        ["bash", script, *args], env=full_env, capture_output=True, text=True, timeout=timeout,
        cwd=ROOT,
    )


def _commands(stdout):
    """The printed commands of a dry run (a multi-line quoted argument joined into its
    command with newlines), without its comments."""
    commands, pending = [], ""
    for line in stdout.splitlines():
        if not pending and (not line.strip() or line.startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending)
        except ValueError:  # an unclosed quote: the command goes on
            continue
        commands.append(pending)
        pending = ""
    assert not pending, f"unterminated command: {pending}"
    return commands


TPU_ENV = dict(
    TPU_NAME="vg", ZONE="us-central2-b", ACCELERATOR="v4-32", SPOT="1",
    CONFIG="experiments/magvit2_k600.py", WORKDIR="gs://bucket/runs/k600",
)
MAIN_FLAGS = ("--config.data.path=gs://bucket/k600", "--config.num_train_steps=1000")


def test_tpu_dry_run_of_a_v4_32_slice(fake_bin):
    result = _bash(TPU, "--dry-run", "--", *MAIN_FLAGS, env=dict(TPU_ENV, DELETE_AFTER="1"),
                   path_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    assert not (fake_bin / "calls.log").exists(), "the dry run ran a command"
    out = result.stdout
    assert "v4-32, 4 worker(s)" in out
    commands = _commands(out)
    creates = [c for c in commands if c.startswith("gcloud compute tpus tpu-vm create vg ")]
    assert len(creates) == 2  # the first attempt and the one after the simulated preemption
    assert all("--accelerator-type=v4-32" in c and "--spot" in c and "--zone=us-central2-b" in c
               for c in creates)
    # Code, setup and the run go to every worker.
    remote = [c for c in commands if " ssh " in c or " scp " in c]
    assert remote and all("--worker=all" in c for c in remote)
    runs = [c for c in commands if "videogen.main" in c]
    assert len(runs) == 2
    for run in runs:
        assert "WORKERS=4 launch/tpu_worker_run.sh .venv/bin/python -m videogen.main" in run
        assert "--config=experiments/magvit2_k600.py --workdir=gs://bucket/runs/k600" in run
        assert " ".join(MAIN_FLAGS) in run
    # The retry loop: after the run, the state is read; PREEMPTED -> delete, create, set up, run.
    order = [
        next(i for i, c in enumerate(commands) if pattern in c)
        for pattern in ("tpu-vm create", "tpu-vm scp", "videogen.main")
    ]
    assert order == sorted(order)
    after_first_run = commands[order[2] + 1:]
    assert after_first_run[0].startswith("gcloud compute tpus tpu-vm describe vg")
    assert any(c.startswith("gcloud compute tpus tpu-vm delete vg --quiet") for c in after_first_run)
    assert "Attempt 2 of 6" in out
    # Teardown last (DELETE_AFTER=1).
    assert commands[-1] == "gcloud compute tpus tpu-vm delete vg --quiet --zone=us-central2-b"


def test_tpu_dry_run_with_git_clone_and_teardown(fake_bin):
    env = dict(TPU_ENV, SPOT="0", REPO_URL="https://example.com/videogen.git", REPO_REF="v1",
               PROJECT="my-proj")
    result = _bash(TPU, "--dry-run", env=env, path_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    assert not any("--spot" in c for c in commands)
    assert all("--project=my-proj" in c for c in commands if c.startswith("gcloud"))
    assert sum("videogen.main" in c for c in commands) == 1  # no preemption without SPOT
    clone = next(c for c in commands if "git clone" in c)
    assert "https://example.com/videogen.git" in clone and "fetch --quiet origin v1" in clone
    assert not any(c.startswith("git -C") for c in commands)  # no local archive

    teardown = _bash(TPU, "--dry-run", "teardown", env=dict(TPU_NAME="vg", ZONE="z"),
                     path_dir=fake_bin)
    assert teardown.returncode == 0, teardown.stderr
    assert _commands(teardown.stdout)[-1] == "gcloud compute tpus tpu-vm delete vg --quiet --zone=z"
    assert not (fake_bin / "calls.log").exists()


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("--dry-run", "--config.x=1"), TPU_ENV, "unexpected argument '--config.x=1'"),
        (("--dry-run",), dict(TPU_ENV, CONFIG=""), "set CONFIG"),
        (("--dry-run",), dict(TPU_ENV, MAX_RETRIES="many"), "MAX_RETRIES=many"),
        (("--dry-run",), dict(TPU_ENV, SPOT="yes"), "SPOT=yes; use 0 or 1"),
        (("--dry-run", "teardown", "--", "--x"), TPU_ENV, "teardown takes no flags"),
    ],
)
def test_tpu_errors_name_the_bad_value(fake_bin, args, env, message):
    result = _bash(TPU, *args, env=env, path_dir=fake_bin)
    assert result.returncode == 2
    assert message in result.stderr


def _fake_gcloud(tmp_path, run_statuses):
    """A gcloud that keeps the TPU's state in a file; the n-th `ssh` that runs main exits
    with run_statuses[n] and, for 255, leaves the TPU PREEMPTED (as a spot preemption)."""
    state, count = tmp_path / "state", tmp_path / "runs"
    statuses = " ".join(map(str, run_statuses))
    (tmp_path / "bin" / "gcloud").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$4" >> "{tmp_path}/verbs.log"
        case "$4" in
          describe) [ -f "{state}" ] || exit 1; cat "{state}" ;;
          create) echo READY > "{state}" ;;
          delete) rm -f "{state}" ;;
          ssh)
            case "$*" in *videogen.main*) ;; *) exit 0 ;; esac
            n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"
            statuses=({statuses}); rc=${{statuses[$n]}}
            [ "$rc" = 255 ] && echo PREEMPTED > "{state}"
            exit "$rc" ;;
        esac
        exit 0
        """))


def _gcloud_calls(tmp_path):
    return (tmp_path / "verbs.log").read_text().split()


def test_tpu_recreates_a_preempted_vm_and_runs_again(fake_bin):
    _fake_gcloud(fake_bin, [255, 255, 0])
    env = dict(TPU_ENV, PREEMPT_WAIT="0", REPO_URL="https://example.com/v.git")
    result = _bash(TPU, "--", *MAIN_FLAGS, env=env, path_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    assert "Training run finished" in result.stdout
    calls = _gcloud_calls(fake_bin)
    # describe/create/setup(2 ssh)/run, then twice: describe, describe, delete, create, setup, run.
    assert calls.count("create") == 3 and calls.count("delete") == 2
    assert (fake_bin / "runs").read_text().strip() == "3"


def test_tpu_retries_are_bounded_and_crashes_are_not_retried(fake_bin):
    _fake_gcloud(fake_bin, [255, 255, 255])
    env = dict(TPU_ENV, PREEMPT_WAIT="0", MAX_RETRIES="1", REPO_URL="https://example.com/v.git")
    result = _bash(TPU, env=env, path_dir=fake_bin)
    assert result.returncode == 1
    assert "preempted 2 times, more than MAX_RETRIES=1" in result.stderr
    assert (fake_bin / "runs").read_text().strip() == "2"

    (fake_bin / "verbs.log").unlink()
    (fake_bin / "runs").unlink()
    _fake_gcloud(fake_bin, [3])  # main fails; the VM stays READY
    result = _bash(TPU, env=dict(env, DELETE_AFTER="1"), path_dir=fake_bin)
    assert result.returncode == 3
    assert "exited with status 3" in result.stderr and "still READY" in result.stderr
    assert (fake_bin / "runs").read_text().strip() == "1"
    assert _gcloud_calls(fake_bin)[-1] == "delete"  # DELETE_AFTER also after a failure


def _metadata(tmp_path, endpoints):
    attributes = tmp_path / "md" / "instance" / "attributes"
    attributes.mkdir(parents=True)
    (attributes / "worker-network-endpoints").write_text(endpoints)
    return f"file://{tmp_path / 'md'}"


PROBE = (
    "import os; from videogen.main import _is_multi_process; "
    "print('coordinator', os.environ.get('JAX_COORDINATOR_ADDRESS'), _is_multi_process())"
)


def test_tpu_worker_exports_the_coordinator_on_a_multi_host_slice(tmp_path):
    url = _metadata(tmp_path, "w-0:id0:10.0.0.2,w-1:id1:10.0.0.3,w-2:id2:10.0.0.4,w-3:id3:10.0.0.5")
    log = tmp_path / "logs" / "main.log"
    env = dict(WORKERS="4", METADATA_URL=url, LOG=str(log), PYTHONPATH=ROOT)
    result = _bash(WORKER_RUN, sys.executable, "-c", PROBE, env=env)
    assert result.returncode == 0, result.stderr
    # videogen.main sees several processes and calls jax.distributed.initialize(), which
    # takes this coordinator and reads the process count and index from the metadata.
    assert "coordinator 10.0.0.2:8482 True" in result.stdout
    assert "coordinator 10.0.0.2:8482 True" in log.read_text()

    # One host: no metadata query, no coordinator, main stays single-process.
    single = _bash(WORKER_RUN, sys.executable, "-c", PROBE,
                   env=dict(env, WORKERS="1", METADATA_URL="file:///nonexistent"))
    assert "coordinator None False" in single.stdout
    assert (tmp_path / "logs" / "main.prev.log").exists()
    # A multi-host slice whose metadata cannot be read is an error naming the fix.
    broken = _bash(WORKER_RUN, "true", env=dict(env, METADATA_URL="file:///nonexistent"))
    assert broken.returncode == 2 and "JAX_COORDINATOR_ADDRESS=<worker 0 IP>:8482" in broken.stderr


def test_tpu_worker_reports_a_sigterm_stop(tmp_path):
    env = dict(WORKERS="1", LOG=str(tmp_path / "main.log"))
    stopped = "echo 'W loop.py:438] Stopped at step 7 on SIGTERM; checkpoint saved in gs://b.'"
    assert _bash(WORKER_RUN, "bash", "-c", stopped, env=env).returncode == 143
    assert _bash(WORKER_RUN, "bash", "-c", "echo done; exit 3", env=env).returncode == 3
    assert _bash(WORKER_RUN, "true", env=env).returncode == 0


SLURM_ENV = dict(CONFIG="experiments/magvit2_k600.py", WORKDIR="/shared/runs/k600", NODES="2",
                 GPUS_PER_NODE="8")


def test_slurm_dry_run_of_a_2_node_8_gpu_job(fake_bin):
    result = _bash(SLURM, "--dry-run", "submit", "--config.data.path=/shared/k600",
                   env=SLURM_ENV, path_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    assert not (fake_bin / "calls.log").exists(), "the dry run ran a command"
    out, commands = result.stdout, _commands(result.stdout)
    assert commands[0] == (f"sbatch --nodes=2 --gpus-per-node=8 {SLURM} "
                           "--config.data.path=/shared/k600")
    port = 61440 + 12345 % 4096
    assert f"export JAX_COORDINATOR_ADDRESS=node001:{port}" in commands
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in commands
    srun = next(c for c in commands if c.startswith("srun "))
    assert srun.startswith("srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 ")
    assert srun.endswith("-m videogen.main --config=experiments/magvit2_k600.py "
                         "--workdir=/shared/runs/k600 --config.data.path=/shared/k600 &")
    for rank in (0, 1):
        assert f"SLURM_PROCID={rank} SLURM_NTASKS=2" in out
        assert f"process_id={rank} num_processes=2" in out
    assert commands[-3:] == ["scancel --signal=TERM 12345", "scontrol requeue 12345",
                             "scancel 12345"]
    # DRY_RUN=1 and plain --dry-run give the same plan.
    same = _bash(SLURM, "--config.data.path=/shared/k600", env=dict(SLURM_ENV, DRY_RUN="1"),
                 path_dir=fake_bin)
    assert same.stdout == out


def test_slurm_script_requests_requeue_and_a_warning_signal():
    with open(SLURM) as f:
        directives = [l.split(None, 1)[1].strip() for l in f if l.startswith("#SBATCH")]
    assert "--requeue" in directives
    assert "--signal=B:USR1@300" in directives
    assert "--open-mode=append" in directives
    assert "--ntasks-per-node=1" in directives


def test_slurm_env_gives_jax_the_process_layout(fake_bin):
    """JAX's own SLURM detection, fed the dry run's exports and srun's per-task variables,
    yields 2 processes, this task's rank, the coordinator and all 8 GPUs. (It reads
    jax._src.clusters, as jax.distributed.initialize does, without starting a runtime.)"""
    out = _bash(SLURM, "--dry-run", env=SLURM_ENV, path_dir=fake_bin).stdout
    exports = dict(
        l.split(" ", 1)[1].split("=", 1) for l in _commands(out) if l.startswith("export ")
    )
    probe = textwrap.dedent("""\
        import os
        from jax._src import clusters
        from videogen.main import _is_multi_process
        print(_is_multi_process(), clusters.ClusterEnv.auto_detect_unset_distributed_params(
            os.environ.get("JAX_COORDINATOR_ADDRESS"), None, None,
            [int(i) for i in os.environ["JAX_LOCAL_DEVICE_IDS"].split(",")], None, 10))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env.update(exports, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", SLURM_JOB_ID="12345",
               SLURM_STEP_NODELIST="node[001-002]", SLURM_NTASKS="2", SLURM_PROCID="1",
               SLURM_LOCALID="0")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    port = 61440 + 12345 % 4096
    assert result.stdout.strip() == f"True ('node001:{port}', 2, 1, [0, 1, 2, 3, 4, 5, 6, 7])"


def _fake_slurm(tmp_path, srun_status):
    """srun records its pid and exits `srun_status` at once or, for "wait", 0 when SIGTERM
    (sent by `scancel --signal=TERM`) arrives (9 after 10 s); scontrol lists two nodes."""
    bin_dir = tmp_path / "bin"
    (bin_dir / "srun").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "srun $*" >> "{tmp_path}/calls.log"
        trap 'echo saved >> "{tmp_path}/calls.log"; exit 0' TERM
        echo $$ > "{tmp_path}/srun.pid"
        [ {srun_status} = wait ] || exit {srun_status}
        for _ in $(seq 100); do sleep 0.1; done
        exit 9
        """))
    (bin_dir / "scancel").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "scancel $*" >> "{tmp_path}/calls.log"
        [ "$1" = --signal=TERM ] && kill -TERM "$(cat "{tmp_path}/srun.pid")"
        exit 0
        """))
    (bin_dir / "scontrol").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "scontrol $*" >> "{tmp_path}/calls.log"
        [ "$1" = show ] && printf 'node001\\nnode002\\n'
        exit 0
        """))
    (tmp_path / "python").write_text("#!/bin/sh\n")
    (tmp_path / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env.update(SLURM_ENV, PATH=f"{bin_dir}:{env['PATH']}", PYTHON=str(tmp_path / "python"),
               SLURM_JOB_ID="12345", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2",
               SLURM_GPUS_ON_NODE="8", SLURM_JOB_NODELIST="node[001-002]",
               SLURM_SUBMIT_DIR=ROOT, SLURM_RESTART_COUNT="3", MAX_REQUEUES="4")
    return env


def test_slurm_job_requeues_itself_before_the_time_limit(fake_bin):
    env = _fake_slurm(fake_bin, srun_status="wait")
    job = subprocess.Popen(["bash", SLURM, "--config.data.path=/d"], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while not (fake_bin / "srun.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # SLURM's warning, 300 s before the limit
    stdout, stderr = job.communicate(timeout=20)
    assert job.returncode == 0, stderr
    calls = (fake_bin / "calls.log").read_text().splitlines()
    assert calls[0] == "scontrol show hostnames node[001-002]"
    assert calls[1].startswith("srun --nodes=2 --ntasks-per-node=1 ")
    assert calls[2:] == ["scancel --signal=TERM 12345", "saved", "scontrol requeue 12345"]
    assert "requeueing (restart 4 of at most 4)" in stdout


def test_slurm_job_does_not_requeue_a_failure_or_past_max_requeues(fake_bin):
    env = _fake_slurm(fake_bin, srun_status=3)
    result = subprocess.run(["bash", SLURM], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 3
    assert not any("requeue" in l for l in (fake_bin / "calls.log").read_text().splitlines())
    over = subprocess.run(["bash", SLURM], env=dict(env, SLURM_RESTART_COUNT="5"), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert over.returncode == 1 and "more than MAX_REQUEUES=4" in over.stderr


def test_slurm_teardown_and_errors(fake_bin):
    cancel = _bash(SLURM, "--dry-run", "cancel", "12345", path_dir=fake_bin)
    assert _commands(cancel.stdout) == ["scancel 12345"]
    stop = _bash(SLURM, "--dry-run", "stop", "12345", path_dir=fake_bin)
    assert _commands(stop.stdout) == ["scancel --signal=TERM 12345"]
    assert not (fake_bin / "calls.log").exists()
    bad = _bash(SLURM, "cancel", "job7", path_dir=fake_bin)
    assert bad.returncode == 2 and "got 'job7'" in bad.stderr
    outside = _bash(SLURM, "--config.data.path=/d", env=SLURM_ENV, path_dir=fake_bin)
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
    nodes = _bash(SLURM, "--dry-run", env=dict(SLURM_ENV, NODES="0"), path_dir=fake_bin)
    assert nodes.returncode == 2 and "NODES=0" in nodes.stderr


# --- Config keys in launch/ documentation and --help.

KEY = re.compile(r"--config\.([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)=")
EXPERIMENT = re.compile(r"(?:CONFIG=|--config=)(experiments/[a-z0-9_]+\.py)(?::([\w,=.]+))?")
DEFAULT_EXPERIMENT = ("experiments/magvit2_k600.py", None)


def config_key_examples(text):
    """(key, experiment, argument) for every `--config.a.b=` in `text`; the experiment is
    the one the same command (backslash-continued lines joined) names, else magvit2_k600."""
    found = []
    for command in re.sub(r"\\\n", " ", text).splitlines():
        experiment = EXPERIMENT.search(command)
        named = experiment.groups() if experiment else DEFAULT_EXPERIMENT
        found += [(key, *named) for key in KEY.findall(command)]
    return found


def missing_keys(examples):
    configs, missing = {}, []
    for key, experiment, arg in examples:
        if (experiment, arg) not in configs:
            module = config_lib.load_experiment(os.path.join(ROOT, experiment))
            configs[experiment, arg] = module.get_config(arg)
        node = configs[experiment, arg]
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing.append(f"--config.{key} ({experiment}{':' + arg if arg else ''})")
                break
            node = node[part]
    return missing


def test_the_key_checker_catches_a_wrong_key():
    text = "CONFIG=experiments/quickstart.py \\\n  launch/tpu_vm.sh -- --config.train.steps=1000"
    examples = config_key_examples(text)
    assert examples == [("train.steps", "experiments/quickstart.py", None)]
    assert missing_keys(examples) == ["--config.train.steps (experiments/quickstart.py)"]
    assert missing_keys([("num_train_steps", "experiments/magvit2_k600.py", "runlocal")]) == []


def test_launch_docs_and_help_name_existing_config_keys():
    texts = {}
    for name in sorted(os.listdir(LAUNCH)):
        if name.endswith((".sh", ".sbatch", ".md")):
            with open(os.path.join(LAUNCH, name)) as f:
                texts[name] = f.read()
    texts["tpu_vm.sh --help"] = _bash(TPU, "--help").stdout
    texts["gpu_slurm.sbatch --help"] = _bash(SLURM, "--help").stdout
    examples = {name: config_key_examples(text) for name, text in texts.items()}
    for name in ("README.md", "tpu_vm.sh", "gpu_slurm.sbatch", "tpu_vm.sh --help",
                 "gpu_slurm.sbatch --help"):
        assert examples[name], f"no --config.KEY= example found in {name}"
    assert "train.steps" not in {key for found in examples.values() for key, *_ in found}
    missing = {name: missing_keys(found) for name, found in examples.items()}
    assert not any(missing.values()), missing


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    result = subprocess.run(
        ["shellcheck", "-s", "bash", TPU, SLURM, WORKER_RUN], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
