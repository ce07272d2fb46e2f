"""Trainers: each module supplies its state, step and evaluator to the one loop (`loop`).

`TRAINERS` is the table `config.trainer` is looked up in.
"""

import importlib
import types

TRAINERS = {
    "tokenizer": "videogen.trainers.tokenizer",  # MAGVIT-v2 / 3D-VQ video tokenizers
    "audio_tokenizer": "videogen.trainers.audio_tokenizer",  # VideoPoet's SoundStream codec
    "maskgit": "videogen.trainers.maskgit",  # MAGVIT's COMMIT transformer on frozen tokens
    "videopoet": "videogen.trainers.videopoet",  # VideoPoet's prefix LM over text/video/audio
    "stages": "videogen.trainers.stages",  # several trainers in order (the quickstart)
}


def trainer_module(name: str) -> types.ModuleType:
    """The module of trainer `name` (`config.trainer`)."""
    if name not in TRAINERS:
        raise ValueError(
            f"config.trainer={name!r} is not a trainer; available: {sorted(TRAINERS)}."
        )
    return importlib.import_module(TRAINERS[name])
