r"""Entry point: `python -m videogen.main --config=experiments/quickstart.py --workdir=runs/qs`.

Parses flags and the config, initialises multi-host JAX when needed, and hands
over to the trainer that `config.trainer` names in `videogen.trainers.TRAINERS`.
All logic lives in importable modules so it can be tested.
"""

from __future__ import annotations

import logging as logging_std
import os

# Keep TensorFlow (used only by clu's TensorBoard writer and TFDS) off any
# accelerator and quiet, before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before any thread allocates: steps reuse freed memory instead of page-faulting it in again.
from videogen import allocator  # noqa: E402

allocator.retain_freed_memory()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. experiments/quickstart.py[:args].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "sample", "tokenize"],
    "train: train (resuming from the workdir) and evaluate; "
    "eval: evaluate the latest checkpoint in the workdir; "
    "sample: write sample grids of the latest checkpoint (generative trainers); "
    "tokenize: write token files of the training data with the frozen tokenizer (stage 2).",
)


def _hide_accelerators_from_tensorflow() -> None:
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.config.set_visible_devices([], "GPU")


class _QuietLibraryInfo(logging_std.Filter):
    """Drops INFO lines of checkpointing and input libraries (orbax logs ~20 per save)."""

    _NOISY = ("/orbax/", "/grain/", "/tensorstore/")

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno >= logging_std.WARNING or not any(
            part in record.pathname for part in self._NOISY
        )


def _is_multi_process() -> bool:
    """True on multi-host TPU slices, multi-task SLURM jobs or an explicit coordinator."""
    env = os.environ
    if "SLURM_NTASKS" in env:
        return int(env["SLURM_NTASKS"]) > 1
    if "TPU_WORKER_HOSTNAMES" in env:
        return len(env["TPU_WORKER_HOSTNAMES"].split(",")) > 1
    return "JAX_COORDINATOR_ADDRESS" in env


def _initialize_distributed() -> None:
    """Joins the other processes of the run.

    On TPU slices and SLURM JAX reads the process count and index from the cluster; for
    processes started by hand (several on one machine, as the multi-process tests do) set
    JAX_COORDINATOR_ADDRESS=host:port, VIDEOGEN_NUM_PROCESSES and VIDEOGEN_PROCESS_ID.
    """
    import jax

    env = os.environ
    explicit = {}
    for key, name in (
        ("num_processes", "VIDEOGEN_NUM_PROCESSES"),
        ("process_id", "VIDEOGEN_PROCESS_ID"),
    ):
        if name in env:
            try:
                explicit[key] = int(env[name])
            except ValueError:
                raise ValueError(
                    f"{name}={env[name]!r} is not an integer; set it to one."
                ) from None
    if len(explicit) == 1:
        raise ValueError(
            "set both VIDEOGEN_NUM_PROCESSES and VIDEOGEN_PROCESS_ID, or neither (a cluster "
            "environment supplies them)."
        )
    jax.distributed.initialize(**explicit)
    if jax.default_backend() == "cpu":
        # JAX writes the persistent compilation cache from process 0 only; on CPU the other
        # processes loading those executables deadlocked at the first collective (2 processes,
        # gloo), so multi-process CPU runs compile in every process.
        jax.config.update("jax_enable_compilation_cache", False)


# Modes only some trainers have: entry point, what a trainer without it lacks, and the fix.
_OPTIONAL_MODES = {
    "sample": (
        "sample_checkpoint",
        "does not generate samples",
        "use --mode=eval, or a generative trainer such as maskgit.",
    ),
    "tokenize": (
        "tokenize_dataset",
        "trains on videos",
        "tokenize for a stage-2 trainer such as maskgit.",
    ),
}


def run(config, workdir: str, mode: str = "train"):
    """Runs the trainer the config names (`trainers.TRAINERS`) in `mode`; returns its result."""
    from videogen import trainers

    trainer = trainers.trainer_module(config.trainer)
    if mode == "eval":
        return trainer.evaluate_checkpoint(config, workdir)
    if mode in _OPTIONAL_MODES:
        entry, lacks, fix = _OPTIONAL_MODES[mode]
        if not hasattr(trainer, entry):
            raise ValueError(
                f"--mode={mode}: trainer {config.trainer!r} {lacks} (it has no {entry}); {fix}"
            )
        return getattr(trainer, entry)(config, workdir)
    return trainer.train_and_evaluate(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError(
            "Both --config and --workdir are required, e.g. "
            "--config=experiments/quickstart.py --workdir=runs/quickstart"
        )
    _hide_accelerators_from_tensorflow()
    logging.get_absl_handler().addFilter(_QuietLibraryInfo())
    import jax

    # Multi-host pods and SLURM clusters: the runtime finds its peers from the environment.
    if _is_multi_process():
        _initialize_distributed()
    elif jax.process_count() > 1:
        # Without the distributed client the hosts cannot agree on SIGTERM's save-and-exit
        # (checkpoint.PreemptionGuard): a preemption would lose the steps since the last save.
        logging.warning(
            "JAX sees %d processes but videogen found no multi-host environment to initialise "
            "jax.distributed from, so preemption saves are off; export "
            "JAX_COORDINATOR_ADDRESS=<host of process 0>:<port> on every host (launch/ does).",
            jax.process_count(),
        )
    logging.info(
        "JAX process %d/%d, %d local devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.default_backend(),
    )
    run(_CONFIG.value, _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
    app.run(main)
