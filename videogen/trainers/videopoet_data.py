"""What a VideoPoet run reads: its frozen tokenizers, its token space and its token files.

`VideoPoetSetup.create` checks the config's task mixture against the data's modalities
before anything is loaded (an unknown task, or a task needing audio or captions the
data lacks, fails at start), then loads the frozen video tokenizer
(`config.tokenizer_workdir`, its EMA model) and audio tokenizer
(`config.audio_tokenizer_workdir`, the codec with its codebooks), and fixes the unified
vocabulary, the sequence layout of the mixture's tasks and their `SequenceTemplates`.

Token files (`tokenize_dataset`, once per run): the frozen tokenizers' codes of
`tokenize.num_examples` training clips, in `data.token_files` format with one flat row
per clip, ``[video codes t*h*w | audio codes levels*frames | painting condition codes |
caption index]`` (`split_row`), labels the digit. The captions' text-encoder embeddings
come from `CaptionEmbeddings` (cached on disk by encoder weights); a run keeps the table
of its captions on the device and looks rows up in the step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from videogen import checkpoint
from videogen.data import caption_embeddings, pipeline, sources, token_files
from videogen.models import text_encoders
from videogen.models.audio_tokenizer import SoundStreamTokenizer
from videogen.tasks import commit
from videogen.tasks.videopoet_layout import (
    COMMIT_TASKS,
    SequenceLayout,
    TaskMixture,
    task_modalities,
)
from videogen.tasks.videopoet_vocab import Vocabulary
from videogen.trainers import frozen_tokenizer
from videogen.trainers.videopoet_sequences import SequenceTemplates


def data_modalities(source: pipeline.VideoSource) -> tuple[str, ...]:
    """The modalities besides video a source has: "text" (captions), "audio"."""
    keys = set(source.keys)
    return tuple(name for name, key in (("text", "caption"), ("audio", "audio")) if key in keys)


def load_audio_tokenizer(workdir: str, command: str = "") -> SoundStreamTokenizer:
    """The codec of an audio tokenizer run (latest checkpoint), in eval mode (all RVQ levels,
    no codebook updates); the error names the command that trains one."""
    checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, save_interval_steps=1)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No audio tokenizer checkpoint in {checkpointer.directory} "
                f"(config.audio_tokenizer_workdir={workdir!r}). Train it first: "
                f"{command or 'python -m videogen.main --config=experiments/quickstart_audio.py'}"
                " -- or point --config.audio_tokenizer_workdir at a finished audio tokenizer run."
            )
        config = checkpointer.restore_config(step)

        def build():
            return SoundStreamTokenizer(**config.model.to_dict(), rngs=nnx.Rngs(0))

        graphdef, abstract = nnx.split(nnx.eval_shape(build))
        state = checkpointer.restore_state_part(step, "model", abstract)
    finally:
        checkpointer.close()
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def text_encoder(config: ml_collections.ConfigDict) -> text_encoders.TextEncoder:
    """`config.text.encoder`: "minilm" (packaged, offline) or a local T5 checkpoint directory."""
    if config.text.encoder == "minilm":
        return text_encoders.minilm_text_encoder(max_length=config.text.max_tokens)
    return text_encoders.t5_text_encoder(config.text.encoder, max_length=config.text.max_tokens)


@dataclasses.dataclass
class VideoPoetSetup:
    """The frozen tokenizers and the token space of a run."""

    mixture: TaskMixture
    vocab: Vocabulary
    layout: SequenceLayout
    templates: SequenceTemplates
    tokenizer: nnx.Module
    audio_tokenizer: SoundStreamTokenizer | None
    audio_samples: int  # samples of a clip's soundtrack (0: no audio)
    text_dim: int

    @classmethod
    def create(cls, config: ml_collections.ConfigDict) -> VideoPoetSetup:
        """The setup of a run: the training data's modalities, the trained tokenizers."""
        train = sources.train_source(config)
        return cls.from_modules(
            config,
            data_modalities(train),
            tokenizer_fn=lambda: frozen_tokenizer.load_frozen_tokenizer(config),
            audio_tokenizer_fn=lambda: load_audio_tokenizer(
                config.audio_tokenizer_workdir, config.audio_tokenizer_command
            ),
            audio_samples_fn=lambda: len(train[0]["audio"]),
        )

    @classmethod
    def from_modules(
        cls,
        config: ml_collections.ConfigDict,
        has: tuple[str, ...],
        *,
        tokenizer_fn: Callable[[], nnx.Module],
        audio_tokenizer_fn: Callable[[], SoundStreamTokenizer],
        audio_samples_fn: Callable[[], int],
    ) -> VideoPoetSetup:
        """The setup for data with modalities `has` ("text", "audio") and the tokenizers the
        callables give: loaded ones (`create`), or abstract ones (`videogen.plan`). They are
        called only after the mixture is checked, so a bad mixture fails before any loads."""
        weights = dict(config.tasks.weights.to_dict())
        # Checked first: a bad mixture fails before any tokenizer or text encoder loads.
        mixture = TaskMixture.from_config(weights, modalities=has, two_stage=config.tasks.two_stage)
        needs = {m for task in mixture.names for m in task_modalities(task)}
        for task in config.eval.tasks:
            if task not in mixture.names:
                raise ValueError(
                    f"config.eval.tasks names {task!r}, which the run does not train; the "
                    f"mixture's tasks are {list(mixture.names)}."
                )
        shape = (config.data.num_frames, config.data.resolution, config.data.resolution)
        if config.tasks.resolution == "128x224" and shape[1] == shape[2]:
            raise ValueError(
                f"config.tasks.resolution='128x224' adds the <res> token of 224x128 portrait "
                f"clips (5x28x16 tokens), but the data yields square {shape[1]}x{shape[2]} "
                "clips; use a source of portrait clips or res=128x128."
            )
        tokenizer = tokenizer_fn()
        num_bits = getattr(tokenizer.quantizer, "num_bits", None)
        if num_bits is None:
            raise ValueError(
                f"the tokenizer in {config.tokenizer_workdir!r} is not an LFQ tokenizer; "
                "VideoPoet's vocabulary holds LFQ codes (MAGVIT-v2, CausalVideoTokenizer)."
            )
        latent_shape = tuple(tokenizer.latent_shape(*shape))
        audio_tokenizer, audio_samples, audio_frames, levels, codebook = None, 0, 0, 0, 1
        if config.audio.levels and "audio" in has:
            audio_tokenizer = audio_tokenizer_fn()
            levels, codebook = config.audio.levels, audio_tokenizer.quantizer.codebook_size
            if levels > audio_tokenizer.quantizer.num_levels:
                raise ValueError(
                    f"config.audio.levels={levels}, but the audio tokenizer has "
                    f"{audio_tokenizer.quantizer.num_levels} RVQ levels."
                )
            audio_samples = audio_samples_fn()
            audio_frames = audio_tokenizer.latent_frames(audio_samples)
        elif "audio" in needs:
            raise ValueError(
                f"tasks {[t for t in mixture.names if 'audio' in task_modalities(t)]} need "
                "audio tokens, but config.audio.levels=0; set it to the RVQ levels to model."
            )
        text_dim = 0
        if "text" in has and config.text.use:
            text_dim = config.text.dim
        elif "text" in needs:
            raise ValueError("tasks that need text are in the mixture, but config.text.use=False.")
        vocab = Vocabulary(
            visual_codes=2**num_bits,
            visual_factors=config.model.visual_factors,
            audio_levels=levels,
            audio_codebook_size=codebook,
        )
        avcont = config.tasks.avcont_audio_frames
        if avcont is None and audio_frames:
            # The audio frames that cover the first video frame (6 for 106 frames / 17).
            avcont = max(1, round(audio_frames / config.data.num_frames))
        layout = SequenceLayout(
            vocab,
            latent_shape,
            mixture.names,
            audio_frames=audio_frames,
            text_dim=text_dim,
            max_text_tokens=config.text.max_tokens,
            condition_frames=config.tasks.condition_frames,
            avcont_audio_frames=avcont or 0,
            resolution=config.tasks.resolution,
        )
        return cls(
            mixture,
            vocab,
            layout,
            SequenceTemplates.from_layout(layout),
            tokenizer,
            audio_tokenizer,
            audio_samples,
            text_dim,
        )

    # --- clips -> codes ------------------------------------------------------------------

    @property
    def row_parts(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the parts of a token-file row, in order (`split_row`)."""
        t, h, w = self.layout.latent_shape
        parts = {"video": (t, h, w)}
        if self.vocab.audio_levels:
            parts["audio"] = (self.vocab.audio_levels, self.layout.audio_frames)
        if self.templates.paint_tasks:
            parts["conditions"] = (len(self.templates.paint_tasks), t, h, w)
        parts["caption"] = ()
        return parts

    def encode_fn(self):
        """jit(video uint8 [b,T,H,W,3], audio float32 [b,S]) -> dict of codes (`row_parts`)."""
        paint = [task for task in self.templates.paint_tasks]
        commit_tasks = commit.make_tasks(tuple(COMMIT_TASKS[t] for t in paint), {})
        levels = self.vocab.audio_levels
        video_graph, video_state = nnx.split(self.tokenizer)
        audio_graph, audio_state = (
            nnx.split(self.audio_tokenizer) if self.audio_tokenizer is not None else (None, None)
        )

        @jax.jit
        def encode(video_state, audio_state, video, audio):
            tokenizer = nnx.merge(video_graph, video_state)
            clips = frozen_tokenizer.to_float(video)
            out = {"video": tokenizer.tokenize(clips)}
            if paint:
                b = clips.shape[0]
                conditioned = [
                    commit.condition_video(commit_tasks, jnp.full((b,), i, jnp.int32), clips)
                    for i in range(len(paint))
                ]
                codes = tokenizer.tokenize(jnp.concatenate(conditioned))
                out["conditions"] = jnp.stack(jnp.split(codes, len(paint)), axis=1)
            if levels:
                codec = nnx.merge(audio_graph, audio_state)
                out["audio"] = codec.tokenize(audio.astype(jnp.float32))[:, :levels]
            return out

        return lambda video, audio=None: encode(video_state, audio_state, video, audio)

    def split_row(self, rows: Int[Array, "b n"]) -> dict[str, Int[Array, "..."]]:
        """A token-file row ``[b, n]`` -> its parts, shaped by `row_parts`."""
        out, start = {}, 0
        b = rows.shape[0]
        for name, shape in self.row_parts.items():
            size = int(np.prod(shape))
            out[name] = rows[:, start : start + size].reshape(b, *shape)
            start += size
        if start != rows.shape[1]:
            raise ValueError(
                f"token-file rows hold {rows.shape[1]} codes; this run's rows hold {start} "
                f"({self.row_parts}); write the token files again with --mode=tokenize."
            )
        out["caption"] = out["caption"].reshape(b)
        return out

    def token_meta(self, config: ml_collections.ConfigDict) -> dict:
        """What token files must agree on with the run that reads them."""
        meta = {
            "tokenizer_workdir": os.path.abspath(config.tokenizer_workdir),
            "audio_tokenizer_workdir": os.path.abspath(config.audio_tokenizer_workdir)
            if self.audio_tokenizer is not None
            else "",
            "row_parts": {k: list(v) for k, v in self.row_parts.items()},
            "paint_tasks": list(self.templates.paint_tasks),
            "data": config.data.name,
            "data_version": sources.content_version(config.data.name),
            "video_shape": [config.data.num_frames, config.data.resolution, config.data.resolution],
            "frame_stride": config.data.frame_stride,
        }
        for workdir, key in ((config.tokenizer_workdir, "tokenizer_step"),) + (
            ((config.audio_tokenizer_workdir, "audio_tokenizer_step"),)
            if self.audio_tokenizer is not None
            else ()
        ):
            checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, save_interval_steps=1)
            try:
                meta[key] = checkpointer.latest_step()
            finally:
                checkpointer.close()
        return meta


def token_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.token_dir or frozen_tokenizer.default_token_dir(workdir)


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str, setup: VideoPoetSetup) -> str:
    """The codes of `tokenize.num_examples` training clips (a shuffled draw) written as token
    files (rows: `VideoPoetSetup.split_row`; the meta lists the captions the caption
    indices name). Returns the directory."""
    if jax.process_count() > 1:
        raise ValueError(
            "VideoPoet tokenization runs in one process; run --mode=tokenize on one host and "
            "share data.token_dir."
        )
    source = sources.train_source(config)
    count, batch_size = config.tokenize.num_examples, config.tokenize.batch_size
    if not 0 < count <= len(source):
        raise ValueError(
            f"config.tokenize.num_examples={count}, but the training data {config.data.name!r} "
            f"has {len(source)} clips; choose 1..{len(source)}."
        )
    fields = ("video", "label") + tuple(
        key
        for key in ("caption", "audio")
        if key in source.keys and (key != "audio" or setup.audio_tokenizer)
    )
    iterator = pipeline.make_iterator(
        source, global_batch_size=batch_size, shuffle=True, seed=config.seed, fields=fields
    )
    encode = setup.encode_fn()
    captions: dict[str, int] = {}
    rows, labels, done = [], [], 0
    log_every = max(count // 10, 1)  # about ten progress lines, whatever the count
    started = time.perf_counter()
    while done < count:
        batch = next(iterator)
        codes = jax.device_get(encode(batch["video"], batch.get("audio")))
        names = [str(c) for c in batch["caption"]] if "caption" in batch else [""] * batch_size
        codes["caption"] = np.asarray([captions.setdefault(c, len(captions)) for c in names])
        b = len(batch["label"])
        rows.append(
            np.concatenate(
                [np.asarray(codes[name]).reshape(b, -1) for name in setup.row_parts], axis=1
            )
        )
        labels.append(np.asarray(batch["label"]))
        before, done = done, done + b
        if done // log_every > before // log_every or done >= count:
            logging.info("Tokenized %d/%d clips.", min(done, count), count)
    directory = token_dir(config, workdir)
    meta = {**setup.token_meta(config), "captions": list(captions)}
    tokens = np.concatenate(rows)[:count]
    token_files.write(directory, tokens[..., None], np.concatenate(labels)[:count], meta)
    seconds = time.perf_counter() - started
    print(
        f"videogen: tokenized {count} clips of {config.data.name} ({', '.join(setup.row_parts)})"
        f" into {directory} in {seconds:.0f} s"
    )
    return directory


def caption_table(
    config: ml_collections.ConfigDict, captions: list[str], directory: str
) -> tuple[np.ndarray, np.ndarray]:
    """Text-encoder embeddings ``[n, max_tokens, d]`` and masks of ``captions`` (cached in
    ``directory``)."""
    if not captions:
        return np.zeros((1, config.text.max_tokens, config.text.dim), np.float32), np.zeros(
            (1, config.text.max_tokens), bool
        )
    embeddings, masks = caption_embeddings.CaptionEmbeddings(text_encoder(config), directory)(
        captions
    )
    if embeddings.shape[-1] != config.text.dim:
        raise ValueError(
            f"config.text.dim={config.text.dim}, but the text encoder gives "
            f"{embeddings.shape[-1]}-d embeddings; set text.dim to it."
        )
    return np.asarray(embeddings, np.float32), np.asarray(masks, bool)
