"""COMMIT: MAGVIT's multi-task conditional masked token modelling (thesis Sec. 6.4).

Each of the ten tasks of Sec. 6.4.2 names an *interior condition* (a region of the
clip's pixels) and a padding function that fills the rest of the clip, giving the
condition video Ṽ; its tokens are the condition tokens z̃ = f_T(Ṽ). `commit_mask`
builds the transformer input of Eq. 6.2 from the target tokens z, z̃ and the token
grid's condition mask, and the indicators of the three loss terms of Eq. 6.4. The
mask-ratio schedules live here, shared by training and by Algorithm 1
(`videogen.sampling.non_autoregressive`).

Token sequences are the token grid ``[t, h, w]`` flattened row-major to ``n = t*h*w``
positions; each position holds ``f`` sub-tokens (the factorized vocabulary of
Sec. 5.3.2; ``f = 1`` without factorization). Batched functions take the task list
(static) and one task id per example (traced), so a batch may mix tasks under `jit`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

RegionKind = Literal["frames", "box", "moving_box", "none"]
PaddingKind = Literal["replicate", "interpolate", "edge", "zero"]
ScheduleKind = Literal["cosine", "uniform", "exponential"]
CellRule = Literal["any", "all"]

# Which paddings make sense for which region: replicate/interpolate fill whole frames,
# edge padding needs one rectangle to take the nearest pixel from.
_PADDINGS = {
    "frames": ("replicate", "interpolate"),
    "box": ("edge", "zero"),
    "moving_box": ("zero",),
    "none": ("zero",),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """A COMMIT task: interior-condition region, padding function, class prefix.

    Regions over a ``T x H x W`` clip:
    ``"frames"``: the first ``first_frames`` and the last ``last_frames`` frames;
    ``"box"``: a centred ``round(box_height*H) x round(box_width*W)`` rectangle in every
    frame (a fraction of 1 spans the frame: a strip);
    ``"moving_box"``: a vertically centred rectangle of that size whose left edge moves
    linearly from column 0 (first frame) to ``W - w`` (last frame), rounded to pixels (its
    condition tokens are the same box slid over the token grid: `latent_region`);
    ``"none"``: no interior condition. ``inverted`` makes the condition everything but
    the box (inpainting).

    Paddings (values for pixels outside the region):
    ``"replicate"``: the last given frame; ``"interpolate"``: per frame, the linear blend
    between the last frame given at the start and the first frame given at the end;
    ``"edge"``: the nearest pixel of the box; ``"zero"``: 0.0 in the video's value
    range (mid-grey for the tokenizer's [-1, 1] input).
    """

    name: str
    region: RegionKind
    padding: PaddingKind
    class_conditional: bool = False
    inverted: bool = False
    first_frames: int = 0
    last_frames: int = 0
    box_height: float = 1.0
    box_width: float = 1.0

    def __post_init__(self):
        if self.region not in _PADDINGS:
            raise ValueError(
                f"task {self.name}: region={self.region!r} is unknown; use one of "
                f"{sorted(_PADDINGS)}."
            )
        if self.padding not in _PADDINGS[self.region]:
            raise ValueError(
                f"task {self.name}: padding={self.padding!r} does not apply to region "
                f"{self.region!r}; use one of {_PADDINGS[self.region]}."
            )
        if self.region == "frames":
            needs_last = self.padding == "interpolate"
            if self.first_frames < 1 or (self.last_frames >= 1) != needs_last:
                raise ValueError(
                    f"task {self.name}: {self.padding} padding needs first_frames >= 1 and "
                    f"{'last_frames >= 1' if needs_last else 'last_frames = 0'}; got "
                    f"first_frames={self.first_frames}, last_frames={self.last_frames}."
                )
        if self.inverted and self.region not in ("box", "moving_box"):
            raise ValueError(
                f"task {self.name}: inverted=True (condition = all but a box) needs region "
                f"'box' or 'moving_box', got {self.region!r}."
            )
        if self.padding == "edge" and self.inverted:
            raise ValueError(
                f"task {self.name}: edge padding takes the nearest pixel of one rectangle; "
                "an inverted (inpainting) region has no such rectangle, use 'zero'."
            )
        for field in ("box_height", "box_width"):
            if not 0.0 < getattr(self, field) <= 1.0:
                raise ValueError(
                    f"task {self.name}: {field}={getattr(self, field)} must be a fraction of "
                    "the frame in (0, 1]."
                )


# The ten tasks of Sec. 6.4.2 with the thesis' settings; Table 6.6 lists the fraction of
# masked pixels / tokens each one leaves (`condition_region`, `latent_region`). The K600
# frame-prediction benchmark uses 5 condition frames (Sec. 5.4.2, 6.5.1):
# make_tasks(["FP"], {"FP": {"first_frames": 5}}).
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # FP: "t frames at the beginning; t = 1"; "replicate the last given frame".
        Task("FP", "frames", "replicate", first_frames=1),
        # FI: "t1 frames at the beginning and t2 frames at the end; t1 = 1, t2 = 1";
        # "linear interpolate between the last given frame at the beginning and the
        # first given frame at the end".
        Task("FI", "frames", "interpolate", first_frames=1, last_frames=1),
        # OPC: "a rectangle at the center with height h and width w; h = 0.5H, w = 0.5W";
        # "pad the nearest pixel for each location (edge padding)".
        Task("OPC", "box", "edge", box_height=0.5, box_width=0.5),
        # OPV: "a centered vertical strip with width w; w = 0.5W"; edge padding.
        Task("OPV", "box", "edge", box_width=0.5),
        # OPH: "a centered horizontal strip with height h; h = 0.5H"; edge padding.
        Task("OPH", "box", "edge", box_height=0.5),
        # OPD: "a moving vertical strip with width w; w = 0.5W"; "left to right"; zero
        # padding.
        Task("OPD", "moving_box", "zero", box_width=0.5),
        # IPC: "everything but a rectangle at the center with height h and width w;
        # h = 0.5H, w = 0.5W"; zero padding.
        Task("IPC", "box", "zero", inverted=True, box_height=0.5, box_width=0.5),
        # IPD: "everything but a vertically centered moving rectangle with height h and
        # width w; h = 0.5H, w = 0.5W"; "left to right"; zero padding.
        Task("IPD", "moving_box", "zero", inverted=True, box_height=0.5, box_width=0.5),
        # CG: prefix condition "class label" only: every token starts as [MASK].
        Task("CG", "none", "zero", class_conditional=True),
        # CFP: class label plus FP's interior condition and padding.
        Task("CFP", "frames", "replicate", class_conditional=True, first_frames=1),
    )
}


def make_tasks(
    names: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[Task, ...]:
    """The registry's tasks ``names`` in order (index = task id), with per-task field overrides."""
    overrides = dict(overrides or {})
    unknown = [n for n in list(names) + list(overrides) if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown COMMIT task(s) {unknown}; the tasks are {list(TASKS)}.")
    stray = [n for n in overrides if n not in names]
    if stray:
        raise ValueError(f"overrides for {stray}, which are not among the tasks {list(names)}.")
    return tuple(dataclasses.replace(TASKS[n], **overrides.get(n, {})) for n in names)


def _extent(fraction: float, size: int) -> tuple[int, int]:
    """``[start, stop)`` of a centred span covering ``fraction`` of ``size``."""
    length = max(1, round(fraction * size))
    start = (size - length) // 2
    return start, start + length


def _moving_starts(num_frames: int, width: int, box_width: int) -> np.ndarray:
    """Left edge per frame of a box sliding from column 0 to ``width - box_width``."""
    return np.rint(np.linspace(0, width - box_width, num_frames)).astype(np.int64)


def condition_region(task: Task, num_frames: int, height: int, width: int) -> np.ndarray:
    """Boolean ``[T, H, W]``: True where the pixel belongs to the task's interior condition."""
    region = np.zeros((num_frames, height, width), bool)
    if task.region == "frames":
        if task.first_frames + task.last_frames >= num_frames:
            raise ValueError(
                f"task {task.name}: {task.first_frames} + {task.last_frames} condition frames "
                f"leave nothing to generate in a {num_frames}-frame clip; use longer clips or "
                "fewer condition frames."
            )
        region[: task.first_frames] = True
        region[num_frames - task.last_frames :] = True
    elif task.region in ("box", "moving_box"):
        y0, y1 = _extent(task.box_height, height)
        x0, x1 = _extent(task.box_width, width)
        if task.region == "box":
            region[:, y0:y1, x0:x1] = True
        else:
            for frame, start in enumerate(_moving_starts(num_frames, width, x1 - x0)):
                region[frame, y0:y1, start : start + x1 - x0] = True
        if task.inverted:
            region = ~region
    return region


def _padding_table(
    task: Task, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mix [T, T], rows [H], cols [W])`` with
    ``padding[τ, y, x] = Σ_σ mix[τ, σ] · video[σ, rows[y], cols[x]]``.

    Every padding of Sec. 6.4.2 has this separable form, and each term reads a pixel inside
    the region, so the condition video depends on the condition pixels only.
    """
    mix = np.eye(num_frames, dtype=np.float32)
    rows, cols = np.arange(height), np.arange(width)
    if task.padding == "zero":
        mix[:] = 0.0
    elif task.padding == "replicate":
        mix[task.first_frames :] = 0.0
        mix[task.first_frames :, task.first_frames - 1] = 1.0
    elif task.padding == "interpolate":
        start, end = task.first_frames - 1, num_frames - task.last_frames
        for frame in range(start + 1, end):
            alpha = (frame - start) / (end - start)
            mix[frame] = 0.0
            mix[frame, start], mix[frame, end] = 1.0 - alpha, alpha
    else:  # edge: clamping each coordinate into the box gives the nearest box pixel.
        y0, y1 = _extent(task.box_height, height)
        x0, x1 = _extent(task.box_width, width)
        rows, cols = np.clip(rows, y0, y1 - 1), np.clip(cols, x0, x1 - 1)
    return mix, rows.astype(np.int32), cols.astype(np.int32)


def condition_video(
    tasks: Sequence[Task], task_ids: Int[Array, " b"], video: Float[Array, "b T H W c"]
) -> Float[Array, "b T H W c"]:
    """Ṽ: each clip's interior condition kept, the rest filled by its task's padding.

    ``task_ids[i]`` indexes ``tasks``. Ṽ depends only on the pixels inside the region.
    """
    num_frames, height, width = video.shape[1:4]
    regions = np.stack([condition_region(t, num_frames, height, width) for t in tasks])
    mix, rows, cols = (
        np.stack(parts)
        for parts in zip(*(_padding_table(t, num_frames, height, width) for t in tasks))
    )
    regions, mix, rows, cols = (jnp.asarray(a) for a in (regions, mix, rows, cols))

    def one(clip, task_id):
        gathered = clip[:, rows[task_id]][:, :, cols[task_id]]
        # HIGHEST: TPUs would otherwise round the copied pixels to bfloat16.
        padding = jnp.einsum(
            "st,thwc->shwc",
            mix[task_id],
            gathered.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        return jnp.where(regions[task_id][..., None], clip, padding.astype(clip.dtype))

    return jax.vmap(one)(video, task_ids)


def latent_region(
    task: Task,
    video_shape: tuple[int, int, int],
    latent_shape: tuple[int, int, int],
    *,
    temporal_factor: int,
    spatial_factor: int,
    causal: bool,
    rule: CellRule = "any",
) -> np.ndarray:
    """Boolean ``[t, h, w]``: True where the token is a condition token (¬ispad in Eq. 6.2).

    A token's cell (supervoxel) is the ``spatial_factor`` x ``spatial_factor`` pixel block
    it covers in the frames it covers: with ``causal`` (MAGVIT-v2), latent frame 0 covers
    frame 0 and latent frame ``i >= 1`` covers frames ``1 + f(i-1) .. f*i``
    (``f = temporal_factor``); otherwise (MAGVIT 3D-VQ) frames ``f*i .. f*i + f - 1``.
    ``rule="any"`` (the thesis): a token is a condition token unless its cell "only contains
    padding" (Eq. 6.2), which gives Table 6.6's masked-token fractions (e.g. FP on 16 frames:
    75%); ``rule="all"``: only cells lying wholly inside the region.

    A ``"moving_box"`` task's condition tokens are its box slid over the token grid itself,
    one position per latent frame (as MAGVIT's code does), whatever the rule: Table 6.6's
    50% (OPD) and 25% (IPD) masked tokens are that box. The cell rule would give 37.5% and
    18.75% at 16x128x128, as a 4-frame cell sees the pixel box move. Each of these condition
    tokens' cells still holds condition pixels in the thesis' set-ups.
    """
    num_frames, height, width = video_shape
    f, s = temporal_factor, spatial_factor
    if causal:
        frames_ok, t = (num_frames - 1) % f == 0, 1 + (num_frames - 1) // f
    else:
        frames_ok, t = num_frames % f == 0, num_frames // f
    expected = (t, height // s, width // s)
    if not frames_ok or height % s or width % s or tuple(latent_shape) != expected:
        layout = f"1 + {f}k" if causal else f"{f}k"
        raise ValueError(
            f"latent shape {tuple(latent_shape)} does not tile video shape {tuple(video_shape)} "
            f"with temporal factor {f}, spatial factor {s} (causal={causal}): frames must be "
            f"{layout}, height and width multiples of {s}, and the latent grid "
            f"{expected if frames_ok else 'follows from them'}."
        )
    if rule not in ("any", "all"):
        raise ValueError(f"rule={rule!r} is unknown; use 'any' (the thesis) or 'all'.")
    if task.region == "moving_box":
        return condition_region(task, *expected)
    reduce = np.any if rule == "any" else np.all
    region = condition_region(task, num_frames, height, width)
    cells = reduce(region.reshape(num_frames, height // s, s, width // s, s), axis=(2, 4))
    if causal:
        later = reduce(cells[1:].reshape(t - 1, f, *cells.shape[1:]), axis=1)
        return np.concatenate([cells[:1], later])
    return reduce(cells.reshape(t, f, *cells.shape[1:]), axis=1)


def latent_condition_mask(
    tasks: Sequence[Task],
    task_ids: Int[Array, " b"],
    video_shape: tuple[int, int, int],
    latent_shape: tuple[int, int, int],
    *,
    temporal_factor: int,
    spatial_factor: int,
    causal: bool,
    rule: CellRule = "any",
) -> Bool[Array, "b t h w"]:
    """`latent_region` of each example's task; flatten to ``[b, t*h*w]`` for `commit_mask`."""
    table = np.stack(
        [
            latent_region(
                task,
                video_shape,
                latent_shape,
                temporal_factor=temporal_factor,
                spatial_factor=spatial_factor,
                causal=causal,
                rule=rule,
            )
            for task in tasks
        ]
    )
    return jnp.asarray(table)[task_ids]


def mask_schedule(
    progress: Float[Array, "*s"] | float,
    kind: ScheduleKind,
    num_tokens: Int[Array, "*s"] | int | None = None,
) -> Float[Array, "*s"]:
    """Mask ratio γ(r) for ``r`` in [0, 1] (MaskGIT's schedules; Sec. 6.3, 6.5.6).

    ``cosine``: cos(πr/2); ``uniform``: 1 - r; ``exponential``: 1 - N^-(1-r) with
    ``N = num_tokens`` (MaskGIT's "exp"). All reach exactly 0 at r = 1.
    """
    r = jnp.asarray(progress, jnp.float32)
    if kind == "cosine":
        # sin(π/2 (1-r)) is cos(πr/2) with an exact zero at r = 1 (cos(π/2) ≈ 6e-17).
        ratio = jnp.sin(0.5 * math.pi * (1.0 - r))
    elif kind == "uniform":
        ratio = 1.0 - r
    elif kind == "exponential":
        if num_tokens is None:
            raise ValueError("the exponential schedule needs num_tokens (the N in 1 - N^-(1-r)).")
        ratio = 1.0 - jnp.exp(-(1.0 - r) * jnp.log(jnp.asarray(num_tokens, jnp.float32)))
    else:
        raise ValueError(
            f"mask schedule {kind!r} is unknown; use 'cosine', 'uniform' or 'exponential'."
        )
    return jnp.clip(ratio, 0.0, 1.0)


def masked_count(
    mask_ratio: Float[Array, "*s"] | float, num_tokens: Int[Array, "*s"] | int
) -> Int[Array, "*s"]:
    """⌈γ · N⌉ (Sec. 6.3, Algorithm 1 line 7), in [0, N]."""
    x = jnp.asarray(mask_ratio, jnp.float32) * num_tokens
    # float32 can lift an exact integer just above itself (0.9166667 * 1200 = 1100.00004);
    # a relative 1e-6 keeps the ceiling equal to exact arithmetic.
    return jnp.clip(jnp.ceil(x * (1.0 - 1e-6)), 0, num_tokens).astype(jnp.int32)


def select_lowest(scores: Float[Array, "b n"], count: Int[Array, " b"]) -> Bool[Array, "b n"]:
    """True at each row's ``count`` lowest scores (ties: lower position first).

    This is "s_i <= s*" with s* the count-th smallest score, with an exact count under ties.
    """
    ranks = jnp.argsort(jnp.argsort(scores, axis=1, stable=True), axis=1, stable=True)
    return ranks < count[:, None]


def sample_mask_ratio(
    key: Array, batch_size: int, kind: ScheduleKind, num_tokens: int
) -> Float[Array, " b"]:
    """Training mask ratios γ(r), r ~ U[0, 1), one per example (Sec. 6.3)."""
    return mask_schedule(jax.random.uniform(key, (batch_size,)), kind, num_tokens)


def sample_tasks(key: Array, batch_size: int, weights: Sequence[float]) -> Int[Array, " b"]:
    """A task id per example, drawn with probability proportional to ``weights``."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"task weights {list(weights)} must be non-negative with a positive sum, one per task."
        )
    # jnp.log maps zero weights to -inf (never drawn) without numpy's divide warning.
    logits = jnp.log(jnp.asarray(w / w.sum(), jnp.float32))
    return jax.random.categorical(key, logits, shape=(batch_size,))


class CommitInputs(NamedTuple):
    """The corrupted sequence z̄ = m(z | z̃) of Eq. 6.2 and what each position is trained for."""

    tokens: Int[Array, "b n f"]  # transformer input z̄
    refine: Bool[Array, "b n"]  # z̄_i = z̃_i (masked, cell holds condition pixels): L_refine
    mask: Bool[Array, "b n"]  # z̄_i = [MASK] (masked, cell is all padding): L_mask
    recons: Bool[Array, "b n"]  # z̄_i = z_i (not masked): L_recons
    weights: Float[Array, "b n"]  # per-position cross-entropy weight (Eq. 6.4)


def commit_mask(
    target: Int[Array, "b n f"],
    condition: Int[Array, "b n f"],
    condition_mask: Bool[Array, "b n"],
    mask_ratio: Float[Array, " b"],
    key: Array,
    *,
    mask_token_id: int,
    refine_weight: float = 1.0,
    mask_weight: float = 1.0,
    recons_weight: float = 1.0,
) -> CommitInputs:
    """Eq. 6.2 with per-token scores s_i ~ U(0, 1) and s* the ⌈γN⌉-th smallest:

    ``z̄_i = z̃_i`` if s_i <= s* and the token is a condition token (``condition_mask``),
    ``[MASK]`` if s_i <= s* and its cell is padding only, ``z_i`` if s_i > s*.
    Eq. 6.3 sums the cross-entropy over every position with weight 1; the weights split it
    into the refine / mask / recons terms of Eq. 6.4 (all 1 in the thesis; Table 6.8
    ablates dropping terms).
    """
    b, n, f = target.shape
    if (
        condition.shape != target.shape
        or condition_mask.shape != (b, n)
        or jnp.shape(mask_ratio) != (b,)
    ):
        raise ValueError(
            f"commit_mask expects target and condition [b, n, f] = {(b, n, f)}, condition_mask "
            f"[b, n] = {(b, n)} and mask_ratio [b] = {(b,)}; got condition {condition.shape}, "
            f"condition_mask {condition_mask.shape}, mask_ratio {jnp.shape(mask_ratio)}."
        )
    scores = jax.random.uniform(key, (b, n))
    # s* is at least the smallest score: one token is always masked, as in MaskGIT.
    masked = select_lowest(scores, jnp.maximum(masked_count(mask_ratio, n), 1))
    refine = masked & condition_mask
    mask = masked & ~condition_mask
    recons = ~masked
    tokens = jnp.where(
        refine[..., None], condition, jnp.where(mask[..., None], mask_token_id, target)
    ).astype(target.dtype)
    weights = refine * refine_weight + mask * mask_weight + recons * recons_weight
    return CommitInputs(tokens, refine, mask, recons, weights.astype(jnp.float32))
