"""The stage-1 -> stage-2 boundary: a trained tokenizer, used frozen, and its token files.

The tokenizer trainer saves runs; later stages load the EMA tokenizer from
them (`load_tokenizer`: the video tokenizer inflating an image run, the
transformers tokenizing clips), or read its tokens from files that
`--mode=tokenize` wrote once (`tokenize_dataset`). Neither trainer imports the
other: both use this module.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, UInt8

from videogen import checkpoint
from videogen.data import pipeline, sources, token_files
from videogen.models import tokenizer as tokenizer_models
from videogen.tasks import commit_tokens


def to_float(video: UInt8[Array, "b T H W c"]) -> Float[Array, "b T H W c"]:
    """uint8 [0, 255] -> float32 [-1, 1], the tokenizers' input range; done on device so the
    host ships bytes."""
    return video.astype(jnp.float32) / 127.5 - 1.0


def build_tokenizer(
    config: ml_collections.ConfigDict, *, dtype: jnp.dtype = jnp.float32
) -> nnx.Module:
    """The tokenizer class named by `config.model_class` in videogen.models.tokenizer,
    computing in `dtype` (float32 parameters either way; the tokenizer trainer passes its
    run's precision, a frozen tokenizer computes in float32)."""
    cls = getattr(tokenizer_models, config.model_class, None)
    if cls is None:
        raise ValueError(
            f"config.model_class={config.model_class!r} is not defined in "
            "videogen/models/tokenizer.py."
        )
    return cls(
        **config.model.to_dict(),
        dtype=dtype,
        # The 'rbg' PRNG compiles the initialiser several times faster than threefry on CPU.
        rngs=nnx.Rngs(jax.random.key(config.seed, impl="rbg")),
    )


def load_tokenizer(
    workdir: str, *, step: int | None = None
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The EMA tokenizer of a tokenizer run (latest checkpoint, or `step`) and that run's config.

    The model is built from the config saved with the checkpoint, so it needs no
    other input. Only the EMA model's arrays are read (not the optimizer, the
    online model or the discriminator).
    """
    checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, save_interval_steps=1)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"No tokenizer checkpoint in {checkpointer.directory}; train one first "
                f"(python -m videogen.main --config=experiments/quickstart.py --workdir={workdir}) "
                "or point the config's tokenizer_workdir at a finished tokenizer run."
            )
        config = checkpointer.restore_config(step)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_tokenizer(config)))
        state = checkpointer.restore_state_part(step, "ema_model", abstract)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state), config


def load_frozen_tokenizer(config: ml_collections.ConfigDict) -> nnx.Module:
    """The EMA tokenizer of `config.tokenizer_workdir`; the error names the command to train it."""
    try:
        tokenizer, _ = load_tokenizer(config.tokenizer_workdir)
    except FileNotFoundError:
        directory = os.path.join(os.path.abspath(config.tokenizer_workdir), "checkpoints")
        command = config.tokenizer_command or (
            f"python -m videogen.main --config=<tokenizer config> "
            f"--workdir={config.tokenizer_workdir}"
        )
        raise FileNotFoundError(
            f"No tokenizer checkpoint in {directory} (config.tokenizer_workdir="
            f"{config.tokenizer_workdir!r}). Train the tokenizer first: {command} -- or point "
            "--config.tokenizer_workdir at a finished tokenizer run."
        ) from None
    return tokenizer


def token_meta(config: ml_collections.ConfigDict, setup: commit_tokens.CommitSetup) -> dict:
    """What token files must agree on with the run that reads them (`token_files.check_meta`)."""
    checkpointer = checkpoint.Checkpointer(
        config.tokenizer_workdir, max_to_keep=1, save_interval_steps=1
    )
    try:
        tokenizer_step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    return {
        "tokenizer_workdir": os.path.abspath(config.tokenizer_workdir),
        "tokenizer_step": tokenizer_step,
        "latent_shape": list(setup.latent_shape),
        "num_bits": setup.num_bits,
        "num_factors": setup.num_factors,
        "sub_vocab_size": setup.sub_vocab_size,
        "data": config.data.name,
        "data_version": sources.content_version(config.data.name),
        "video_shape": list(setup.video_shape),
        "frame_stride": config.data.frame_stride,
    }


def default_token_dir(workdir: str) -> str:
    return os.path.join(workdir, "tokens")


def train_token_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The token files training reads, or "" to tokenize every batch on the fly.

    `data.token_dir` if set; else `<workdir>/tokens` when `tokenize.before_training`
    (the run writes them there itself before its first step).
    """
    if config.data.token_dir:
        return config.data.token_dir
    return default_token_dir(workdir) if config.tokenize.before_training else ""


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=tokenize`: the frozen tokenizer's sub-tokens of `config.tokenize.num_examples`
    training clips (a shuffled draw, as training would read them) with their labels, written
    to `config.data.token_dir` (default `<workdir>/tokens`). Returns the directory.

    Training with `data.token_dir` set then reads these instead of encoding every batch;
    it suits tasks whose condition tokens are the target's (`condition_from_target`).
    """
    if jax.process_count() > 1:
        raise ValueError(
            "--mode=tokenize runs in one process; run it on one host and share the directory."
        )
    tokenizer = load_frozen_tokenizer(config)
    setup = commit_tokens.make_setup(config, tokenizer)
    if config.tokenize.before_training:
        # The training run that follows would refuse these files; refuse before encoding.
        setup.require_condition_from_target("tokenize.before_training=True")
    directory = config.data.token_dir or default_token_dir(workdir)
    source = sources.train_source(config)
    count, batch_size = config.tokenize.num_examples, config.tokenize.batch_size
    if not 0 < count <= len(source):
        raise ValueError(
            f"config.tokenize.num_examples={count}, but the training data {config.data.name!r} "
            f"has {len(source)} clips; choose 1..{len(source)}."
        )
    graphdef, state = nnx.split(tokenizer)

    @jax.jit
    def encode(state, video):
        model = nnx.merge(graphdef, state)
        return commit_tokens.video_tokens(model, setup, to_float(video))

    iterator = pipeline.make_iterator(
        source, global_batch_size=batch_size, shuffle=True, seed=config.seed, num_epochs=None
    )
    tokens, labels, done = [], [], 0
    started = time.perf_counter()
    log_every = max(count // 10, 1)  # about ten progress lines, whatever the count
    while done < count:
        batch = next(iterator)
        tokens.append(np.asarray(encode(state, batch["video"])))
        labels.append(np.asarray(batch["label"]))
        before, done = done, done + len(batch["label"])
        if done // log_every > before // log_every or done >= count:
            logging.info("Tokenized %d/%d clips.", min(done, count), count)
    seconds = time.perf_counter() - started
    token_files.write(
        directory,
        np.concatenate(tokens)[:count],
        np.concatenate(labels)[:count],
        token_meta(config, setup),
    )
    # With tokenize.before_training the run trains from them itself; no hint needed.
    hint = (
        ""
        if config.tokenize.before_training
        else f"; train from them with --config.data.token_dir={directory}"
    )
    print(
        f"videogen: tokenized {count} clips of {config.data.name} into {directory} in "
        f"{seconds:.0f} s ({count / seconds:.1f} clips/s){hint}"
    )
    return directory
