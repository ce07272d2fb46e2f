"""Video convolution building blocks shared by the MAGVIT-v2 and MAGVIT 3D-VQ tokenizers.

All tensors are channels-last: ``[B, T, H, W, C]``. Parameters carry logical
axis names (``out_sharding`` metadata) and conv outputs name their activations'
logical axes (`sharding.constrain`); the sharding preset maps both to mesh axes,
and nothing here knows about the mesh.

Temporal causality (thesis Sec. 5.3.2): a causal layer's output frame ``t``
depends on input frames ``<= t`` only. A temporal stride ``s`` maps
``1 + s*t`` frames to ``1 + t`` and up-sampling maps ``1 + t`` back to
``1 + s*t``, so a single image (one frame) goes through the same network.

The MAGVIT 3D-VQ (thesis Sec. 3.2) uses the same convolutions and residual
blocks non-causally with ``padding_mode="reflect"``, average-pooling
down-sampling (`AvgPoolDownsample`) and nearest-resize + conv up-sampling
(`NearestUpsample`). A temporal kernel size of 1 everywhere makes either
network a per-frame 2D (image) model for pre-training and inflation.

Streaming (`start_stream`): a causal network can take a long video chunk by
chunk. Each causal conv then keeps the tail of its input that its next outputs
need (`StreamCarry`) and puts it before the next chunk instead of zeros, and
up-sampling layers drop no frame after the first chunk, so the outputs of the
chunks, concatenated, equal those of one pass over the whole video.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from videogen import sharding
from videogen.kernels import group_norm, onednn_conv

# Logical axis names of every parameter; `videogen.sharding` maps them to mesh axes.
CONV3D_KERNEL_AXES = ("conv_t", "conv_h", "conv_w", "channels_in", "channels_out")
CONV_BIAS_AXES = ("channels_out",)
NORM_AXES = ("channels",)
# A conv's output, split by batch and, under tensor parallelism, by output channel: each
# tensor device computes the channels of its share of the kernel (`sharding.constrain`,
# a no-op outside a sharded train step).
CONV3D_ACTIVATION_AXES = ("activation_batch", None, None, None, "activation_channels")
# A conv kernel as it is used: whole but for its tensor-parallel output channels. FSDP
# gathers a kernel's shards before the conv anyway; saying so keeps XLA's SPMD partitioner
# (jax 0.10.2) off a plan that gives wrong kernel gradients when the batch and the kernel's
# input channels are both split over fsdp (BUILD_NOTES.md, "Sharding presets").
CONV3D_KERNEL_USE_AXES = (None, None, None, None, "activation_channels")

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
PaddingMode = Literal["zeros", "reflect"]
PADDING_MODES = ("zeros", "reflect")


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode={padding_mode!r} is not supported; use one of {PADDING_MODES}."
        )


class StreamCarry(nnx.Variable):
    """The input frames a causal conv keeps from one chunk of a stream for the next.

    ``None`` until the stream's first chunk has gone through (`start_stream`).
    """


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-style 'SAME' zero padding: output has ceil(size / stride) positions."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv3d_single(
    x: Float[Array, "b t h w ci"],
    kernel: Float[Array, "kt kh kw ci co"],
    strides: tuple[int, int, int],
    padding: tuple[tuple[int, int], ...],
) -> Float[Array, "b t2 h2 w2 co"]:
    """Zero-padded 3D convolution as one XLA convolution (the accelerator path)."""
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


def _on_one_cpu() -> bool:
    """Whether the step being traced runs on CPU and is not split over devices: where this
    package's C++ kernels (`videogen.kernels`) can run, since XLA's SPMD partitioner cannot
    split a custom call."""
    return jax.default_backend() == "cpu" and not sharding.partitioned()


def use_onednn(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether a convolution of ``x`` by ``kernel`` runs on oneDNN: `_on_one_cpu`, in
    float32, and the library is available. Decided at trace time."""
    return _on_one_cpu() and x.dtype == kernel.dtype == jnp.float32 and onednn_conv.available()


def use_group_norm_kernel() -> bool:
    """Whether group norms (per frame, or per clip as one tall frame) run on the C++ kernel:
    `_on_one_cpu` and the library is available. Decided at trace time (norms compute in
    float32 whatever the model's dtype)."""
    return _on_one_cpu() and group_norm.available()


def _static(strides, padding) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Strides and padding as Python ints (custom-VJP static arguments must hash)."""
    return tuple(int(s) for s in strides), tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d_nhwc(
    x: Float[Array, "n h w ci"],
    kernel: Float[Array, "kh kw ci co"],
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> Float[Array, "n h2 w2 co"]:
    """Zero-padded 2D convolution of channels-last frames: oneDNN's where `use_onednn`,
    XLA's (`conv2d_xla`) otherwise."""
    if use_onednn(x, kernel):
        return onednn_conv.conv(x, kernel, *_static(strides, padding))
    return conv2d_xla(x, kernel, strides, padding)


def conv2d_xla(
    x: Float[Array, "n h w ci"],
    kernel: Float[Array, "kh kw ci co"],
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> Float[Array, "n h2 w2 co"]:
    """Zero-padded 2D convolution of channels-last frames, XLA's on every platform."""
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv3d_by_temporal_taps(
    x: Float[Array, "b t h w ci"],
    kernel: Float[Array, "kt kh kw ci co"],
    strides: tuple[int, int, int],
    padding: tuple[tuple[int, int], ...],
    conv2d: Callable = conv2d_xla,
) -> Float[Array, "b t2 h2 w2 co"]:
    """The same convolution as a sum over temporal taps of 2D convolutions on all frames.

    XLA:CPU runs 2D convolutions through a much faster kernel than 3D ones
    (3x3x3, 64->64 channels, 17x64x64 frames, 2 cores: 114 ms vs 334 ms forward,
    327 ms vs 615 ms forward + backward), so CPU runs without oneDNN (`use_onednn`) use
    this form. ``conv2d`` computes each tap (`conv2d_nhwc`'s signature).
    """
    (pt0, pt1), pad_h, pad_w = padding
    st, sh, sw = strides
    kt = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), (pt0, pt1), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    t_out = (t - kt) // st + 1
    out = None
    for dt in range(kt):
        frames = x[:, dt : dt + st * (t_out - 1) + 1 : st].reshape(b * t_out, h, w, c)
        y = conv2d(frames, kernel[dt], (sh, sw), (pad_h, pad_w))
        out = y if out is None else out + y
    return out.reshape(b, t_out, *out.shape[1:])


class CausalConv3d(nnx.Module):
    """3D convolution, temporally causal by default, with 'same'-size padding.

    Causal: ``k_t - 1`` zero frames before the clip and none after, so output
    frame ``j`` sees input frames ``s*j - k_t + 1 .. s*j`` (``s`` = temporal
    stride) and ``1 + s*t`` frames map to ``1 + t``. Zeros (not repeated
    frames) make a 1-frame input equal a 2D convolution with the kernel's last
    temporal slice, which image-to-video inflation relies on; causal temporal
    padding is zeros in every ``padding_mode`` (reflecting would copy future frames).
    Non-causal: ``floor((k_t-1)/2)`` frames before, ``floor(k_t/2)`` after.
    Height and width use TF 'SAME' amounts (``ceil(n / stride)`` outputs).
    ``padding_mode="zeros"`` pads with zeros; ``"reflect"`` (MAGVIT 3D-VQ,
    thesis Sec. 3.2) mirrors the border without repeating it, so a constant
    input gives a constant output, borders included.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (3, 3, 3),
        strides: Sequence[int] = (1, 1, 1),
        *,
        causal: bool = True,
        padding_mode: PaddingMode = "zeros",
        use_bias: bool = True,
        kernel_init: Initializer = nnx.initializers.lecun_normal(),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(kernel_size) != 3 or len(strides) != 3:
            raise ValueError(
                f"kernel_size={tuple(kernel_size)} and strides={tuple(strides)} must both have "
                "3 entries (t, h, w)."
            )
        _check_padding_mode(padding_mode)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = tuple(int(s) for s in strides)
        self.causal = causal
        self.padding_mode = padding_mode
        self.dtype = dtype
        shape = (*self.kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), shape, param_dtype), out_sharding=CONV3D_KERNEL_AXES
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_channels,), param_dtype), out_sharding=CONV_BIAS_AXES)
            if use_bias
            else None
        )
        # A StreamCarry while the conv streams (`start_stream`); a static None otherwise,
        # so the parameter tree, and with it every checkpoint, is unchanged.
        self.carry = None

    @property
    def continues_stream(self) -> bool:
        """Whether the next call continues a stream past its first chunk (`start_stream`)."""
        return self.carry is not None and self.carry.get_value() is not None

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """Convolve ``[b, t, h, w, ci]``; causal stride ``s`` needs ``t = 1 + s*k``
        (while streaming: any ``t`` that completes at least one output frame)."""
        _, t, h, w, _ = x.shape
        kt, kh, kw = self.kernel_size
        st, sh, sw = self.strides
        x = x.astype(self.dtype)
        if self.causal and self.carry is not None:
            x = self._after_carry(x)
            pad_t = (0, 0)
        elif self.causal:
            if (t - 1) % st:
                raise ValueError(
                    f"CausalConv3d with temporal stride {st} got {t} frames; it needs "
                    f"1 + {st}k frames so that 1 + {st}k frames map to 1 + k."
                )
            pad_t = (kt - 1, 0)
        else:
            pad_t = ((kt - 1) // 2, kt // 2)
        padding = (pad_t, same_padding(h, kh, sh), same_padding(w, kw, sw))
        if self.padding_mode == "reflect":
            pad_t_reflect = (0, 0) if self.causal else pad_t
            x = jnp.pad(x, ((0, 0), pad_t_reflect, *padding[1:], (0, 0)), mode="reflect")
            padding = (pad_t if self.causal else (0, 0), (0, 0), (0, 0))
        # Cast, then gather (half the bytes in bfloat16).
        kernel = sharding.constrain(self.kernel[...].astype(self.dtype), CONV3D_KERNEL_USE_AXES)
        if use_onednn(x, kernel):
            y = onednn_conv.conv(x, kernel, *_static(self.strides, padding))
        elif jax.default_backend() == "cpu":
            y = conv3d_by_temporal_taps(x, kernel, self.strides, padding)
        else:
            y = conv3d_single(x, kernel, self.strides, padding)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return sharding.constrain(y, CONV3D_ACTIVATION_AXES)

    def _after_carry(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h w ci"]:
        """``x`` behind the carried frames (the causal zero padding on the first chunk); keeps
        the frames from the start of the next output window on as the new carry."""
        kt, st = self.kernel_size[0], self.strides[0]
        carried = self.carry.get_value()
        if carried is None:
            carried = jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
        frames = jnp.concatenate([carried, x], axis=1)
        outputs = (frames.shape[1] - kt) // st + 1
        if outputs < 1:
            raise ValueError(
                f"a streamed CausalConv3d (temporal kernel {kt}, stride {st}) got a chunk of "
                f"{x.shape[1]} frames after {carried.shape[1]} carried ones, too few for one "
                "output frame; stream chunks of a multiple of the temporal factor."
            )
        self.carry.set_value(frames[:, st * outputs :])
        return frames


def start_stream(module: nnx.Module) -> None:
    """Makes every causal conv of ``module`` carry its temporal context from call to call.

    The first call after this is the video's first chunk (zeros before it, as
    usual); each later call continues where the previous one stopped. Stride
    ``s`` needs a temporal kernel of at least ``s`` (no frame is skipped between
    chunks). Raises if ``module`` has a non-causal conv, which would see frames of
    chunks not yet given.
    """
    for path, layer in nnx.iter_modules(module):
        if not isinstance(layer, CausalConv3d):
            continue
        where = "/".join(map(str, path)) or type(module).__name__
        if not layer.causal:
            raise ValueError(
                f"{where} is a non-causal conv: it needs future frames, so the model cannot "
                "stream a video chunk by chunk; stream a causal model (CausalVideoTokenizer)."
            )
        if layer.kernel_size[0] < layer.strides[0]:
            raise ValueError(
                f"{where} has temporal kernel {layer.kernel_size[0]} < stride "
                f"{layer.strides[0]}, so chunks cannot be joined without skipping frames; "
                "stream a model whose temporal kernels are at least their strides."
            )
        layer.carry = nnx.data(StreamCarry(None))


class GroupNorm(nnx.Module):
    """Group normalisation over channels-last video, computed in float32.

    ``per_frame=True`` takes statistics over (h, w, channels of a group) of each
    frame separately, so the norm never mixes frames: needed for a causal model
    (and so that an image normalises exactly like a video's first frame).
    ``per_frame=False`` also pools over time (the non-causal MAGVIT 3D-VQ).
    """

    def __init__(
        self,
        num_channels: int,
        *,
        num_groups: int = 32,
        per_frame: bool = True,
        use_affine: bool = True,
        epsilon: float = 1e-6,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        if num_channels % num_groups:
            raise ValueError(
                f"num_channels={num_channels} is not divisible by num_groups={num_groups}; "
                "choose num_groups dividing every layer width."
            )
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.per_frame = per_frame
        self.epsilon = epsilon
        if use_affine:
            self.scale = nnx.Param(jnp.ones((num_channels,), param_dtype), out_sharding=NORM_AXES)
            self.bias = nnx.Param(jnp.zeros((num_channels,), param_dtype), out_sharding=NORM_AXES)
        else:
            self.scale = None
            self.bias = None

    def normalize(self, x: Float[Array, "b t h w c"]) -> Float[Array, "b t h w c"]:
        """Zero-mean unit-variance per group, float32, without the affine transform."""
        b, t, h, w, c = x.shape
        x = x.astype(jnp.float32)
        if not self.per_frame:
            # Statistics over the whole clip: one "frame" of t*h rows.
            x = x.reshape(b, 1, t * h, w, c)
        if use_group_norm_kernel():
            y = group_norm.normalize(x, self.num_groups, self.epsilon)
        else:
            y = group_norm.reference_normalize(x, self.num_groups, self.epsilon)
        return y.reshape(b, t, h, w, c)

    def __call__(self, x: Float[Array, "b t h w c"]) -> Float[Array, "b t h w c"]:
        """Normalise ``[b, t, h, w, c]``; returns the input's dtype."""
        y = self.normalize(x)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class ResBlock3d(nnx.Module):
    """GroupNorm -> Swish -> conv -> GroupNorm -> Swish -> conv, plus the skip path.

    The skip path is a 1x1x1 conv when the width changes, identity otherwise.
    ``causal`` sets both causal temporal padding and per-frame norm statistics.
    The convs are ``temporal_kernel_size x 3 x 3`` (1 gives a per-frame 2D block).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_groups: int = 32,
        causal: bool = True,
        padding_mode: PaddingMode = "zeros",
        temporal_kernel_size: int = 3,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        conv = dict(
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        norm = dict(num_groups=num_groups, per_frame=causal, param_dtype=param_dtype)
        kernel = (temporal_kernel_size, 3, 3)
        self.norm1 = GroupNorm(in_channels, **norm)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel, **conv)
        self.norm2 = GroupNorm(out_channels, **norm)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel, **conv)
        self.skip = (
            CausalConv3d(in_channels, out_channels, kernel_size=(1, 1, 1), **conv)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t h w co"]:
        """Residual block on ``[b, t, h, w, ci]``."""
        y = self.conv1(jax.nn.silu(self.norm1(x)))
        y = self.conv2(jax.nn.silu(self.norm2(y)))
        skip = x if self.skip is None else self.skip(x)
        return skip.astype(y.dtype) + y


def _call_block(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


def apply_blocks(
    blocks: Sequence[nnx.Module], x: Float[Array, "b t h w c"], *, remat: bool = False
) -> Float[Array, "b t h w c2"]:
    """Apply blocks in order; ``remat`` recomputes each block's activations in the backward pass."""
    # Tree mode: blocks hold no mutable state, and it also works on modules
    # captured from an outer trace (graph mode would try to write back to them).
    call = nnx.remat(_call_block, graph=False) if remat else _call_block
    for block in blocks:
        x = call(block, x)
    return x


def resize_nearest(
    x: Float[Array, "b t h w c"], size: tuple[int, int, int], *, causal: bool = True
) -> Float[Array, "b t2 h2 w2 c"]:
    """Nearest up-sampling of ``[b, t, h, w, c]`` to ``size = (t2, h2, w2)`` by integer factors.

    Causal: ``1 + t`` frames go to ``1 + s*t`` by repeating each frame ``s``
    times and dropping the first ``s - 1`` copies, so output frame ``j`` comes
    from input frame ``ceil(j / s)`` (the one the causal encoder produced from
    frames up to ``s * ceil(j / s)``). Non-causal: plain ``t -> s*t`` repeat.
    """
    _, t, h, w, _ = x.shape
    t2, h2, w2 = size
    if h2 % h or w2 % w:
        raise ValueError(f"cannot resize {h}x{w} to {h2}x{w2}: factors must be integers.")
    if causal:
        if t == 1 or (t2 - 1) % (t - 1):
            if t2 != t:
                raise ValueError(
                    f"cannot causally resize {t} frames to {t2}: needs 1 + t -> 1 + s*t "
                    "with an integer s."
                )
            st = 1
        else:
            st = (t2 - 1) // (t - 1)
    else:
        if t2 % t:
            raise ValueError(f"cannot resize {t} frames to {t2}: the factor must be an integer.")
        st = t2 // t
    y = jnp.repeat(x, st, axis=1)
    if causal:
        y = y[:, st - 1 :]
    return jnp.repeat(jnp.repeat(y, h2 // h, axis=2), w2 // w, axis=3)


class AdaptiveGroupNorm(nnx.Module):
    """GroupNorm (no own affine) modulated by a conditioning tensor (StyleGAN-style).

    ``y = norm(x) * (1 + scale(cond)) + bias(cond)`` with per-location, per-channel
    ``scale``/``bias`` from 1x1x1 projections of ``cond`` (the quantized latents),
    resized to x's (t, h, w) by `resize_nearest`. The projections start at zero so
    the layer starts as a plain normalisation.
    """

    def __init__(
        self,
        num_channels: int,
        cond_channels: int,
        *,
        num_groups: int = 32,
        causal: bool = True,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.causal = causal
        self.norm = GroupNorm(
            num_channels,
            num_groups=num_groups,
            per_frame=causal,
            use_affine=False,
            param_dtype=param_dtype,
        )
        proj = dict(
            kernel_size=(1, 1, 1),
            causal=causal,
            kernel_init=nnx.initializers.zeros_init(),
            # The modulation is applied in float32 with the norm.
            dtype=jnp.float32,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.scale = CausalConv3d(cond_channels, num_channels, **proj)
        self.bias = CausalConv3d(cond_channels, num_channels, **proj)

    def __call__(
        self, x: Float[Array, "b t h w c"], cond: Float[Array, "b tc hc wc k"]
    ) -> Float[Array, "b t h w c"]:
        """Normalise ``x`` and modulate it with ``cond`` (any integer down-scaling of x)."""
        size = x.shape[1:4]
        # A continuing stream's chunk has no first frame: each cond frame covers a full block.
        causal = self.causal and not self.scale.continues_stream
        # Projecting before resizing is exact for a pointwise map and much cheaper.
        scale = resize_nearest(self.scale(cond), size, causal=causal)
        bias = resize_nearest(self.bias(cond), size, causal=causal)
        y = self.norm.normalize(x) * (1.0 + scale) + bias
        return y.astype(x.dtype)


class Downsample(nnx.Module):
    """Strided-conv down-sampling: spatial x2; temporal x2 (``1+2t -> 1+t``) if ``temporal``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal: bool,
        kernel_size: Sequence[int] = (3, 3, 3),
        causal: bool = True,
        padding_mode: PaddingMode = "zeros",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = CausalConv3d(
            in_channels,
            out_channels,
            kernel_size,
            strides=(2 if temporal else 1, 2, 2),
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """``[b, t, h, w, ci] -> [b, t2, h/2, w/2, co]``."""
        return self.conv(x)


class DepthToSpaceUpsample(nnx.Module):
    """Conv to ``out * st * s * s`` channels, then depth-to-space into time and space.

    Causal temporal up-sampling by ``st`` drops the first ``st - 1`` frames,
    mapping ``1 + t`` frames to ``1 + st*t`` (thesis Sec. 5.3.2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal_factor: int = 2,
        spatial_factor: int = 2,
        kernel_size: Sequence[int] = (3, 3, 3),
        causal: bool = True,
        padding_mode: PaddingMode = "zeros",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.out_channels = out_channels
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor
        self.causal = causal
        self.conv = CausalConv3d(
            in_channels,
            out_channels * temporal_factor * spatial_factor**2,
            kernel_size,
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def subframe_channels(self, index: int) -> slice:
        """The conv's output channels that become temporal sub-frame ``index`` of every
        input frame: they are laid out ``[st, s, s, c]``, sub-frame first."""
        block = self.spatial_factor**2 * self.out_channels
        return slice(index * block, (index + 1) * block)

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """``[b, t, h, w, ci] -> [b, 1 + st*(t-1) (causal) or st*t, s*h, s*w, co]``; a
        continuing stream's chunk has no first frame, so it gets ``st*t`` frames."""
        drop_first = self.causal and not self.conv.continues_stream
        y = self.conv(x)
        b, t, h, w, _ = y.shape
        st, s, c = self.temporal_factor, self.spatial_factor, self.out_channels
        y = y.reshape(b, t, h, w, st, s, s, c)
        y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * st, h * s, w * s, c)
        if drop_first:
            y = y[:, st - 1 :]
        return y


class AvgPoolDownsample(nnx.Module):
    """Average pooling by 2 in height and width, and in time if ``temporal`` (MAGVIT 3D-VQ).

    Non-causal and parameter-free: ``[b, t, h, w, c] -> [b, t/2 or t, h/2, w/2, c]``;
    every pooled size must be even.
    """

    def __init__(self, *, temporal: bool):
        self.window = (2 if temporal else 1, 2, 2)

    def __call__(self, x: Float[Array, "b t h w c"]) -> Float[Array, "b t2 h2 w2 c"]:
        b, t, h, w, c = x.shape
        st, sh, sw = self.window
        if t % st or h % sh or w % sw:
            raise ValueError(
                f"AvgPoolDownsample{self.window} cannot pool a {t}x{h}x{w} input: each size "
                "must be divisible by its window; use frame counts and sizes divisible by the "
                "tokenizer's temporal and spatial factors."
            )
        x = x.reshape(b, t // st, st, h // sh, sh, w // sw, sw, c)
        return jnp.mean(x, axis=(2, 4, 6))


class NearestUpsample(nnx.Module):
    """Nearest resize by ``temporal_factor`` x ``spatial_factor``^2, then a conv (MAGVIT 3D-VQ).

    Time maps ``t -> st*t`` (non-causal) or ``1 + t -> 1 + st*t`` (causal), as
    in `resize_nearest`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal_factor: int = 2,
        spatial_factor: int = 2,
        kernel_size: Sequence[int] = (3, 3, 3),
        causal: bool = True,
        padding_mode: PaddingMode = "zeros",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor
        self.causal = causal
        self.conv = CausalConv3d(
            in_channels,
            out_channels,
            kernel_size,
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """``[b, t, h, w, ci] -> [b, st*t (or 1 + st*(t-1) causal), s*h, s*w, co]``; a
        continuing stream's chunk has no first frame, so it gets ``st*t`` frames."""
        _, t, h, w, _ = x.shape
        st, s = self.temporal_factor, self.spatial_factor
        causal = self.causal and not self.conv.continues_stream
        frames = 1 + st * (t - 1) if causal else st * t
        return self.conv(resize_nearest(x, (frames, s * h, s * w), causal=causal))
