"""Trained MAGVIT and VideoPoet runs, loaded for generation from your own inputs.

`MagvitGenerator.load(run)` reads a MAGVIT run's latest checkpoint (the
transformer alone, no optimizer state) with its frozen tokenizer and task set-up;
`decode` runs Algorithm 1 (`sampling.non_autoregressive.commit_decode`) on clips
for one COMMIT task and returns the samples with a picture of every decoding step.

`VideoPoetGenerator.load(run)` reads a VideoPoet run's prefix LM with its frozen
video and audio tokenizers and text encoder, and samples through the run's own
evaluator (`VideoPoetEvaluator.generate`): text-to-video from captions and
audio-video continuation of clips.

Both read the run's saved config, so the tokenizer runs it names must be where
training found them (relative paths are relative to the directory training ran in).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, UInt8

from videogen import checkpoint
from videogen.data import sources
from videogen.evaluation import video_grid
from videogen.tasks.commit_tokens import CommitSetup, from_factors, make_setup
from videogen.tasks.videopoet_layout import TaskInputs
from videogen.trainers import (
    frozen_tokenizer,
    maskgit,
    maskgit_generation,
    videopoet,
    videopoet_data,
)
from videogen.trainers.videopoet_generation import VideoPoetEvaluator

# How bright the cells still masked after a decoding step are drawn.
MASKED_BRIGHTNESS = 0.3


def _restore(
    run: str, build_state
) -> tuple[ml_collections.ConfigDict, int, nnx.Module, nnx.GraphDef]:
    """(config, step, transformer, train-state graphdef) of ``run``'s latest checkpoint;
    ``build_state(config)`` builds the train state whose ``model`` entry is restored."""
    checkpointer = checkpoint.Checkpointer(run, max_to_keep=1, save_interval_steps=1)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No checkpoint in {checkpointer.directory}; pass the --workdir of a trained "
                "run (or train one: videogen.tiny_runs)."
            )
        config = checkpointer.restore_config(step)
        abstract = nnx.eval_shape(lambda: build_state(config))
        graphdef = nnx.graphdef(abstract)
        model_graph, model_abstract = nnx.split(abstract.model)
        model = nnx.merge(
            model_graph, checkpointer.restore_state_part(step, "model", model_abstract)
        )
    finally:
        checkpointer.close()
    return config, step, model, graphdef


class CommitDecode(NamedTuple):
    """One task's decode of a batch (uint8 videos as the clips, ``K`` decoding steps)."""

    condition: UInt8[np.ndarray, "b T H W 3"]  # Ṽ: what the transformer was shown
    sample: UInt8[np.ndarray, "b T H W 3"]
    # After step k: the tokens fixed so far decoded with the condition's tokens z̃ in the
    # other cells, which are drawn dimmed (`MASKED_BRIGHTNESS`).
    steps: UInt8[np.ndarray, "K b T H W 3"]
    masked: Float[np.ndarray, "K b"]  # fraction of token cells still masked after each step


def _decode(
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    setup: CommitSetup,
    decoding: ml_collections.ConfigDict,
    guidance_scale: float,
    state: nnx.State,
    tokenizer_state: nnx.State,
    video: UInt8[Array, "b T H W 3"],
    labels: Int[Array, " b"],
    task_ids: Int[Array, " b"],
    key: Array,
) -> tuple[Float[Array, "b T H W 3"], ...]:
    model = nnx.merge(graphdef, state)
    tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_state)
    tokens, condition_video, steps, condition = maskgit_generation.sample_tokens(
        model,
        tokenizer,
        setup,
        decoding,
        frozen_tokenizer.to_float(video),
        labels,
        task_ids,
        key,
        guidance_scale=guidance_scale,
        return_steps=True,
    )
    # A fixed position never changes again, so after step k it already holds its final token.
    views = jnp.where(steps.fixed[..., None], tokens[None], condition[None])
    k, b = views.shape[:2]
    decoded = tokenizer.detokenize(from_factors(views.reshape(k * b, *views.shape[2:]), setup))
    sample = tokenizer.detokenize(from_factors(tokens, setup))
    return condition_video, sample, decoded.reshape(k, b, *decoded.shape[1:]), steps.fixed


def dim_masked_cells(
    frames: UInt8[np.ndarray, "K b T H W 3"],
    fixed: Bool[np.ndarray, "K b t h w"],
    *,
    temporal_factor: int,
    spatial_factor: int,
    causal: bool,
) -> UInt8[np.ndarray, "K b T H W 3"]:
    """``frames`` with the pixels of token cells not ``fixed`` dimmed (`MASKED_BRIGHTNESS`).

    A causal tokenizer's latent frame 0 covers frame 0 alone and latent frame i the
    frames ``1 + f(i-1) .. f*i``; otherwise latent frame i covers ``f*i .. f*i + f - 1``.
    """
    num_frames, height, width = frames.shape[2:5]
    times = np.arange(num_frames)
    latent_time = (
        (times + temporal_factor - 1) // temporal_factor if causal else times // temporal_factor
    )
    rows = np.arange(height) // spatial_factor
    cols = np.arange(width) // spatial_factor
    lit = fixed[:, :, latent_time][:, :, :, rows][:, :, :, :, cols]
    scale = np.where(lit, 1.0, MASKED_BRIGHTNESS)[..., None]
    return np.round(frames * scale).astype(np.uint8)


class MagvitGenerator:
    """A MAGVIT run ready to decode COMMIT tasks from your clips (module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        step: int,
        model: nnx.Module,
        tokenizer: nnx.Module,
        setup: CommitSetup,
    ):
        self.config, self.step, self.setup = config, step, setup
        self.tokenizer = tokenizer
        graphdef, self._state = nnx.split(model)
        tokenizer_graphdef, self._tokenizer_state = nnx.split(tokenizer)
        self._decode = jax.jit(
            functools.partial(_decode, graphdef, tokenizer_graphdef, setup, config.decoding),
            static_argnums=0,
        )

    @classmethod
    def load(cls, run: str) -> MagvitGenerator:
        """The latest checkpoint of the MAGVIT run directory ``run`` (its --workdir)."""
        holder = {}

        def build_state(config):
            tokenizer = frozen_tokenizer.load_frozen_tokenizer(config)
            holder["tokenizer"], holder["setup"] = tokenizer, make_setup(config, tokenizer)
            return maskgit.create_train_state(config, holder["setup"])

        config, step, model, _ = _restore(run, build_state)
        return cls(config, step, model, holder["tokenizer"], holder["setup"])

    @property
    def tasks(self) -> tuple[str, ...]:
        """The COMMIT tasks the run trained, by name."""
        return tuple(t.name for t in self.setup.tasks)

    def held_out(self, num_examples: int) -> dict[str, np.ndarray]:
        """The first ``num_examples`` held-out clips of the run's eval dataset: uint8
        ``video`` [b, T, H, W, 3] and int ``label`` [b]."""
        source = sources.make_source(
            self.config, self.config.eval.dataset, "eval", num_examples=num_examples
        )
        return next(iter(sources.eval_batches(source, num_examples)))

    def decode(
        self,
        task: str,
        video: UInt8[np.ndarray, "b T H W 3"],
        labels: Int[np.ndarray, " b"],
        *,
        seed: int = 0,
    ) -> CommitDecode:
        """Algorithm 1 for ``task`` from each clip's task condition (and label, for
        class-conditional tasks, decoded with the run's guidance scale)."""
        task_id = self.setup.task_id(task)
        video = np.asarray(video, np.uint8)
        if tuple(video.shape[1:4]) != self.setup.video_shape:
            raise ValueError(
                f"clips of shape {video.shape[1:4]}; this run generates "
                f"{self.setup.video_shape} (T, H, W) clips."
            )
        guided = self.setup.tasks[task_id].class_conditional
        scale = float(self.config.decoding.guidance_scale) if guided else 0.0
        condition, sample, steps, fixed = self._decode(
            scale,
            self._state,
            self._tokenizer_state,
            jnp.asarray(video),
            jnp.asarray(labels, jnp.int32),
            jnp.full((len(video),), task_id, jnp.int32),
            jax.random.key(seed),
        )
        fixed = np.asarray(fixed).reshape(*fixed.shape[:2], *self.setup.latent_shape)
        return CommitDecode(
            condition=video_grid.to_uint8(condition),
            sample=video_grid.to_uint8(sample),
            steps=dim_masked_cells(
                video_grid.to_uint8(steps),
                fixed,
                temporal_factor=self.setup.temporal_factor,
                spatial_factor=self.setup.spatial_factor,
                causal=self.setup.causal,
            ),
            masked=1.0 - fixed.reshape(*fixed.shape[:2], -1).mean(-1),
        )


class VideoPoetGenerator:
    """A VideoPoet run ready to sample from captions and clips (module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        step: int,
        model: nnx.Module,
        sampler: VideoPoetEvaluator,
    ):
        self.config, self.step, self.model, self.sampler = config, step, model, sampler
        self.setup = sampler.setup

    @classmethod
    def load(cls, run: str, *, batch_size: int, caption_dir: str) -> VideoPoetGenerator:
        """The latest checkpoint of the VideoPoet run directory ``run``; held-out clips come
        in batches of ``batch_size``, caption embeddings are cached in ``caption_dir``."""
        holder = {}

        def build_state(config):
            # Sampling only: no FVD statistics, held-out batches of the size asked for.
            config.eval.frechet.num_samples = 0
            config.eval.batch_size = batch_size
            config.eval.num_examples = max(batch_size, config.eval.num_examples)
            holder["setup"] = videopoet_data.VideoPoetSetup.create(config)
            return videopoet.create_train_state(config, holder["setup"])

        config, step, model, graphdef = _restore(run, build_state)
        sampler = VideoPoetEvaluator(config, holder["setup"], graphdef, run, caption_dir)
        return cls(config, step, model, sampler)

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    def held_out(self) -> dict[str, np.ndarray]:
        """A batch of held-out clips: ``video``, ``label``, ``caption``, ``audio``."""
        return next(iter(self.sampler.batches()))

    def text_to_video(
        self, captions: list[str], *, seed: int = 0
    ) -> UInt8[np.ndarray, "b T H W 3"]:
        """One clip per caption (T2V, with the run's classifier-free guidance)."""
        embeddings, mask = self.sampler.captions(list(captions))
        inputs = TaskInputs(text_embeddings=np.asarray(embeddings), text_mask=np.asarray(mask))
        return self.sampler.generate(self.model, "t2v", inputs, jax.random.key(seed))["video"]

    def continue_audio_video(
        self, batch: dict[str, np.ndarray], *, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """AVCont from each clip's first frame and first audio frames: uint8 ``video``
        [b, T, H, W, 3] and float32 ``audio`` [b, S] in [-1, 1]; ``given_samples``, the
        audio samples the continuation starts from (they are the clip's own)."""
        out = self.sampler.generate(
            self.model, "avcont", self.sampler.inputs(batch), jax.random.key(seed)
        )
        given = self.setup.layout.avcont_audio_frames * self.setup.audio_tokenizer.hop_length
        # The codec's output can overshoot full scale; a soundtrack stays within it.
        return {**out, "audio": np.clip(out["audio"], -1.0, 1.0), "given_samples": given}
