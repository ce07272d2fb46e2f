"""VideoPoet training sequences assembled inside the jitted step, from a clip's codes.

`SequenceLayout.build` lays out one task's sequences on the host with numpy. A training
batch mixes tasks, and its clips arrive as token arrays already on the device, so the
train step assembles the sequences itself: `SequenceTemplates` turns the layout of every
task into fixed tables (per task and position: the constant id, or the index of the clip
code it copies), and `assemble` gathers each example's sequence from its task's row.
The result is what `SequenceLayout.build` gives for the same inputs (a test checks it
task by task), without a host round trip or one compiled program per task.

An example's codes are one vector of slots (`example_ids`), each slot a position's ids
(``tokens`` and ``factor_tokens`` of `LayoutBatch`):
``[visual codes of the clip | audio ids | visual codes of each painting condition]``,
visual codes in the layout's ``[t, h, w]`` raster order with their ``f`` factor ids,
audio ids level-major over the clip's frames (``<pad>`` as their factors).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from videogen.tasks.videopoet_layout import COMMIT_TASKS, TASK_SPECS, SequenceLayout
from videogen.tasks.videopoet_vocab import TASKS

# Painting tasks in the order their condition ids follow the clip's (`example_ids`).
PAINT_TASKS = tuple(COMMIT_TASKS)


@dataclasses.dataclass(frozen=True)
class SequenceTemplates:
    """Per-task tables of a `SequenceLayout` (numpy; row ``k`` is ``layout.tasks[k]``).

    ``source[k, p]``: the slot of the example's ids (`example_ids`) that position ``p``
    copies, or -1 for the constant ``constant[k, p]`` (special tokens, ``<pad>`` text slots
    and padding).
    """

    layout: SequenceLayout
    source: Int[np.ndarray, "k l"]
    constant: Int[np.ndarray, "k l"]
    loss_mask: Bool[np.ndarray, "k l"]
    prefix_length: Int[np.ndarray, " k"]
    text_positions: Int[np.ndarray, "k n"]
    has_text: Bool[np.ndarray, " k"]
    paint_tasks: tuple[str, ...]  # painting tasks of the layout, in `example_ids` order

    @classmethod
    def from_layout(cls, layout: SequenceLayout) -> SequenceTemplates:
        if layout.with_source:
            raise ValueError(
                "SequenceTemplates have no <source> token (with_source=True); build such "
                "sequences with SequenceLayout.build."
            )
        vocab = layout.vocab
        video_ids = layout.latent_shape[0] * layout.tokens_per_frame
        audio_ids = layout.audio_frames * vocab.audio_levels
        paint = tuple(task for task in PAINT_TASKS if task in layout.tasks)
        length = layout.length
        rows = {name: [] for name in ("source", "constant", "loss", "positions")}
        prefixes, has_text = [], []
        for task in layout.tasks:
            spec = TASK_SPECS[task]
            source = np.full(length, -1, np.int64)
            constant = np.full(length, vocab.pad_id, np.int64)
            positions = np.zeros(layout.max_text_tokens, np.int64)
            ranges = layout.token_ranges(task)
            segments = {seg.name: seg for seg in layout.segments(task)}
            video_in = segments.get("video_in")
            audio_in = segments.get("audio_in")
            levels = max(vocab.audio_levels, 1)
            for seg in segments.values():
                j = np.arange(seg.length)
                where = slice(seg.start, seg.stop)
                if seg.name == "video_in" and spec.video_input == "condition":
                    source[where] = video_ids + audio_ids + paint.index(task) * video_ids + j
                elif seg.name == "video_in":
                    source[where] = j  # the clip's first frames
                elif seg.name == "video_out":
                    first = video_in.length if spec.video_output == "rest" else 0
                    source[where] = first + j
                elif seg.name in ("audio_in", "audio_out"):
                    frames = seg.length // levels
                    first = 0
                    if seg.name == "audio_out" and spec.audio_output == "rest":
                        first = audio_in.length // levels
                    level, frame = np.divmod(j, frames)
                    source[where] = video_ids + level * layout.audio_frames + first + frame
                elif seg.name == "text":
                    positions[:] = seg.start + j
                else:  # one special token: its range holds exactly that id
                    constant[where] = ranges[seg.start, 0]
            end = layout.task_length(task)
            prefix = layout.prefix_length(task)
            loss = np.zeros(length, bool)
            loss[prefix:end] = True
            rows["source"].append(source)
            rows["constant"].append(constant)
            rows["loss"].append(loss)
            rows["positions"].append(positions)
            prefixes.append(prefix)
            has_text.append("text" in segments)
        return cls(
            layout=layout,
            source=np.stack(rows["source"]).astype(np.int32),
            constant=np.stack(rows["constant"]).astype(np.int32),
            loss_mask=np.stack(rows["loss"]),
            prefix_length=np.asarray(prefixes, np.int32),
            text_positions=np.stack(rows["positions"]).astype(np.int32),
            has_text=np.asarray(has_text, bool),
            paint_tasks=paint,
        )

    @property
    def example_length(self) -> int:
        """Slots per example in `example_ids`."""
        layout = self.layout
        video = layout.latent_shape[0] * layout.tokens_per_frame
        audio = layout.audio_frames * layout.vocab.audio_levels
        return video * (1 + len(self.paint_tasks)) + audio

    def task_rows(self, task_names) -> Int[np.ndarray, " b"]:
        """Row of each task name in these tables."""
        return np.asarray([self.layout.tasks.index(name) for name in task_names], np.int32)


def example_ids(
    templates: SequenceTemplates,
    video: Int[Array, "b t h w"],
    audio: Int[Array, "b levels frames"] | None = None,
    conditions: Int[Array, "b c t h w"] | None = None,
) -> Int[Array, "b e f"]:
    """One vector of id slots per example: the clip's visual codes, its audio ids, each
    painting condition's visual codes (``conditions[:, i]`` for
    ``templates.paint_tasks[i]``); slot ``[.., k, :]`` holds a position's ``f`` ids."""
    vocab = templates.layout.vocab
    b, f = video.shape[0], vocab.visual_factors

    def visual(codes):
        return vocab.visual_to_ids(codes).reshape(b, -1, f)

    parts = [visual(video)]
    if templates.layout.audio_frames and vocab.audio_levels:
        if audio is None:
            raise ValueError(
                "this layout has audio: pass the clips' RVQ codes [b, levels, frames]."
            )
        ids = jnp.asarray(vocab.audio_to_ids(audio))[..., None]
        parts.append(jnp.pad(ids, ((0, 0), (0, 0), (0, f - 1)), constant_values=vocab.pad_id))
    if templates.paint_tasks:
        if conditions is None or conditions.shape[1] != len(templates.paint_tasks):
            raise ValueError(
                f"painting tasks {list(templates.paint_tasks)} need one COMMIT condition clip "
                "each: conditions [b, tasks, t, h, w]."
            )
        parts += [visual(conditions[:, i]) for i in range(len(templates.paint_tasks))]
    return jnp.concatenate([jnp.asarray(p, jnp.int32) for p in parts], axis=1)


def assemble(
    templates: SequenceTemplates,
    rows: Int[Array, " b"],
    ids: Int[Array, "b e f"],
    text_embeddings: Float[Array, "b n d"] | None = None,
    text_mask: Bool[Array, "b n"] | None = None,
) -> dict[str, Array]:
    """The sequences of tasks ``rows`` (rows of ``templates``) from examples ``ids``.

    Returns the `LayoutBatch` fields the model and loss read: ``tokens``,
    ``factor_tokens``, ``loss_mask``,
    ``prefix_length``, ``text_embeddings``, ``text_mask`` (False for tasks without text)
    and ``text_positions``; plus ``task_index`` (into `videopoet_vocab.TASKS`).
    """
    layout = templates.layout
    source = jnp.asarray(templates.source)[rows]
    gathered = jnp.take_along_axis(ids, jnp.maximum(source, 0)[..., None], axis=1)
    copied = (source >= 0)[..., None]
    tokens = jnp.where(copied[..., 0], gathered[..., 0], jnp.asarray(templates.constant)[rows])
    factor_tokens = jnp.where(copied, gathered[..., 1:], layout.vocab.pad_id)
    b, m = rows.shape[0], layout.max_text_tokens
    if text_embeddings is None:
        text_embeddings = jnp.zeros((b, m, max(layout.text_dim, 1)), jnp.float32)
        text_mask = jnp.zeros((b, m), bool)
    text_mask = text_mask & jnp.asarray(templates.has_text)[rows][:, None]
    task_index = np.asarray([TASKS.index(task) for task in layout.tasks], np.int32)
    return {
        "tokens": tokens.astype(jnp.int32),
        "factor_tokens": factor_tokens.astype(jnp.int32),
        "loss_mask": jnp.asarray(templates.loss_mask)[rows],
        "prefix_length": jnp.asarray(templates.prefix_length)[rows],
        "text_embeddings": text_embeddings,
        "text_mask": text_mask,
        "text_positions": jnp.asarray(templates.text_positions)[rows],
        "task_index": jnp.asarray(task_index)[rows],
    }
