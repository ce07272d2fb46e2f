"""Tiny experiment configs shared by the trainer tests (a support module, not a test module).

Each helper applies overrides in place, as `--config.key=value` flags would, so
the tests run the real experiment files shrunk to a few seconds of CPU.
"""

import os

from videogen import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name):
    """The experiment module `experiments/<name>.py`."""
    return config_lib.load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))


def configure(config, **overrides):
    """Sets dotted keys in place, as `--config.key=value` flags would."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


TINY_OVERRIDES = {
    "data.name": "moving_digits",
    "data.path": "",
    "eval.path": "",
    "data.missing_hint": "",
    "data.num_frames": 5,
    "data.resolution": 16,
    "model.base_channels": 8,
    "model.channel_multipliers": (1, 2, 2),
    "model.num_res_blocks": 1,
    "model.temporal_downsample": (True, True),
    "model.num_groups": 4,
    "model.num_bits": 6,
    "discriminator.base_channels": 4,
    "discriminator.channel_multipliers": (2, 4),
    "batch_size": 8,
    "num_train_steps": 2,
    "log_every_steps": 1,
    "mesh.shape": (1, 1, 1),
    "checkpoint.every_steps": 2,
    "checkpoint.async_save": True,
    "optimizer.warmup_steps": 1,
    "optimizer.peak_lr": 1e-3,
    "eval.datasets": ("moving_digits",),
    "eval.num_examples": 8,
    "eval.batch_size": 8,
    "eval.every_steps": None,
    "eval.at_end": False,
    "eval.frechet.num_samples": 0,
}


# Keys of the LFQ tokenizer that other tokenizer classes do not have.
_LFQ_ONLY = ("model.num_bits",)


def tiny(config, **extra):
    """The tokenizer `config` shrunk in place to a tiny model on 5x16x16 clips."""
    overrides = {**TINY_OVERRIDES, **extra}
    if config.model_class != "CausalVideoTokenizer":
        overrides = {k: v for k, v in overrides.items() if k not in _LFQ_ONLY}
    return configure(config, **overrides)


# What the token-transformer tests (MAGVIT, VideoPoet) share: 9x16x16 moving digits (the
# tiny tokenizer's 3x4x4 tokens of 2^6), 2 steps at batch 8, 8 held-out clips.
GENERATOR_TINY = {
    "data.name": "moving_digits",
    "data.path": "",
    "data.missing_hint": "",
    "data.num_frames": 9,
    "data.resolution": 16,
    "batch_size": 8,
    "num_train_steps": 2,
    "log_every_steps": 1,
    "mesh.shape": (1, 1, 1),
    "checkpoint.every_steps": 2,
    "optimizer.warmup_steps": 1,
    "eval.dataset": "moving_digits",
    "eval.path": "",
    "eval.num_examples": 8,
    "eval.batch_size": 8,
    "eval.every_steps": None,
    "eval.at_end": False,
    "eval.frechet.num_samples": 0,
    # Configs that tokenize before training (the quickstarts') write 16 clips.
    "tokenize.num_examples": 16,
    "tokenize.batch_size": 8,
}

# A 1-layer MAGVIT transformer of width 16; the tokens as 2 factors of 2^3.
MASKGIT_TINY = {
    **GENERATOR_TINY,
    "model.size": "",
    "model.hidden_size": 16,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.mlp_dim": 32,
}

# A 2-layer prefix LM of width 32 ("tiny"); video as 2 x 2^3 sub-tokens, 56 audio frames of
# one level, 24 text tokens.
VIDEOPOET_TINY = {
    **GENERATOR_TINY,
    "model.size": "tiny",
    "model.hidden_size": None,
    "model.num_layers": None,
    "model.num_heads": None,
    "model.mlp_dim": None,
    "model.visual_factors": 2,
    "model.remat": False,
    "tasks.condition_frames": 2,
    "text.max_tokens": 24,
    "audio.levels": 1,
    "eval.grid_examples": 2,
    "eval.classifier_steps": 5,
}

# 5 frames of moving digits = 10,000 samples = 31 latent frames of a narrow codec.
AUDIO_TINY = {
    "data.num_frames": 5,
    "data.resolution": 16,
    "model.channels": 2,
    "model.channel_multipliers": (1, 2, 2, 4),
    "model.latent_dim": 8,
    "model.codebook_size": 16,
    "discriminator.channels": 2,
    "discriminator.num_layers": 1,
    "batch_size": 4,
    "num_train_steps": 2,
    "log_every_steps": 1,
    "mesh.shape": (1, 1, 1),
    "checkpoint.every_steps": 1,
    "optimizer.warmup_steps": 1,
    "eval.num_examples": 8,
    "eval.batch_size": 4,
    "eval.grid_examples": 2,
}


def tiny_audio(name="quickstart_audio", arg=None, **extra):
    """Audio-tokenizer experiment `name` shrunk to a narrow codec on 5-frame clips."""
    return configure(load_experiment(name).get_config(arg), **{**AUDIO_TINY, **extra})


def tiny_videopoet(name, arg, tokenizer_workdir, audio_workdir, **extra):
    """VideoPoet experiment `name` shrunk to the tiny prefix LM over the tiny codecs."""
    config = load_experiment(name).get_config(arg)
    return configure(
        config,
        tokenizer_workdir=tokenizer_workdir,
        audio_tokenizer_workdir=audio_workdir,
        **{**VIDEOPOET_TINY, **extra},
    )


def tiny_maskgit(name, arg, tokenizer_workdir, **extra):
    """Experiment `name` shrunk to a 1-layer transformer on the tiny tokenizer's tokens."""
    config = load_experiment(name).get_config(arg)
    return configure(config, tokenizer_workdir=tokenizer_workdir, **{**MASKGIT_TINY, **extra})
