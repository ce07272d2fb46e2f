"""Exported tokenizers: a trained run's model without its training state, and one loader for
both forms.

`export(run_dir, directory)` writes

  config.json        ``format`` ("videogen-pretrained"), ``format_version``, ``kind``
                     ("video_tokenizer" | "audio_tokenizer"), ``model_class`` and ``model``
                     (the constructor's arguments), ``sample_rate`` (audio),
                     ``weights_hash`` (`weights_hash`) and ``source`` (run and step)
  model.safetensors  the model's arrays, keyed by their path in the model
                     ("encoder/conv_in/kernel"): a video tokenizer run's EMA weights,
                     an audio run's codec with its RVQ codebooks

`load_pretrained(path)` rebuilds the model from such a directory with numpy,
safetensors and flax alone (no Orbax, no optimizer state), or from a run directory
(its latest checkpoint); `pretrained_config(path)` reads either's description.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import safetensors.numpy
from flax import nnx

from videogen import checkpoint
from videogen.staged_directory import staged_directory

FORMAT = "videogen-pretrained"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The trainer (`config.trainer`) whose runs export as each kind.
KINDS = {"tokenizer": "video_tokenizer", "audio_tokenizer": "audio_tokenizer"}


def _key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's arrays by path; RNG state (dropout keys) is not part of the weights."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState)))
    return {_key(path): np.asarray(variable.get_value()) for path, variable in flat}


def weights_hash(model: nnx.Module) -> str:
    """SHA-256 (hex) of the model's arrays: names, dtypes, shapes and bytes, in name order.

    A run directory and its export give the same hash; token files record it.
    """
    digest = hashlib.sha256()
    for name, array in sorted(_arrays(model).items()):
        array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def is_export(path: str) -> bool:
    """Whether ``path`` is an export directory (rather than a run directory)."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def _run_config(run_dir: str) -> tuple[ml_collections.ConfigDict, int]:
    """The config and latest step of a training run; the error says what else it could be."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"{run_dir!r} does not exist; pass a tokenizer run directory (the --workdir of "
            "its training) or a directory written by `videogen export`."
        )
    step = None
    # Checked first: the checkpointer would create the directory in any folder it is given.
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        checkpointer = checkpoint.Checkpointer(run_dir, max_to_keep=1, save_interval_steps=1)
        try:
            step = checkpointer.latest_step()
            if step is not None:
                return checkpointer.restore_config(step), step
        finally:
            checkpointer.close()
    runs = sorted(
        name
        for name in os.listdir(run_dir)
        if os.path.isdir(os.path.join(run_dir, name, "checkpoints"))
    )
    hint = (
        f"; it holds the runs {runs}: pass one of them, e.g. {os.path.join(run_dir, runs[-1])}"
        if runs
        else "; train the tokenizer first, or pass a `videogen export` directory"
    )
    raise FileNotFoundError(
        f"{run_dir!r} has neither a checkpoint nor an exported model ({CONFIG_FILE}){hint}."
    )


def pretrained_config(path: str) -> dict[str, Any]:
    """The description of the model at ``path``: an export's config.json, or the same fields
    (without ``weights_hash``) from a run directory's latest checkpoint."""
    if is_export(path):
        with open(os.path.join(path, CONFIG_FILE)) as f:
            config = json.load(f)
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{os.path.join(path, CONFIG_FILE)} is format {config.get('format')!r} version "
                f"{config.get('format_version')!r}; this videogen reads {FORMAT!r} version "
                f"{FORMAT_VERSION}. Export the run again with this version."
            )
        return config
    run_config, step = _run_config(path)
    if run_config.trainer not in KINDS:
        raise ValueError(
            f"{path!r} is a {run_config.trainer!r} run; only runs of the trainers "
            f"{sorted(KINDS)} export and load as pretrained tokenizers."
        )
    audio = run_config.trainer == "audio_tokenizer"
    return describe(
        KINDS[run_config.trainer],
        "SoundStreamTokenizer" if audio else run_config.model_class,
        run_config.model.to_dict(),
        sample_rate=run_config.sample_rate if audio else None,
        source={"run": os.path.abspath(path), "step": step},
    )


def describe(
    kind: str,
    model_class: str,
    model: dict[str, Any],
    *,
    sample_rate: int | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The description `save_pretrained` writes (config.json, less the weights hash): a
    ``kind`` of `KINDS`, the class and its constructor arguments, an audio model's
    sample rate, and where it came from."""
    if kind not in KINDS.values():
        raise ValueError(f"kind={kind!r} is not exportable; use one of {sorted(KINDS.values())}.")
    if (kind == "audio_tokenizer") != (sample_rate is not None):
        raise ValueError(
            f"sample_rate={sample_rate} with kind={kind!r}: an audio tokenizer needs its sample "
            "rate, a video tokenizer has none."
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_class": model_class,
        "model": model,
        "source": source or {},
    }
    if sample_rate is not None:
        config["sample_rate"] = sample_rate
    return config


def _build(config: dict[str, Any]) -> nnx.Module:
    """A freshly initialised model of ``config`` (call under `nnx.eval_shape` for shapes)."""
    if config["kind"] == "audio_tokenizer":
        from videogen.models.audio_tokenizer import SoundStreamTokenizer

        return SoundStreamTokenizer(**config["model"], rngs=nnx.Rngs(0))
    from videogen.trainers import frozen_tokenizer

    return frozen_tokenizer.build_tokenizer(
        ml_collections.ConfigDict(
            {"model_class": config["model_class"], "model": config["model"], "seed": 0}
        )
    )


def _load_export(path: str, config: dict[str, Any]) -> nnx.Module:
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights} is missing: the export in {path!r} is incomplete; export the run again."
        )
    arrays = safetensors.numpy.load_file(weights)
    graphdef, abstract, rng_abstract = nnx.split(
        nnx.eval_shape(lambda: _build(config)), nnx.Not(nnx.RngState), nnx.RngState
    )
    expected = {_key(p): v.get_value() for p, v in nnx.to_flat_state(abstract)}
    missing, extra = sorted(expected.keys() - arrays.keys()), sorted(arrays.keys() - expected)
    wrong = [k for k in expected.keys() & arrays.keys() if arrays[k].shape != expected[k].shape]
    if missing or extra or wrong:
        raise ValueError(
            f"{weights} does not fit the model its {CONFIG_FILE} describes: missing "
            f"{missing[:5]}, unexpected {extra[:5]}, wrong shape {sorted(wrong)[:5]}; export "
            "the run again."
        )
    pure: dict = {}
    for path_, _ in nnx.to_flat_state(abstract):
        node = pure
        for part in path_[:-1]:
            node = node.setdefault(part, {})
        node[path_[-1]] = jax.numpy.asarray(arrays[_key(path_)], expected[_key(path_)].dtype)
    nnx.replace_by_pure_dict(abstract, pure)
    # Dropout keys are not weights: fresh ones, from an init that XLA prunes to just them.
    rngs = jax.jit(lambda: nnx.state(_build(config), nnx.RngState))() if rng_abstract else {}
    model = nnx.merge(graphdef, abstract, *([rngs] if rngs else []))
    found = weights_hash(model)
    if found != config["weights_hash"]:
        raise ValueError(
            f"{weights} has weights hash {found}, its {CONFIG_FILE} says "
            f"{config['weights_hash']}: the file is damaged; export the run again."
        )
    return model


def load_pretrained(path: str) -> nnx.Module:
    """The model at ``path`` (an export or a run directory), ready for inference: a video
    tokenizer (a run's EMA weights) or an audio tokenizer in eval mode."""
    config = pretrained_config(path)
    if is_export(path):
        model = _load_export(path, config)
    elif config["kind"] == "audio_tokenizer":
        from videogen.trainers import videopoet_data

        model = videopoet_data.load_audio_tokenizer(path)
    else:
        from videogen.trainers import frozen_tokenizer

        model, _ = frozen_tokenizer.load_tokenizer(path)
    if config["kind"] == "audio_tokenizer":
        model.eval()  # all RVQ levels, no codebook updates
    return model


def save_pretrained(model: nnx.Module, config: dict[str, Any], directory: str) -> str:
    """Writes ``model`` and its description ``config`` (`describe`) as an export in
    ``directory``, whole or not at all; returns the directory."""
    if os.path.exists(directory) and os.listdir(directory) and not is_export(directory):
        raise ValueError(
            f"{directory!r} is a non-empty directory that is not an export; refusing to "
            "replace it. Export into a new directory."
        )
    config = {**config, "weights_hash": weights_hash(model)}
    directory = os.path.abspath(directory)
    with staged_directory(directory) as staging:
        # Bytes written by open(), as save_file would create the file readable by its owner only.
        with open(os.path.join(staging, WEIGHTS_FILE), "wb") as f:
            f.write(safetensors.numpy.save(_arrays(model)))
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    return directory


def export(path: str, directory: str) -> str:
    """Exports the tokenizer of run directory (or export) ``path`` to ``directory``."""
    config = pretrained_config(path)
    config.pop("weights_hash", None)
    return save_pretrained(load_pretrained(path), config, directory)
