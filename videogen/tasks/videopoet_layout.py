"""VideoPoet sequence layouts (thesis Fig. 8.2, Sec. 8.3.3) and the task mixture (Sec. 8.3.4).

A task's sequence is a run of segments over the unified vocabulary
(`videogen.tasks.videopoet_vocab`):

    <bos> <task> [<source>] [<bot_i> text x 64 <eot_i>] [<bov_i> visual <eov_i>]
    [<boa_i> audio <eoa_i>] [<res>] <bov_o> visual [<eov_o>] [<boa_o> audio <eoa_o>] [<eos>]

A task without a modality leaves its segment out (Sec. 8.3.3: "related input/output
tokens and special tokens are excluded, shortening the sequence"). The prefix (read
bidirectionally, no loss) runs up to and including the first output-begin token
(``<bov_o>``, or ``<boa_o>`` for V2A); every later token of the task is an output and
carries the loss, the closing ``<eov_o>``/``<eoa_o>``/``<eos>`` included, so the model
learns where outputs end. Text-to-image drops ``<eov_o>`` and ``<eos>`` (Sec. 8.3.3:
the image stays the open first frame of a video). A batch mixes tasks, so every
layout of one `SequenceLayout` is padded with ``<pad>`` (no loss) to one length,
the longest of its tasks.

A visual code is one position. With a factorized visual vocabulary (``visual_factors``
``f > 1``) ``tokens`` holds its factor-0 id and ``factor_tokens`` its factors ``1 ..
f-1`` (``<pad>`` at every other position), so a video costs ``t * h * w`` positions
whatever ``f`` is; the model embeds the factors' sum and predicts them one after
another from the same position (`videogen.models.prefix_lm`).

Text (Sec. 8.4.6): the text encoder's embeddings "are inserted into reserved sequence
positions right after the <bot_i> token". A text segment always reserves
``max_text_tokens`` positions (64, the thesis' maximum), so that every sequence of a
task has the same length and the same output positions (which batched KV-cache
sampling needs); the positions hold ``<pad>`` ids and `LayoutBatch.text_positions` /
``text_mask`` say where the model writes the projected embeddings. Positions whose
text mask is False (a shorter caption, or text dropped for classifier-free guidance,
`drop_text`) are left out of attention by the model.

Per task (``c`` = ``condition_frames`` latent frames, ``k`` = ``avcont_audio_frames``):
unconditional: -> video; T2V: text -> video; T2I: text -> first latent frame;
FP: text (optional) + first ``c`` frames -> the remaining frames; I2V: text (optional) +
first frame -> the remaining frames; inpaint / outpaint: COMMIT condition tokens
(`videogen.tasks.commit`: the tokens of the padded condition video z̃, Sec. 8.4.6) ->
the video; AVCont: first frame + first ``k`` audio frames -> the remaining frames and
audio; A2V: audio -> video; V2A: video -> audio.

Layouts are built on the host with numpy (data-pipeline code, deterministic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from jaxtyping import Bool, Float, Int

from videogen.models.text_encoders import MAX_TEXT_TOKENS
from videogen.tasks.videopoet_vocab import NUM_SOURCES, TASKS, Vocabulary, check_task

TextUse = Literal["none", "optional", "required"]
VideoInput = Literal["none", "first_frame", "first_frames", "condition", "full"]
AudioInput = Literal["none", "first_frames", "full"]
VideoOutput = Literal["none", "full", "rest", "first_frame"]
AudioOutput = Literal["none", "full", "rest"]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task reads (prefix) and writes (outputs).

    ``"first_frame"``: latent frame 0; ``"first_frames"``: the first ``condition_frames``
    (video) or ``avcont_audio_frames`` (audio) frames; ``"rest"``: the frames after those;
    ``"condition"``: COMMIT condition tokens of the whole clip. ``closed``: the outputs end
    with ``<eov_o>`` and ``<eos>``. Optional text is present whenever the layout has text.
    """

    text: TextUse
    video_input: VideoInput
    audio_input: AudioInput
    video_output: VideoOutput
    audio_output: AudioOutput
    closed: bool = True


TASK_SPECS: dict[str, TaskSpec] = {
    "unconditional": TaskSpec("none", "none", "none", "full", "none"),
    "t2v": TaskSpec("required", "none", "none", "full", "none"),
    "t2i": TaskSpec("required", "none", "none", "first_frame", "none", closed=False),
    "fp": TaskSpec("optional", "first_frames", "none", "rest", "none"),
    "i2v": TaskSpec("optional", "first_frame", "none", "rest", "none"),
    "inpaint": TaskSpec("none", "condition", "none", "full", "none"),
    "outpaint": TaskSpec("none", "condition", "none", "full", "none"),
    "avcont": TaskSpec("none", "first_frame", "first_frames", "rest", "rest"),
    "a2v": TaskSpec("none", "none", "full", "full", "none"),
    "v2a": TaskSpec("none", "full", "none", "none", "full"),
}
# Image tasks of the two-stage schedule (Sec. 8.3.4); every other task trains on video.
IMAGE_TASKS = ("t2i",)
# The painting tasks' COMMIT conditions: "the video-to-video tasks use the COMMIT encoding"
# (Sec. 8.4.6), evaluated as central in- and outpainting (Sec. 8.4.2), i.e. MAGVIT's IPC and
# OPC (`videogen.tasks.commit.TASKS`). Their condition tokens are those of the padded
# condition video, `commit_tokens.condition_tokens(...).condition` as [b, t, h, w] codes
# (`commit_tokens.from_factors`).
COMMIT_TASKS = {"inpaint": "IPC", "outpaint": "OPC"}


def task_modalities(task: str) -> tuple[str, ...]:
    """The modalities besides video that ``task`` cannot do without: "text", "audio"."""
    spec = TASK_SPECS[check_task(task)]
    needs = ("text",) if spec.text == "required" else ()
    if spec.audio_input != "none" or spec.audio_output != "none":
        needs += ("audio",)
    return needs


class TaskInputs(NamedTuple):
    """Per-example inputs of `SequenceLayout.build` (numpy, leading batch axis).

    ``video``: LFQ codes ``[b, t, h, w]`` of the clip (``t = 1`` for an image); ``audio``:
    RVQ codes ``[b, levels, frames]``; ``text_embeddings`` ``[b, n <= max_text_tokens,
    text_dim]`` with ``text_mask [b, n]`` (default all True); ``condition``: COMMIT
    condition tokens ``[b, t, h, w]`` (painting); ``source``: ``<source>`` index ``[b]``.
    An output left out (or given only up to its task's input frames) is filled with
    ``<pad>`` for the sampler to generate.
    """

    video: Int[np.ndarray, "b t h w"] | None = None
    audio: Int[np.ndarray, "b levels frames"] | None = None
    text_embeddings: Float[np.ndarray, "b n d"] | None = None
    text_mask: Bool[np.ndarray, "b n"] | None = None
    condition: Int[np.ndarray, "b t h w"] | None = None
    source: Int[np.ndarray, " b"] | None = None


class LayoutBatch(NamedTuple):
    """A batch of fixed-length sequences (numpy; the model and sampler take it as is).

    ``next_range[i, p] = (lo, hi)``: the ids ``tokens`` at ``p + 1`` may take (its
    segment's range: visual factor 0's, an audio level's, or one special token's); a
    visual position's ``factor_tokens`` take factor ``j``'s range
    (`Vocabulary.visual_factor_range`).
    """

    tokens: Int[np.ndarray, "b l"]  # at a visual code: its factor-0 id
    factor_tokens: Int[np.ndarray, "b l f-1"]  # visual factors 1.., <pad> off visual codes
    loss_mask: Bool[np.ndarray, "b l"]  # True on output tokens (the targets)
    prefix_length: Int[np.ndarray, " b"]  # bidirectional prefix, through <bov_o>/<boa_o>
    next_range: Int[np.ndarray, "b l 2"]
    text_embeddings: Float[np.ndarray, "b n d"]
    text_mask: Bool[np.ndarray, "b n"]  # which text slots hold an embedding
    text_positions: Int[np.ndarray, "b n"]  # sequence position of each text slot
    task_index: Int[np.ndarray, " b"]  # index into videopoet_vocab.TASKS

    @property
    def model_args(self) -> tuple:
        """The prefix LM's positional inputs, in `PrefixLM.__call__`'s order."""
        return (
            self.tokens,
            self.factor_tokens,
            self.prefix_length,
            self.text_embeddings,
            self.text_mask,
            self.text_positions,
        )


class TaskOutputs(NamedTuple):
    """What a task produces, read back from its sequence: the completed clip (input frames
    and generated frames, ``[b, t, h, w]`` codes) and/or audio (``[b, levels, frames]``);
    None for a modality the task does not output."""

    video: Int[np.ndarray, "b t h w"] | None
    audio: Int[np.ndarray, "b levels frames"] | None


class Segment(NamedTuple):
    """``length`` positions from ``start``: a special token (``"<bov_o>"``, ``"<task>"``,
    ``"<res>"``, ``"<source>"``) or a payload (``"text"``, ``"video_in"``, ``"audio_in"``,
    ``"video_out"``, ``"audio_out"``)."""

    name: str
    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def concat_batches(batches: Sequence[LayoutBatch]) -> LayoutBatch:
    """One batch from several (e.g. one per task) of the same layout."""
    return LayoutBatch(*(np.concatenate(fields) for fields in zip(*batches)))


def drop_text(batch: LayoutBatch, drop: Bool[np.ndarray, " b"] | None = None) -> LayoutBatch:
    """The batch with the text of the examples where ``drop`` (default: all) emptied: the
    unconditional sequences of classifier-free guidance (same length and positions)."""
    drop = np.ones(len(batch.tokens), bool) if drop is None else np.asarray(drop, bool)
    return batch._replace(text_mask=batch.text_mask & ~drop[:, None])


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """The sequence layouts of a run's tasks, padded to one length (`length`).

    ``latent_shape``: the tokenizer's ``(t, h, w)`` grid of a clip; ``audio_frames``: RVQ
    frames of a clip's audio (0: no audio); ``text_dim``: the text encoder's width (0: no
    text); ``condition_frames``: FP's given latent frames; ``avcont_audio_frames``: the
    audio frames given with the first frame in AVCont (those covering it, e.g.
    round(106 / 17) = 6 for the thesis' 17-frame clips); ``resolution``: a ``<res>`` token
    before video outputs (None: the default 128x128 has none); ``with_source``: a
    ``<source>`` token after ``<task>``.
    """

    vocab: Vocabulary
    latent_shape: tuple[int, int, int]
    tasks: tuple[str, ...]
    audio_frames: int = 0
    text_dim: int = 0
    max_text_tokens: int = MAX_TEXT_TOKENS
    condition_frames: int = 1
    avcont_audio_frames: int = 0
    resolution: str | None = None
    with_source: bool = False

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "latent_shape", tuple(self.latent_shape))
        if not self.tasks:
            raise ValueError(f"a SequenceLayout needs at least one task of {list(TASKS)}.")
        for task in self.tasks:
            check_task(task)
        if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
            raise ValueError(f"latent_shape={self.latent_shape}; expected positive (t, h, w).")
        t = self.latent_shape[0]
        for task in self.tasks:
            spec = TASK_SPECS[task]
            if spec.text == "required" and not self.text_dim:
                raise ValueError(
                    f"task {task!r} needs text but text_dim=0; set text_dim to the text "
                    "encoder's width (e.g. 384 for MiniLM-L6) or drop the task."
                )
            if "audio" in task_modalities(task) and not (
                self.audio_frames and self.vocab.audio_levels
            ):
                raise ValueError(
                    f"task {task!r} needs audio but audio_frames={self.audio_frames} and the "
                    f"vocabulary has {self.vocab.audio_levels} audio levels; set both or drop "
                    "the task."
                )
            if spec.video_input in ("first_frame", "first_frames") and t < 2:
                raise ValueError(
                    f"task {task!r} continues a clip from its first frames, but latent_shape "
                    f"{self.latent_shape} has one latent frame; use clips of >= 2 latent frames."
                )
        if "fp" in self.tasks and not 1 <= self.condition_frames < t:
            raise ValueError(
                f"condition_frames={self.condition_frames} must be in [1, {t}) for 'fp' with "
                f"{t} latent frames."
            )
        if "avcont" in self.tasks and not 1 <= self.avcont_audio_frames < self.audio_frames:
            raise ValueError(
                f"avcont_audio_frames={self.avcont_audio_frames} must be in [1, "
                f"audio_frames={self.audio_frames}): the audio frames that cover the first "
                "video frame (e.g. round(106 / 17) = 6 in the thesis)."
            )
        if self.text_dim and not 1 <= self.max_text_tokens:
            raise ValueError(f"max_text_tokens={self.max_text_tokens} must be >= 1.")
        if self.resolution is not None:
            self.vocab.resolution_id(self.resolution)

    # --- shapes ------------------------------------------------------------------------------

    @property
    def tokens_per_frame(self) -> int:
        """Sequence positions of one latent frame: ``h * w`` (one per code, `LayoutBatch`)."""
        _, h, w = self.latent_shape
        return h * w

    def _video_input_frames(self, task: str) -> int:
        kind = TASK_SPECS[task].video_input
        t = self.latent_shape[0]
        return {"none": 0, "first_frame": 1, "first_frames": self.condition_frames}.get(kind, t)

    def _audio_input_frames(self, task: str) -> int:
        kind = TASK_SPECS[task].audio_input
        return {"none": 0, "first_frames": self.avcont_audio_frames}.get(kind, self.audio_frames)

    def _video_output_frames(self, task: str) -> int:
        kind = TASK_SPECS[task].video_output
        t = self.latent_shape[0]
        if kind == "rest":
            return t - self._video_input_frames(task)
        return {"none": 0, "first_frame": 1, "full": t}[kind]

    def _audio_output_frames(self, task: str) -> int:
        kind = TASK_SPECS[task].audio_output
        if kind == "rest":
            return self.audio_frames - self._audio_input_frames(task)
        return {"none": 0, "full": self.audio_frames}[kind]

    def has_text(self, task: str) -> bool:
        """Whether ``task``'s sequences carry a text segment in this layout."""
        use = TASK_SPECS[check_task(task)].text
        return use == "required" or (use == "optional" and self.text_dim > 0)

    def segments(self, task: str) -> tuple[Segment, ...]:
        """The segments of ``task``'s sequence, in order (padding not included)."""
        spec = TASK_SPECS[check_task(task)]
        parts: list[tuple[str, int]] = [("<bos>", 1), ("<task>", 1)]
        if self.with_source:
            parts.append(("<source>", 1))
        if self.has_text(task):
            parts += [("<bot_i>", 1), ("text", self.max_text_tokens), ("<eot_i>", 1)]
        if frames := self._video_input_frames(task):
            parts += [("<bov_i>", 1), ("video_in", frames * self.tokens_per_frame), ("<eov_i>", 1)]
        if frames := self._audio_input_frames(task):
            n = frames * self.vocab.audio_levels
            parts += [("<boa_i>", 1), ("audio_in", n), ("<eoa_i>", 1)]
        if self.resolution is not None and spec.video_output in ("full", "rest"):
            parts.append(("<res>", 1))
        if frames := self._video_output_frames(task):
            parts += [("<bov_o>", 1), ("video_out", frames * self.tokens_per_frame)]
            if spec.closed:
                parts.append(("<eov_o>", 1))
        if frames := self._audio_output_frames(task):
            n = frames * self.vocab.audio_levels
            parts += [("<boa_o>", 1), ("audio_out", n), ("<eoa_o>", 1)]
        if spec.closed:
            parts.append(("<eos>", 1))
        starts = np.cumsum([0] + [n for _, n in parts])
        return tuple(Segment(name, int(s), n) for (name, n), s in zip(parts, starts))

    def task_length(self, task: str) -> int:
        """Positions of ``task``'s sequence before padding."""
        return self.segments(task)[-1].stop

    @property
    def length(self) -> int:
        """L: the padded length of every sequence, the longest task's."""
        return max(self.task_length(task) for task in self.tasks)

    def prefix_length(self, task: str) -> int:
        """Positions up to and including ``task``'s first output-begin token."""
        for seg in self.segments(task):
            if seg.name in ("<bov_o>", "<boa_o>"):
                return seg.stop
        raise AssertionError(f"task {task!r} has no output segment")

    def segment(self, task: str, name: str) -> Segment:
        """The segment ``name`` of ``task`` (a ValueError if the task has none)."""
        for seg in self.segments(task):
            if seg.name == name:
                return seg
        names = [s.name for s in self.segments(task)]
        raise ValueError(f"task {task!r} has no segment {name!r}; its segments are {names}.")

    def token_ranges(self, task: str) -> Int[np.ndarray, "n 2"]:
        """``[lo, hi)`` of the ids allowed at each position of ``task``'s sequence."""
        vocab = self.vocab
        sources = (vocab.source_id(0), vocab.source_id(NUM_SOURCES - 1) + 1)
        pad = (vocab.pad_id, vocab.pad_id + 1)
        ranges = []
        for seg in self.segments(task):
            if seg.name in ("video_in", "video_out"):
                ranges += [vocab.visual_factor_range(0)] * seg.length
            elif seg.name in ("audio_in", "audio_out"):
                frames = seg.length // vocab.audio_levels
                ranges += [vocab.audio_level_range(j // frames) for j in range(seg.length)]
            elif seg.name == "text":
                ranges += [pad] * seg.length
            elif seg.name == "<source>":
                ranges.append(sources)
            else:
                token = self._special(task, seg.name)
                ranges.append((token, token + 1))
        return np.asarray(ranges, np.int32)

    def _special(self, task: str, name: str) -> int:
        if name == "<task>":
            return self.vocab.task_id(task)
        if name == "<res>":
            return self.vocab.resolution_id(self.resolution)
        return self.vocab.special_id(name)

    # --- building ----------------------------------------------------------------------------

    def build(
        self, task: str, inputs: TaskInputs = TaskInputs(), *, batch_size: int | None = None
    ) -> LayoutBatch:
        """Sequences of ``task`` for a batch of inputs, padded to `length`.

        ``batch_size`` is needed only when ``inputs`` holds no array (unconditional
        sampling). Outputs not in ``inputs`` are left as ``<pad>`` for `sample` to fill.
        """
        if task not in self.tasks:
            raise ValueError(
                f"task {check_task(task)!r} is not among this layout's tasks {list(self.tasks)}; "
                "add it (the padded length covers the layout's tasks only)."
            )
        b = _batch_size(inputs, batch_size)
        vocab, spec = self.vocab, TASK_SPECS[task]
        segments = self.segments(task)
        n, length = segments[-1].stop, self.length
        tokens = np.full((b, length, vocab.visual_factors), vocab.pad_id, np.int64)
        ranges = np.full((length + 1, 2), (vocab.pad_id, vocab.pad_id + 1), np.int32)
        ranges[:n] = self.token_ranges(task)
        t = self.latent_shape[0]
        video_in, video_out = self._video_input_frames(task), self._video_output_frames(task)
        audio_in = self._audio_input_frames(task)
        text = (
            np.zeros((b, self.max_text_tokens, self.text_dim), np.float32),
            np.zeros((b, self.max_text_tokens), bool),
            np.zeros((b, self.max_text_tokens), np.int32),
        )
        for seg in segments:
            where = slice(seg.start, seg.stop)
            if seg.name == "text":
                text = self._text(task, inputs, seg.start, b)
            elif seg.name == "<source>":
                if inputs.source is None:
                    raise ValueError("with_source=True needs TaskInputs.source, one index each.")
                source = np.asarray(inputs.source)
                tokens[:, where, 0] = [[vocab.source_id(int(s))] for s in source.reshape(b)]
            elif seg.name == "video_in":
                if spec.video_input == "condition":
                    codes = self._video(inputs.condition, "condition", (t,), task, b)
                else:
                    allowed = (t,) if spec.video_input == "full" else (t, video_in)
                    codes = self._video(inputs.video, "video", allowed, task, b)[:, :video_in]
                tokens[:, where] = self._visual_ids(codes)
            elif seg.name == "video_out":
                allowed = {"first_frame": (t, 1), "rest": (t, video_in)}.get(
                    spec.video_output, (t,)
                )
                codes = self._video(inputs.video, "video", allowed, task, b, optional=True)
                first = 0 if spec.video_output != "rest" else video_in
                if codes is not None and codes.shape[1] >= first + video_out:
                    tokens[:, where] = self._visual_ids(codes[:, first : first + video_out])
            elif seg.name == "audio_in":
                allowed = (self.audio_frames, audio_in)
                codes = self._audio(inputs.audio, allowed, task, b)[:, :, :audio_in]
                tokens[:, where, 0] = vocab.audio_to_ids(codes)
            elif seg.name == "audio_out":
                allowed = (self.audio_frames, audio_in)
                codes = self._audio(inputs.audio, allowed, task, b, optional=True)
                if codes is not None and codes.shape[2] == self.audio_frames:
                    tokens[:, where, 0] = vocab.audio_to_ids(codes[:, :, audio_in:])
            elif seg.length == 1:
                tokens[:, where, 0] = self._special(task, seg.name)
        prefix = self.prefix_length(task)
        loss_mask = np.zeros((b, length), bool)
        loss_mask[:, prefix:n] = True
        return LayoutBatch(
            tokens=tokens[..., 0].astype(np.int32),
            factor_tokens=tokens[..., 1:].astype(np.int32),
            loss_mask=loss_mask,
            prefix_length=np.full((b,), prefix, np.int32),
            next_range=np.broadcast_to(ranges[1:], (b, length, 2)).copy(),
            text_embeddings=text[0],
            text_mask=text[1],
            text_positions=text[2],
            task_index=np.full((b,), TASKS.index(task), np.int32),
        )

    def _visual_ids(self, codes: Int[np.ndarray, "b t h w"]) -> Int[np.ndarray, "b n f"]:
        """The ids of ``codes`` as the positions of a video segment: ``[b, t*h*w, f]``."""
        ids = self.vocab.visual_to_ids(codes)
        return ids.reshape(len(codes), -1, self.vocab.visual_factors)

    def _text(self, task: str, inputs: TaskInputs, start: int, b: int):
        m, d = self.max_text_tokens, self.text_dim
        embeddings = np.zeros((b, m, d), np.float32)
        mask = np.zeros((b, m), bool)
        positions = np.broadcast_to(start + np.arange(m, dtype=np.int32), (b, m)).copy()
        if inputs.text_embeddings is None:
            if TASK_SPECS[task].text == "required":
                raise ValueError(
                    f"task {task!r} needs TaskInputs.text_embeddings [b, <= {m}, {d}] (the text "
                    "encoder's per-token embeddings) and text_mask."
                )
            return embeddings, mask, positions
        given = np.asarray(inputs.text_embeddings, np.float32)
        if given.ndim != 3 or given.shape[0] != b or given.shape[1] > m or given.shape[2] != d:
            raise ValueError(
                f"text_embeddings have shape {given.shape}; expected [{b}, <= {m}, {d}] "
                "(batch, text tokens up to max_text_tokens, text_dim)."
            )
        n = given.shape[1]
        given_mask = np.ones((b, n), bool) if inputs.text_mask is None else inputs.text_mask
        if np.shape(given_mask) != (b, n):
            raise ValueError(
                f"text_mask has shape {np.shape(given_mask)}; expected {(b, n)} like the "
                "text embeddings' first two axes."
            )
        embeddings[:, :n] = given
        mask[:, :n] = np.asarray(given_mask, bool)
        return embeddings, mask, positions

    def _video(self, codes, name, frames, task, b, optional=False):
        """``codes`` checked as ``[b, t', h, w]`` visual codes with ``t'`` in ``frames``."""
        if codes is None:
            if optional:
                return None
            raise ValueError(f"task {task!r} needs TaskInputs.{name} [b, t, h, w] of LFQ codes.")
        codes = np.asarray(codes)
        _, h, w = self.latent_shape
        if codes.ndim != 4 or codes.shape[0] != b or codes.shape[1] not in frames:
            raise ValueError(
                f"TaskInputs.{name} has shape {codes.shape}; task {task!r} takes [{b}, t', {h}, "
                f"{w}] with t' in {sorted(set(frames))} latent frames."
            )
        if codes.shape[2:] != (h, w):
            raise ValueError(
                f"TaskInputs.{name} has a {codes.shape[2:]} token grid; this layout's latent "
                f"shape is {self.latent_shape}."
            )
        _check_codes(codes, self.vocab.visual_codes, name)
        return codes.astype(np.int64)

    def _audio(self, codes, frames, task, b, optional=False):
        """``codes`` checked as ``[b, levels, f]`` RVQ codes with ``f`` in ``frames``."""
        if codes is None:
            if optional:
                return None
            raise ValueError(
                f"task {task!r} needs TaskInputs.audio [b, {self.vocab.audio_levels}, "
                f"{self.audio_frames}] of RVQ codes."
            )
        codes = np.asarray(codes)
        levels = self.vocab.audio_levels
        if codes.ndim != 3 or codes.shape[:2] != (b, levels) or codes.shape[2] not in frames:
            raise ValueError(
                f"TaskInputs.audio has shape {codes.shape}; task {task!r} takes [{b}, {levels}, "
                f"f] with f in {sorted(set(frames))} audio frames."
            )
        _check_codes(codes, self.vocab.audio_codebook_size, "audio")
        return codes.astype(np.int64)

    # --- reading back ------------------------------------------------------------------------

    def outputs(self, task: str, batch: LayoutBatch) -> TaskOutputs:
        """The clip and/or audio ``task`` produces, read from its (sampled) sequences."""
        spec = TASK_SPECS[check_task(task)]
        ids = np.concatenate(
            [np.asarray(batch.tokens)[..., None], np.asarray(batch.factor_tokens)], axis=-1
        ).astype(np.int64)
        b = ids.shape[0]
        _, h, w = self.latent_shape
        f = self.vocab.visual_factors

        def read(name):
            seg = self.segment(task, name)
            return ids[:, seg.start : seg.stop]

        def video_of(name):
            return self.vocab.visual_from_ids(read(name).reshape(b, -1, h, w, f))

        video = audio = None
        if spec.video_output != "none":
            video = video_of("video_out")
            if spec.video_output == "rest":
                video = np.concatenate([video_of("video_in"), video], axis=1)
        if spec.audio_output != "none":
            audio = self.vocab.audio_from_ids(read("audio_out")[..., 0])
            if spec.audio_output == "rest":
                given = self.vocab.audio_from_ids(read("audio_in")[..., 0])
                audio = np.concatenate([given, audio], 2)
        return TaskOutputs(video, audio)


def _batch_size(inputs: TaskInputs, batch_size: int | None) -> int:
    sizes = {len(np.asarray(a)) for a in inputs if a is not None}
    if batch_size is not None:
        sizes.add(batch_size)
    if len(sizes) != 1:
        raise ValueError(
            f"batch sizes {sorted(sizes)} of the inputs (and batch_size) disagree, or nothing "
            "gives one; pass batch_size= when the inputs hold no arrays."
        )
    return sizes.pop()


def _check_codes(codes: np.ndarray, size: int, name: str) -> None:
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"TaskInputs.{name} has dtype {codes.dtype}; expected integer codes.")
    if codes.size and (codes.min() < 0 or codes.max() >= size):
        raise ValueError(
            f"TaskInputs.{name} holds codes in [{codes.min()}, {codes.max()}]; the vocabulary "
            f"expects [0, {size})."
        )


# --- task mixture ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskMixture:
    """Sampling weights of the pretraining tasks, optionally on the two-stage schedule of
    Sec. 8.3.4: image tasks (`IMAGE_TASKS`) get ``early_image_share`` of the examples for
    the first ``switch_fraction`` of the steps and ``late_image_share`` after; each group
    splits its share by the configured weights."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    two_stage: bool = False
    switch_fraction: float = 0.25
    early_image_share: float = 0.9
    late_image_share: float = 0.1

    @classmethod
    def from_config(
        cls,
        weights: Mapping[str, float],
        *,
        modalities: Collection[str],
        two_stage: bool = False,
    ) -> TaskMixture:
        """A mixture from ``{task_name: weight}``, checked against the ``modalities`` the data
        has besides video ("text" for captions, "audio" for soundtracks)."""
        unknown = [name for name in weights if name not in TASKS]
        if unknown:
            raise ValueError(f"unknown VideoPoet task(s) {unknown}; the tasks are {list(TASKS)}.")
        for name in weights:
            missing = [m for m in task_modalities(name) if m not in modalities]
            if missing:
                raise ValueError(
                    f"task {name!r} needs {missing[0]}, which the data does not have (its "
                    f"modalities besides video: {sorted(modalities)}); remove {name!r} from the "
                    f"task mixture or use data with {missing[0]} (e.g. moving_digits, which has "
                    "captions and audio)."
                )
        return cls(tuple(weights), tuple(float(w) for w in weights.values()), two_stage)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        for name in self.names:
            check_task(name)
        w = np.asarray(self.weights, np.float64)
        if len(self.names) != len(self.weights) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"task weights {dict(zip(self.names, self.weights))} must be non-negative, one "
                "per task, with a positive sum."
            )
        if self.two_stage:
            image = self._image_weights()
            if not image.sum() or not (w - image).sum():
                raise ValueError(
                    f"two_stage needs an image task {list(IMAGE_TASKS)} and a video task with "
                    f"positive weights; the mixture is {dict(zip(self.names, self.weights))}."
                )

    def _image_weights(self) -> np.ndarray:
        w = np.asarray(self.weights, np.float64)
        return np.where([n in IMAGE_TASKS for n in self.names], w, 0.0)

    def probabilities(self, step: int, total_steps: int) -> Float[np.ndarray, " k"]:
        """Probability of each task (in `names` order) at ``step`` of ``total_steps``."""
        w = np.asarray(self.weights, np.float64)
        if not self.two_stage:
            return w / w.sum()
        image = self._image_weights()
        video = w - image
        early = step < self.switch_fraction * total_steps
        share = self.early_image_share if early else self.late_image_share
        return share * image / image.sum() + (1.0 - share) * video / video.sum()

    def sample(self, step: int, total_steps: int, batch_size: int, *, seed: int) -> tuple[str, ...]:
        """``batch_size`` task names for ``step``: a function of (seed, step) only, so a
        resumed run draws the same tasks."""
        rng = np.random.default_rng([seed, step])
        picks = rng.choice(
            len(self.names), size=batch_size, p=self.probabilities(step, total_steps)
        )
        return tuple(self.names[i] for i in picks)
