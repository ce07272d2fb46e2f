"""A small CNN that reads the digit in moving-digits clips, to score class-conditional samples.

The classifier is trained once on the moving_digits *eval* split (digit images
the generator never trained on) and cached in `<workdir>/digit_classifier/`.
It classifies every frame and averages the per-frame log-probabilities over
time, so it takes clips of any length. Frames are resized to a 32x32 canvas
first (the digit then spans ~24 pixels at every data resolution), and the
convolutions end in a global max pool, so the digit is found wherever it is.

Of the eval split's 360 digit images, a fixed fifth of each class (73 images,
`heldout_image_ids`) is never trained on; the reported accuracy is on clips of
those images only. The default 300 steps take 25-50 s on 2 CPU cores shared with
other jobs and reach ~96% held-out clip accuracy at 32x32 and 64x64.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Any

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, UInt8
import numpy as np
import optax

from videogen.data import moving_digits
from videogen.evaluation.weight_files import sha256_of

NUM_CLASSES = 10
# Bump when the architecture, preprocessing or training recipe changes, so cached
# classifiers of an older version are retrained instead of silently reused.
VERSION = 2  # 2: digits span 3/4 of the frame (were 3/8)
CANVAS = 32
HELDOUT_FRACTION = 0.2
# Fixed, so the held-out images are the same for every training seed.
_HELDOUT_SEED = 10
_CLIPS_PER_STEP = 32
_FRAMES_PER_CLIP = 2
_HELDOUT_CLIPS = 512
_LEARNING_RATE = 8e-3
DEFAULT_STEPS = 300


class DigitClassifier(nnx.Module):
    """Per-frame digit logits: [N, CANVAS, CANVAS, 1] grey in [0, 1] -> [N, 10]."""

    def __init__(self, *, width: int = 16, rngs: nnx.Rngs):
        conv = functools.partial(nnx.Conv, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.conv1 = conv(1, width)
        self.conv2 = conv(width, 2 * width)
        self.conv3 = conv(2 * width, 2 * width)
        self.conv4 = conv(2 * width, 4 * width)
        self.head = nnx.Linear(4 * width, NUM_CLASSES, rngs=rngs)

    def __call__(self, frames: Float[Array, "n h w 1"]) -> Float[Array, "n 10"]:
        # Receptive field 22 canvas pixels at conv4: most of a 24-pixel digit; the max
        # pool over positions then combines its parts.
        x = nnx.max_pool(jax.nn.relu(self.conv1(frames)), (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.conv3(jax.nn.relu(self.conv2(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.head(jnp.max(jax.nn.relu(self.conv4(x)), axis=(1, 2)))


def frames_from_videos(videos: UInt8[Array, "b T H W 3"]) -> Float[Array, "n 32 32 1"]:
    """All N = B * T frames as grey in [0, 1] on the CANVAS x CANVAS classifier canvas."""
    b, t, h, w, _ = videos.shape
    grey = jnp.mean(videos.astype(jnp.float32), axis=-1, keepdims=True) / 255.0
    grey = grey.reshape(b * t, h, w, 1)
    if (h, w) != (CANVAS, CANVAS):
        grey = jax.image.resize(grey, (b * t, CANVAS, CANVAS, 1), "linear", antialias=True)
    return grey


@jax.jit
def _clip_log_probs(
    graphdef: nnx.GraphDef, params: nnx.State, videos: UInt8[Array, "b T H W 3"]
) -> Float[Array, "b 10"]:
    b, t = videos.shape[:2]
    logits = nnx.merge(graphdef, params)(frames_from_videos(videos))
    return jnp.mean(jax.nn.log_softmax(logits).reshape(b, t, NUM_CLASSES), axis=1)


def _check_videos(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(
            f"digit classifier: videos must be uint8 [B, T, H, W, 3], got {videos.dtype} "
            f"{videos.shape}; convert [-1, 1] floats with video_grid.to_uint8."
        )
    return videos


def log_probs(
    model: DigitClassifier, videos: UInt8[np.ndarray, "b T H W 3"], *, batch_size: int = 64
) -> Float[np.ndarray, "b 10"]:
    """Clip log-probabilities: per-frame log-softmax averaged over the T frames.

    Frames of any size are resized to CANVAS x CANVAS; the classifier expects the
    moving-digits geometry (digit side `moving_digits.DIGIT_FRACTION` of the frame).
    """
    videos = _check_videos(videos)
    if len(videos) == 0:
        return np.zeros((0, NUM_CLASSES), np.float32)
    graphdef, params = nnx.split(model)
    size = min(batch_size, len(videos))
    out = []
    for start in range(0, len(videos), size):
        chunk = videos[start : start + size]
        # Padding the last chunk keeps one compiled shape per (size, T, H, W).
        padded = np.pad(chunk, ((0, size - len(chunk)),) + ((0, 0),) * 4)
        out.append(np.asarray(_clip_log_probs(graphdef, params, padded))[: len(chunk)])
    return np.concatenate(out)


def predict(
    model: DigitClassifier, videos: UInt8[np.ndarray, "b T H W 3"], *, batch_size: int = 64
) -> Int[np.ndarray, "b"]:
    """The most likely digit of each clip."""
    return np.argmax(log_probs(model, videos, batch_size=batch_size), axis=-1).astype(np.int32)


def class_accuracy(
    model: DigitClassifier,
    videos: UInt8[np.ndarray, "b T H W 3"],
    labels: Int[np.ndarray, "b"],
    *,
    batch_size: int = 64,
) -> float:
    """Fraction of clips whose predicted digit is `labels` (the class they were generated for)."""
    labels = np.asarray(labels)
    if labels.shape != (len(videos),):
        raise ValueError(
            f"class_accuracy: labels must have shape [B={len(videos)}], got {labels.shape}."
        )
    if len(labels) == 0:
        raise ValueError("class_accuracy: got no videos; accuracy of nothing is undefined.")
    return float(np.mean(predict(model, videos, batch_size=batch_size) == labels))


def heldout_image_ids() -> Int[np.ndarray, "n"]:
    """Sorted ids of the eval-split digit images never trained on: HELDOUT_FRACTION of each class."""
    eval_ids = moving_digits.split_image_ids("eval")
    labels = moving_digits.digit_images()[1][eval_ids]
    rng = np.random.default_rng(_HELDOUT_SEED)
    held = []
    for digit in range(NUM_CLASSES):
        ids = rng.permutation(eval_ids[labels == digit])
        held.append(ids[: round(HELDOUT_FRACTION * len(ids))])
    return np.sort(np.concatenate(held))


def _clips(
    image_ids: np.ndarray, *, resolution: int, num_frames: int, indices: range, seed: int
) -> tuple[UInt8[np.ndarray, "b T H W 3"], Int[np.ndarray, "b"]]:
    source = moving_digits.MovingDigits(
        "eval", num_examples=indices.stop, num_frames=num_frames, resolution=resolution, seed=seed
    )
    # Every clip draws its digit from `image_ids`; narrowing them to a subset of the
    # eval images keeps fitted and held-out images apart.
    source.image_ids = np.asarray(image_ids)
    examples = [source[i] for i in indices]
    return (
        np.stack([e["video"] for e in examples]),
        np.array([e["label"] for e in examples], np.int32),
    )


def heldout_clips(
    resolution: int, num_frames: int, *, num_examples: int, seed: int = 1
) -> tuple[UInt8[np.ndarray, "b T H W 3"], Int[np.ndarray, "b"]]:
    """(videos, labels): moving-digits eval-split clips of the held-out digit images only."""
    return _clips(
        heldout_image_ids(),
        resolution=resolution,
        num_frames=num_frames,
        indices=range(num_examples),
        seed=seed,
    )


def _augment(frames: jax.Array, rng: jax.Array) -> jax.Array:
    # Samples are rarely pure white-on-black: dimmer strokes and pixel noise keep
    # the classifier from keying on exact intensities.
    gain_rng, sigma_rng, noise_rng = jax.random.split(rng, 3)
    n = frames.shape[0]
    gain = jax.random.uniform(gain_rng, (n, 1, 1, 1), minval=0.6, maxval=1.0)
    sigma = jax.random.uniform(sigma_rng, (n, 1, 1, 1), maxval=0.08)
    noise = sigma * jax.random.normal(noise_rng, frames.shape)
    return jnp.clip(frames * gain + noise, 0.0, 1.0)


def train_classifier(
    resolution: int, num_frames: int, *, steps: int = DEFAULT_STEPS, seed: int = 0
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Trains on eval-split clips of all but `heldout_image_ids()`; returns (model, metrics).

    Every step draws _CLIPS_PER_STEP fresh clips (new digit draws, positions and
    motions) of min(num_frames, _FRAMES_PER_CLIP) frames: the classifier is
    per-frame, and short clips give more distinct digits per frame trained on.
    metrics: heldout_accuracy (clip level, _HELDOUT_CLIPS clips of num_frames of
    the held-out images, seed + 1), heldout_frame_accuracy, train_loss (mean of
    the last 50 steps), train_seconds (data + training, no evaluation) and data sizes.
    """
    if steps < 1:
        raise ValueError(f"train_classifier: steps must be >= 1, got {steps}.")
    start_time = time.perf_counter()
    heldout_ids = heldout_image_ids()
    fit_ids = np.setdiff1d(moving_digits.split_image_ids("eval"), heldout_ids)
    model = DigitClassifier(rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adam(
        optax.warmup_cosine_decay_schedule(0.0, _LEARNING_RATE, min(20, steps // 4), steps)
    )
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, videos, labels, rng):
        frames = _augment(frames_from_videos(videos), rng)
        frame_labels = jnp.repeat(labels, videos.shape[1])

        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(frames)
            return optax.softmax_cross_entropy_with_integer_labels(logits, frame_labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    step_rngs = jax.random.split(jax.random.key(seed), steps)
    losses = []
    for step in range(steps):
        videos, labels = _clips(
            fit_ids,
            resolution=resolution,
            num_frames=min(num_frames, _FRAMES_PER_CLIP),
            indices=range(step * _CLIPS_PER_STEP, (step + 1) * _CLIPS_PER_STEP),
            seed=seed,
        )
        # Not waiting for the step lets the next batch be drawn while this one trains.
        params, opt_state, metrics = train_step(params, opt_state, videos, labels, step_rngs[step])
        losses.append(metrics["loss"])
        if (step + 1) % 50 == 0 or step + 1 == steps:
            loss = float(losses[-1])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"digit classifier: loss is {loss} at step {step + 1}; lower _LEARNING_RATE."
                )
            logging.info("digit classifier: step %d/%d, loss %.4f", step + 1, steps, loss)
    model = nnx.merge(graphdef, params)
    train_loss = float(np.mean([float(x) for x in losses[-50:]]))
    train_seconds = time.perf_counter() - start_time

    videos, labels = heldout_clips(
        resolution, num_frames, num_examples=_HELDOUT_CLIPS, seed=seed + 1
    )
    frame_predictions = predict(model, videos.reshape(-1, 1, *videos.shape[2:]))
    metrics = {
        "heldout_accuracy": class_accuracy(model, videos, labels),
        "heldout_frame_accuracy": float(
            np.mean(frame_predictions == np.repeat(labels, num_frames))
        ),
        "train_loss": train_loss,
        "train_seconds": train_seconds,
        "steps": steps,
        "num_fit_images": len(fit_ids),
        "num_heldout_images": len(heldout_ids),
        "heldout_clips": _HELDOUT_CLIPS,
    }
    logging.info("digit classifier: %s", metrics)
    return model, metrics


def classifier_paths(
    workdir: str | os.PathLike, resolution: int
) -> tuple[pathlib.Path, pathlib.Path]:
    """(parameters .npz, metadata .json) of the classifier for `resolution` in a workdir."""
    directory = pathlib.Path(workdir) / "digit_classifier"
    stem = f"digit_classifier_{resolution}px"
    return directory / f"{stem}.npz", directory / f"{stem}.json"


def _write_atomically(path: pathlib.Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        try:
            write(f)
        except BaseException:
            os.unlink(f.name)  # a full disk must not leave partial files behind
            raise
    os.replace(f.name, path)


def save(
    model: DigitClassifier,
    metrics: dict[str, Any],
    workdir: str | os.PathLike,
    *,
    resolution: int,
    num_frames: int,
    seed: int,
) -> pathlib.Path:
    """Writes the params (.npz of the pure dict) and their metadata (.json); returns the .npz path."""
    params_path, meta_path = classifier_paths(workdir, resolution)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(pure, sep="/").items()}
    _write_atomically(params_path, lambda f: np.savez(f, **flat))
    meta = {
        "version": VERSION,
        "resolution": resolution,
        "num_frames": num_frames,
        "seed": seed,
        "params_sha256": sha256_of(params_path),
        **metrics,
    }
    # The JSON is written last: a params file without matching JSON is never used.
    _write_atomically(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return params_path


def load(workdir: str | os.PathLike, resolution: int) -> tuple[DigitClassifier, dict[str, Any]]:
    """(model, metadata) saved by `save`; ValueError / OSError if missing, corrupt or mismatched."""
    params_path, meta_path = classifier_paths(workdir, resolution)
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} holds {type(meta).__name__}, expected a JSON object")
    if meta.get("version") != VERSION or meta.get("resolution") != resolution:
        raise ValueError(
            f"{meta_path} is for version {meta.get('version')} at {meta.get('resolution')} px, "
            f"expected version {VERSION} at {resolution} px"
        )
    digest = sha256_of(params_path)
    if digest != meta.get("params_sha256"):
        raise ValueError(
            f"{params_path} has SHA-256 {digest}, its metadata says {meta.get('params_sha256')}"
        )
    with np.load(params_path) as f:
        flat = {k: f[k] for k in f.files}
    model = nnx.eval_shape(lambda: DigitClassifier(rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    expected = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")
    if flat.keys() != expected.keys():
        raise ValueError(
            f"{params_path} holds {sorted(flat)}, expected the variables {sorted(expected)}"
        )
    for key, abstract in expected.items():
        if flat[key].shape != abstract.shape:
            raise ValueError(
                f"{params_path}: {key} has shape {flat[key].shape}, expected {abstract.shape}"
            )
    nnx.replace_by_pure_dict(
        state, traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    )
    nnx.update(model, state)
    return model, meta


def load_or_train(
    workdir: str | os.PathLike,
    resolution: int,
    num_frames: int,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> DigitClassifier:
    """The classifier cached in `<workdir>/digit_classifier/`, trained and saved if absent.

    One file pair per resolution. The classifier is per-frame, so a cached one is
    reused for any `num_frames`; `steps` and `seed` only apply when it is trained.
    A corrupt or truncated file, or one of another VERSION or resolution, is
    retrained and replaced, with a warning.
    """
    params_path, meta_path = classifier_paths(workdir, resolution)
    if meta_path.exists() or params_path.exists():
        try:
            model, meta = load(workdir, resolution)
        except (OSError, ValueError, KeyError) as e:
            logging.warning("digit classifier: not using %s because %s; retraining.", meta_path, e)
        else:
            logging.info(
                "digit classifier: reusing %s (held-out accuracy %.4f)",
                params_path,
                meta.get("heldout_accuracy", float("nan")),
            )
            return model
    model, metrics = train_classifier(resolution, num_frames, steps=steps, seed=seed)
    save(model, metrics, workdir, resolution=resolution, num_frames=num_frames, seed=seed)
    return model
