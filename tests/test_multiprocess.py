"""Runs across several JAX processes on one machine, as on a multi-host pod.

Each process is `python -m videogen.main` with its own fake CPU devices, joined to
the others by `jax.distributed` on a localhost coordinator (JAX's gloo CPU
collectives). The runs are compared with one process over the same global batch
and mesh: equal losses at every step mean the processes read disjoint halves of
each global batch (the same half twice would change the loss), and equal
parameters after a SIGTERM stop and restart mean every process saved, and
restored, the same state.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from videogen.trainers import maskgit
from videogen.trainers import tokenizer as tokenizer_trainer
from tiny_configs import MASKGIT_TINY, ROOT, TINY_OVERRIDES, configure, load_experiment

TESTS = os.path.dirname(os.path.abspath(__file__))
# The tiny tokenizer without GAN and LPIPS: processes, signals and restarts are the subject.
TOKENIZER = {
    **TINY_OVERRIDES,
    "loss.generator_adversarial_weight": 0.0,
    "loss.perceptual_weight": 0.0,
    "mesh.shape": (8, 1, 1),
    "num_train_steps": 4,
}
_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from tiny_configs import configure, load_experiment

def get_config():
    return configure(load_experiment({name!r}).get_config(), **{overrides!r})
"""
# clu's logging writer: "... logging_writer.py:48] [<step>] key=value, key=value".
_LOGGED_SCALARS = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] (.*)$", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _xla_flags(devices: int) -> str:
    """The suite's XLA flags (tests/conftest.py) with `devices` fake CPU devices."""
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    ]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])


def _launch(tmp_path, name, overrides, workdir, processes):
    """`processes` copies of videogen.main on one run, 8 devices in all (8 // processes each)."""
    config_file = tmp_path / f"{name}_config.py"
    config_file.write_text(_CONFIG_FILE.format(tests=TESTS, name=name, overrides=overrides))
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "videogen.main",
                f"--config={config_file}",
                f"--workdir={workdir}",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": _xla_flags(8 // processes),
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "VIDEOGEN_NUM_PROCESSES": str(processes),
                "VIDEOGEN_PROCESS_ID": str(index),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(processes)
    ]


def _finish(procs, timeout=300):
    """Every process's output; each must exit 0."""
    outputs = [getattr(p, "early_output", "") + p.communicate(timeout=timeout)[0] for p in procs]
    for index, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {index} exited {p.returncode}:\n{out[-4000:]}"
    return outputs


def _logged_losses(output: str) -> dict[int, float]:
    losses = {}
    for step, values in _LOGGED_SCALARS.findall(output):
        scalars = dict(item.split("=", 1) for item in values.split(", ") if "=" in item)
        if "loss" in scalars:
            losses[int(step)] = float(scalars["loss"])
    return losses


def _checkpoint_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def _wait_for_line(procs, index, text, timeout=240):
    """Reads process `index`'s output until `text` appears (`_finish` keeps what was read)."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = procs[index].stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            procs[index].early_output = "".join(seen)
            return
    for p in procs:
        p.kill()
    raise AssertionError(f"no line {text!r}:\n" + "".join(seen)[-4000:])


def test_two_processes_stop_together_on_sigterm_and_resume_as_one_process_would(tmp_path):
    """The tokenizer on 2 processes x 4 devices: SIGTERM to one process makes both save the
    same step and exit 0; the restart resumes there and finishes. Every step's loss equals
    one process on 8 devices over the same global batches."""
    workdir = str(tmp_path / "run")
    procs = _launch(tmp_path, "quickstart_tokenizer", TOKENIZER, workdir, processes=2)
    # Once both have joined (jax.distributed holds SIGTERM from then on), well before the
    # first step has compiled.
    _wait_for_line(procs, 1, "JAX process 1/2")
    procs[1].send_signal(signal.SIGTERM)
    first = _finish(procs)
    stopped = _checkpoint_steps(workdir)[-1]
    assert 1 <= stopped < TOKENIZER["num_train_steps"]
    for out in first:
        assert f"Stopped at step {stopped} on SIGTERM" in out, out[-3000:]

    second = _finish(_launch(tmp_path, "quickstart_tokenizer", TOKENIZER, workdir, processes=2))
    for out in second:
        assert f"at step {stopped}" in out  # restored, not started again
    assert _checkpoint_steps(workdir)[-1] == TOKENIZER["num_train_steps"]

    # Process 0 logs the losses of its legs; process 1 logs the same (replicated) values.
    losses = {**_logged_losses(first[0]), **_logged_losses(second[0])}
    assert _logged_losses(first[1]) == _logged_losses(first[0])
    assert min(_logged_losses(second[0])) == stopped + 1
    steps = list(range(1, TOKENIZER["num_train_steps"] + 1))
    assert sorted(losses) == steps

    config = configure(load_experiment("quickstart_tokenizer").get_config(), **TOKENIZER)
    one = tokenizer_trainer.train_and_evaluate(config, str(tmp_path / "one"))
    # To the logged digits. (Much later, a latent entry near zero may take either sign
    # depending on summation order, 1 device vs 8 as much as 1 process vs 2, and move a
    # loss by ~0.5%: runs are compared over their first steps.)
    np.testing.assert_allclose(
        [losses[s] for s in steps], [h["loss"] for h in one.history], rtol=1e-4
    )


def test_four_processes_train_the_generator_as_one_process_would(tmp_path, tokenizer_workdir):
    """MAGVIT's stage 2 on 4 processes x 2 devices, a (2, 2, 2) mesh spanning them, each
    process tokenizing its 2 rows of the batch of 8 with the frozen tokenizer: the losses
    and the task draws equal one process on the same mesh (rows read twice, or in another
    order, would draw other tasks and masks and change the loss)."""
    overrides = {
        **MASKGIT_TINY,
        "tokenizer_workdir": tokenizer_workdir,
        "num_train_steps": 3,
        "checkpoint.every_steps": 3,
        "mesh.shape": (2, 2, 2),
    }
    workdir = str(tmp_path / "run")
    outputs = _finish(_launch(tmp_path, "magvit_bair_mt8", overrides, workdir, processes=4))
    for index, out in enumerate(outputs):
        assert f"JAX process {index}/4" in out, out[-3000:]
    losses = _logged_losses(outputs[0])
    assert sorted(losses) == [1, 2, 3]
    config = configure(load_experiment("magvit_bair_mt8").get_config(), **overrides)
    one = maskgit.train_and_evaluate(config, str(tmp_path / "one"))
    np.testing.assert_allclose(
        [losses[s] for s in (1, 2, 3)], [h["loss"] for h in one.history], rtol=1e-4
    )
    assert _checkpoint_steps(workdir)[-1] == 3
