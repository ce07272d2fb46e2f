"""Trained runs for the notebooks: the one you name, or a tiny one trained on the spot.

Each function returns ``run`` when it holds a checkpoint, and otherwise trains a
shrunk version of the quickstart's experiment (`experiments/quickstart_*.py`)
into ``fallback`` through the same entry point as the command line
(`videogen.main.run`) and returns ``fallback``. An interrupted tiny run resumes;
a finished one is reused. Tiny runs skip the end-of-training evaluation (the
notebooks show their own) and train on one device.

At their default steps, measured on a busy 2-core CPU (load average 6-8, nice 10):
the video tokenizer (600 steps, L2 + LFQ losses only, 9x32x32 clips) 15 minutes;
the MAGVIT transformer on FP, OPC, IPC and CG (400 steps) 8; the audio codec (150
steps) 4; the VideoPoet prefix LM (300 steps) 5, with its token files of 1024
clips. They run, and show the pipeline end to end; the quickstart's runs are what
shows what the models can do.
"""

from __future__ import annotations

import os

import ml_collections

from videogen import checkpoint, main, pretrained
from videogen import config as config_lib

# The experiments live beside the package in a clone of the repository.
EXPERIMENTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"
)
# MAGVIT's tiny run learns frame prediction, out- and inpainting and class-conditional
# generation, so the notebook can show each.
GENERATOR_TASKS = ("FP", "OPC", "IPC", "CG")


def latest_step(run: str) -> int | None:
    """The latest checkpointed step of the run directory ``run``; None when it has none."""
    if not os.path.isdir(os.path.join(run, "checkpoints")):
        return None
    checkpointer = checkpoint.Checkpointer(run, max_to_keep=1, save_interval_steps=1)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _experiment(name: str, arg: str) -> ml_collections.ConfigDict:
    path = os.path.join(EXPERIMENTS, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: tiny runs are built from the repository's experiments; run "
            "the notebook from a clone of the repository (its first cell clones it on Colab)."
        )
    return config_lib.load_experiment(path).get_config(arg)


def _shrink(config: ml_collections.ConfigDict, steps: int) -> None:
    """What every tiny run shares: one device, a checkpoint at the end, no evaluation."""
    config.mesh.shape = (1, 1, 1)
    config.checkpoint.every_steps = steps
    config.log_every_steps = max(1, min(50, steps // 4))
    config.optimizer.warmup_steps = max(1, steps // 10)
    config.eval.at_end = False
    config.eval.every_steps = None
    if "frechet" in config.eval:
        config.eval.frechet.num_samples = 0


def _train(fallback: str, steps: int, config: ml_collections.ConfigDict) -> str:
    """``fallback`` (absolute) after training ``config`` there, unless it is done already."""
    fallback = os.path.abspath(fallback)
    if (latest_step(fallback) or 0) < steps:
        print(f"videogen: training a tiny {config.trainer} run of {steps} steps in {fallback}")
        main.run(config, fallback)
    return fallback


def tokenizer_run(run: str, fallback: str, *, steps: int = 600) -> str:
    """A MAGVIT-v2 video tokenizer: ``run`` (a run directory or an export), or the quickstart
    tokenizer's architecture (9x32x32 clips -> 3x8x8 codes of 2^18) trained with its L2 +
    LFQ losses only."""
    if latest_step(run) is not None or pretrained.is_export(run):
        return run
    config = _experiment("quickstart_tokenizer", f"steps={steps},recipe=reconstruction")
    _shrink(config, steps)
    config.loss.entropy_anneal_steps = max(1, steps // 2)
    return _train(fallback, steps, config)


def generator_run(run: str, fallback: str, *, tokenizer: str, steps: int = 400) -> str:
    """A MAGVIT run: ``run``, or a 2-layer COMMIT transformer on `GENERATOR_TASKS` over the
    tokenizer run ``tokenizer``, condition clips tokenized in every step."""
    if latest_step(run) is not None:
        return run
    config = _experiment("quickstart_generator", f"steps={steps}")
    _shrink(config, steps)
    config.tokenizer_workdir = os.path.abspath(tokenizer)
    config.tasks.names = GENERATOR_TASKS
    config.tasks.weights = (1.0,) * len(GENERATOR_TASKS)
    config.eval.tasks = GENERATOR_TASKS
    # Out- and inpainting tokenize their condition clip, which token files do not hold.
    config.tokenize.before_training = False
    config.model.update(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256)
    return _train(fallback, steps, config)


def audio_tokenizer_run(run: str, fallback: str, *, steps: int = 150) -> str:
    """An audio tokenizer run: ``run``, or the audio quickstart's codec, narrower."""
    if latest_step(run) is not None:
        return run
    config = _experiment("quickstart_audio", f"steps={steps}")
    _shrink(config, steps)
    config.model.update(channels=4, latent_dim=32)
    return _train(fallback, steps, config)


def videopoet_run(
    run: str, fallback: str, *, tokenizer: str, audio_tokenizer: str, steps: int = 300
) -> str:
    """A VideoPoet run: ``run``, or a 2-layer prefix LM of the VideoPoet quickstart's tasks
    over the tokenizer runs ``tokenizer`` and ``audio_tokenizer``."""
    if latest_step(run) is not None:
        return run
    config = _experiment("quickstart_videopoet", f"steps={steps}")
    _shrink(config, steps)
    config.tokenizer_workdir = os.path.abspath(tokenizer)
    config.audio_tokenizer_workdir = os.path.abspath(audio_tokenizer)
    config.model.update(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256)
    config.batch_size = 8
    # At most 1024 clips (46 s to write on a busy CPU); 300 steps read them about twice.
    config.tokenize.update(num_examples=min(1024, max(16, steps * 8)), batch_size=16)
    return _train(fallback, steps, config)
