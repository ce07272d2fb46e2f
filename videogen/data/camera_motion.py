"""A synthetic camera over a photograph: pan, zoom and a small roll, with motion blur.

A clip is a square view of a still photo that moves along a `CameraPath`:
its centre slides along a straight line, its side changes geometrically (a
zoom at constant apparent speed) and it rolls by a few degrees, with an
ease-in/ease-out mix so that not every camera moves at constant velocity.
Time is counted in steps, the native frames of a 25 fps video; a clip of
`num_frames` at `frame_stride` shows every frame_stride-th step, as striding a
decoded video does.

Each shown frame integrates the view over an exposure of SHUTTER steps (a
180-degree shutter), averaging sub-frame renders spaced at most one output
pixel apart, so fast motion smears and slow motion stays sharp. Frames are
sampled from a mip-map of the photo (2x2 box-reduced levels, trilinear
between the two nearest), so a view covering many photo pixels per output
pixel is antialiased and a zoom does not pop between levels.

`sample_path` draws a path whose view stays inside the photo at every instant
(rolled corners included); `render` turns a path into uint8 [T, R, R, 3];
`motion_words` names the motion for captions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from jaxtyping import UInt8
import numpy as np

# Fraction of a step during which a frame is exposed (a 180-degree shutter).
SHUTTER = 0.5
# Sub-frame renders per frame at most; beyond ~8 the blur is already smooth.
MAX_SUBFRAMES = 8
# View side at the start, as a fraction of the photo's short side.
VIEW_FRACTION = (0.35, 0.85)
# Pan speed in view sides per step, drawn log-uniformly: from a slow drift (a 32-pixel
# view moves 0.13 pixel per step) to a fast pan that crosses the view in 12 steps.
PAN_SPEED = (0.004, 0.08)
ZOOM_PROBABILITY = 0.5
# |log(side ratio)| per step when the camera zooms: up to 1.6x over 16 steps.
MAX_ZOOM_RATE = 0.03
ROLL_PROBABILITY = 0.3
MAX_ROLL_RATE = math.radians(0.4)  # per step
START_ROLL = math.radians(3.0)  # a hand-held camera is rarely level
MAX_ROLL = math.radians(8.0)
# Up to this share of the motion follows a smoothstep (the camera speeds up, then slows);
# at most 0.5, so the slowest instant still moves at half the mean speed.
MAX_EASE = 0.5
# The mip-map's base level: longer photos are shrunk first (their detail would only
# be averaged away again at clip resolutions up to 256).
MAX_SHORT_SIDE = 512
# Motions below these go unnamed in captions.
_NAMED_PAN = 0.1  # view sides over the clip
_NAMED_ZOOM = math.log(1.15)
_NAMED_ROLL = math.radians(2.0)
# A pan component is named only within ~67 degrees of its axis.
_DIRECTION_MIN_FRACTION = 0.38


class CameraPath(NamedTuple):
    """A view of a photo over `num_steps` steps, in photo pixels (y down, x right).

    At progress u in [0, 1] the view's centre is `center + u * displacement`, its
    side `side * exp(u * log_zoom)` (log_zoom < 0 zooms in) and its roll
    `roll + u * roll_change` radians. Progress follows time linearly, mixed with
    a smoothstep in the share `ease`. The path spans the shown frames' exposures:
    from SHUTTER / 2 steps before the first to SHUTTER / 2 after the last.
    """

    center: np.ndarray  # float64 [2], (y, x)
    displacement: np.ndarray  # float64 [2], (dy, dx)
    side: float
    log_zoom: float
    roll: float
    roll_change: float
    ease: float
    num_steps: int  # (num_frames - 1) * frame_stride

    def progress(self, step: float | np.ndarray) -> float | np.ndarray:
        """u in [0, 1] at `step` (0 = first shown frame, num_steps = the last)."""
        half = SHUTTER / 2
        s = (np.asarray(step, np.float64) + half) / (self.num_steps + 2 * half)
        return s + self.ease * (s * s * (3 - 2 * s) - s)

    def view(self, step: float) -> tuple[np.ndarray, float, float]:
        """(centre [2], side, roll) of the view at `step`."""
        u = float(self.progress(step))
        return (
            self.center + u * self.displacement,
            self.side * math.exp(u * self.log_zoom),
            self.roll + u * self.roll_change,
        )


def mip_levels(photo: UInt8[np.ndarray, "h w 3"]) -> list[np.ndarray]:
    """uint8 levels of `photo`: level l+1 averages 2x2 pixels of level l (an odd last row
    or column dropped), down to a short side of 8. Photos are shrunk to MAX_SHORT_SIDE first."""
    from PIL import Image  # Deferred: only photo sources need it.

    h, w = photo.shape[:2]
    if min(h, w) > MAX_SHORT_SIDE:
        scale = MAX_SHORT_SIDE / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    levels = [np.ascontiguousarray(photo)]
    while min(levels[-1].shape[:2]) >= 16:
        top = levels[-1].astype(np.float32)
        h2, w2 = top.shape[0] // 2, top.shape[1] // 2
        quads = top[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, 3)
        levels.append(np.rint(quads.mean(axis=(1, 3))).astype(np.uint8))
    return levels


def sample_path(
    rng: np.random.Generator, photo_size: tuple[int, int], num_steps: int
) -> CameraPath:
    """A random path over a photo of `photo_size` (h, w) whose view stays inside the
    photo at every instant of `num_steps` steps (and the exposures around them).

    The centre of a view of side S rolled by at most MAX_ROLL must keep
    k * S / 2 from every edge (k = cos + sin of MAX_ROLL). That holds at both
    ends of the path, and the side exp(u * log_zoom) lies below its chord, so it
    holds in between; a pan too long for the photo is shortened.
    """
    height, width = photo_size
    span = num_steps + SHUTTER  # steps from the first exposure's start to the last's end
    short = min(height, width)
    side = rng.uniform(*VIEW_FRACTION) * short
    log_zoom = (
        rng.uniform(-MAX_ZOOM_RATE, MAX_ZOOM_RATE) * span
        if rng.random() < ZOOM_PROBABILITY
        else 0.0
    )
    roll = rng.uniform(-START_ROLL, START_ROLL)
    roll_change = (
        rng.uniform(-MAX_ROLL_RATE, MAX_ROLL_RATE) * span
        if rng.random() < ROLL_PROBABILITY
        else 0.0
    )
    roll_change = float(np.clip(roll + roll_change, -MAX_ROLL, MAX_ROLL)) - roll
    k = math.cos(MAX_ROLL) + math.sin(MAX_ROLL)
    end_side = side * math.exp(log_zoom)
    fit = min(1.0, 0.999 * short / (k * max(side, end_side)))
    side, end_side = side * fit, end_side * fit

    speed = math.exp(rng.uniform(math.log(PAN_SPEED[0]), math.log(PAN_SPEED[1])))
    angle = rng.uniform(0.0, 2 * math.pi)
    displacement = speed * side * span * np.array([math.sin(angle), math.cos(angle)])
    # Per axis, the centre's allowed interval at each end of the path.
    low0, low1 = k * side / 2, k * end_side / 2
    high0 = np.array([height, width]) - low0
    high1 = np.array([height, width]) - low1
    # Both intervals hold the photo's centre, so a zero pan always fits.
    most = np.where(displacement > 0, high1 - low0, low1 - high0)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(displacement != 0, most / displacement, np.inf)
    displacement = displacement * min(1.0, float(room.min()))
    lo = np.maximum(low0, low1 - displacement)
    hi = np.minimum(high0, high1 - displacement)
    center = lo + rng.random(2) * np.maximum(hi - lo, 0.0)
    return CameraPath(
        center=center,
        displacement=displacement,
        side=float(side),
        log_zoom=float(log_zoom),
        roll=float(roll),
        roll_change=float(roll_change),
        ease=float(rng.uniform(0.0, MAX_EASE)),
        num_steps=int(num_steps),
    )


def _view_points(
    center: np.ndarray, side: float, roll: float, fractions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Photo coordinates (y, x), each [n, n], of the view points at `fractions` [n] of the
    side from its centre (in [-0.5, 0.5]; y down, x right in the view)."""
    offsets = fractions * side
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    cos, sin = math.cos(roll), math.sin(roll)
    return center[0] + cos * oy + sin * ox, center[1] - sin * oy + cos * ox


def _pixel_centers(resolution: int) -> np.ndarray:
    return (np.arange(resolution) + 0.5) / resolution - 0.5


def _bilinear(level: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 [..., 3]: `level` at continuous pixel coordinates (pixel j spans [j, j + 1))."""
    h, w = level.shape[:2]
    y = np.clip(y - 0.5, 0.0, h - 1.0)
    x = np.clip(x - 0.5, 0.0, w - 1.0)
    y0 = np.minimum(y.astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    x0 = np.minimum(x.astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    fy = (y - y0)[..., None].astype(np.float32)
    fx = (x - x0)[..., None].astype(np.float32)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    flat = level.reshape(-1, level.shape[-1])
    top = flat[y0 * w + x0] * (1 - fx) + flat[y0 * w + x1] * fx
    bottom = flat[y1 * w + x0] * (1 - fx) + flat[y1 * w + x1] * fx
    return top * (1 - fy) + bottom * fy


def _render_view(
    levels: list[np.ndarray], center: np.ndarray, side: float, roll: float, resolution: int
) -> np.ndarray:
    """float32 [R, R, 3] of one instant: trilinear between the two mip levels around
    side / R photo pixels per output pixel."""
    y, x = _view_points(center, side, roll, _pixel_centers(resolution))
    lod = float(np.clip(math.log2(max(side / resolution, 1.0)), 0.0, len(levels) - 1))
    low = int(lod)
    high = min(low + 1, len(levels) - 1)
    fine = _bilinear(levels[low], y / 2**low, x / 2**low)
    if high == low or lod == low:
        return fine
    coarse = _bilinear(levels[high], y / 2**high, x / 2**high)
    return fine + (lod - low) * (coarse - fine)


def subframes(path: CameraPath, step: float, resolution: int) -> int:
    """Sub-frame renders of the frame at `step`: enough that consecutive ones are at most
    one output pixel apart (1 when the view moves less than half a pixel while exposed)."""
    half = SHUTTER / 2
    corners = []
    for t in (step - half, step + half):
        center, side, roll = path.view(t)
        y, x = _view_points(center, side, roll, np.array([-0.5, 0.5]))  # the corners
        corners.append((np.stack([y.ravel(), x.ravel()]), side))
    (a, side_a), (b, side_b) = corners
    travel = float(np.abs(a - b).max()) / (min(side_a, side_b) / resolution)
    if travel <= 0.5:
        return 1
    return min(MAX_SUBFRAMES, 1 + math.ceil(travel))


def render(
    levels: list[np.ndarray],
    path: CameraPath,
    *,
    num_frames: int,
    frame_stride: int,
    resolution: int,
) -> UInt8[np.ndarray, "t r r 3"]:
    """uint8 [num_frames, resolution, resolution, 3]: frame k shows step k * frame_stride
    of `path` over `levels` (from `mip_levels`), motion-blurred over its exposure."""
    if path.num_steps != (num_frames - 1) * frame_stride:
        raise ValueError(
            f"the camera path has {path.num_steps} steps but {num_frames} frames at stride "
            f"{frame_stride} span {(num_frames - 1) * frame_stride}; draw the path with "
            "sample_path(rng, photo_size, (num_frames - 1) * frame_stride)."
        )
    video = np.empty((num_frames, resolution, resolution, 3), np.uint8)
    half = SHUTTER / 2
    for k in range(num_frames):
        step = k * frame_stride
        count = subframes(path, step, resolution)
        times = [step] if count == 1 else np.linspace(step - half, step + half, count)
        frame = sum(_render_view(levels, *path.view(t), resolution) for t in times) / count
        video[k] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return video


def motion_words(path: CameraPath) -> str:
    """What the camera does, e.g. 'pans down and to the left and zooms in'; '' if it
    barely moves."""
    words = []
    dy, dx = path.displacement
    distance = math.hypot(dy, dx)
    if distance >= _NAMED_PAN * path.side:
        directions = []
        if abs(dy) >= _DIRECTION_MIN_FRACTION * distance:
            directions.append("down" if dy > 0 else "up")
        if abs(dx) >= _DIRECTION_MIN_FRACTION * distance:
            directions.append("to the right" if dx > 0 else "to the left")
        words.append("pans " + " and ".join(directions))
    if abs(path.log_zoom) >= _NAMED_ZOOM:
        words.append("zooms in" if path.log_zoom < 0 else "zooms out")
    if abs(path.roll_change) >= _NAMED_ROLL:
        words.append("rolls")
    if len(words) > 1:
        return ", ".join(words[:-1]) + " and " + words[-1]
    return words[0] if words else ""
