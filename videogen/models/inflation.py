"""Image-to-video inflation: initialise a video tokenizer from an image tokenizer's parameters.

An image model is the same tokenizer class built with ``temporal_kernel_size=1``
(see `videogen.models.tokenizer`), so every conv kernel is ``[1, kh, kw, ci, co]``
where the video model's is ``[kt, kh, kw, ci, co]``. Inflation puts the 2D kernel
into one temporal slice of a zero kernel and copies every other parameter:

* ``"central"`` (MAGVIT 3D-VQ, thesis Sec. 3.2): slice ``(kt - 1) // 2``, the tap
  that a non-causal conv applies to the output's own frame (the centre for odd kt).
  Every inflated conv is then the 2D conv applied frame by frame, so on a static
  (repeated-frame) clip the 3D-VQ reproduces the image model on each frame;
  on a moving clip frames still interact through the clip-wide GroupNorm
  statistics and temporal pooling / up-sampling.
* ``"last"`` (MAGVIT-v2, Sec. 5.4.2): slice ``kt - 1``, the tap a causal conv
  applies to the output's own frame. With causal zero padding the first frame
  then goes through exactly the image model, so the inflated tokenizer encodes,
  tokenizes and decodes a clip's first frame as the image model does that frame alone.

The image model never trains every up-sampler kernel: a causal depth-to-space
up-sampler with temporal factor ``st`` maps ``1 + t`` frames to ``1 + st*t`` and drops
the first ``st - 1`` sub-frames of its first frame, so on one frame only the last
sub-frame's output channels are used. `fill_untrained_subframes` copies them to the
other sub-frames after inflation; without it, 6 of a 9-frame clip's 8 later frames
would decode through kernels still at their random initialisation.

Parameters are pure nested dicts, e.g. ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``;
apply the result with ``nnx.replace_by_pure_dict(state, params); nnx.update(model, state)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen.models.layers import DepthToSpaceUpsample

INFLATION_MODES = ("last", "central")


def _path_name(path: tuple) -> str:
    return "/".join(str(key) for key in path)


def _inflate_leaf(path: tuple, image: Any, template: Any, mode: str) -> jnp.ndarray:
    image_shape, video_shape = tuple(image.shape), tuple(template.shape)
    if image_shape == video_shape:
        return jnp.asarray(image, dtype=template.dtype)
    is_kernel = len(video_shape) == 5 and image_shape[0] == 1 and image_shape[1:] == video_shape[1:]
    if not is_kernel:
        raise ValueError(
            f"parameter {_path_name(path)} has shape {image_shape} in the image params but "
            f"{video_shape} in the video model; only a conv kernel's temporal (first) axis may "
            "differ, from 1. Build the image model with the video model's arguments and "
            "temporal_kernel_size=1."
        )
    kt = video_shape[0]
    slot = kt - 1 if mode == "last" else (kt - 1) // 2
    kernel = np.zeros(video_shape, dtype=template.dtype)
    kernel[slot] = np.asarray(image[0], dtype=template.dtype)
    return jnp.asarray(kernel)


def _inflate_tree(path: tuple, image: Any, template: Any, mode: str) -> Any:
    if not isinstance(template, Mapping):
        if isinstance(image, Mapping):
            raise ValueError(
                f"parameter {_path_name(path)} is a sub-tree in the image params but an array "
                "in the video model; the two models' architectures differ."
            )
        return _inflate_leaf(path, image, template, mode)
    if not isinstance(image, Mapping):
        raise ValueError(
            f"parameter {_path_name(path)} is an array in the image params but a sub-tree in "
            "the video model; the two models' architectures differ."
        )
    missing = [_path_name((*path, k)) for k in template if k not in image]
    extra = [_path_name((*path, k)) for k in image if k not in template]
    if missing or extra:
        raise ValueError(
            f"image and video parameter trees differ: missing from the image params "
            f"{missing}, not in the video model {extra}. Build the image model with the "
            "video model's arguments and temporal_kernel_size=1."
        )
    return {k: _inflate_tree((*path, k), image[k], template[k], mode) for k in template}


def inflate_params(
    image_params: Mapping[Any, Any],
    video_params_template: Mapping[Any, Any],
    mode: Literal["last", "central"],
) -> dict[Any, Any]:
    """Video-model parameters from an image model's (pure nested dicts of arrays).

    ``video_params_template`` gives the structure, shapes and dtypes (arrays or
    ``jax.ShapeDtypeStruct``, e.g. from ``nnx.eval_shape``); its values are not used.
    Conv kernels ``[1, kh, kw, ci, co]`` become ``[kt, kh, kw, ci, co]`` with the
    2D kernel in slice ``kt - 1`` (``"last"``, causal) or ``(kt - 1) // 2``
    (``"central"``, non-causal) and zeros elsewhere; everything else is copied.
    Raises ValueError naming the parameter path on any other mismatch.
    """
    if mode not in INFLATION_MODES:
        raise ValueError(
            f"inflation mode={mode!r} is not supported; use 'last' for the causal "
            "MAGVIT-v2 tokenizer or 'central' for the non-causal MAGVIT 3D-VQ."
        )
    return _inflate_tree((), image_params, video_params_template, mode)


def fill_untrained_subframes(params: dict[Any, Any], model: nnx.Module) -> dict[Any, Any]:
    """``params`` (pure dict of ``model``'s) with every causal depth-to-space up-sampler's
    last temporal sub-frame copied to its other sub-frames.

    An image model trains only sub-frame ``st - 1`` (`DepthToSpaceUpsample.subframe_channels`). After the copy each latent frame
    decodes to ``st`` equal frames (a temporal nearest neighbour), so an inflated
    tokenizer reproduces its image model on every frame of a static clip.
    """
    out = dict(params)
    for path, module in nnx.iter_graph(model):
        if not (isinstance(module, DepthToSpaceUpsample) and module.causal):
            continue
        st = module.temporal_factor
        if st == 1:
            continue
        node = out
        for key in path[:-1]:  # copy the dicts on the way so `params` is left unchanged
            node[key] = dict(node[key])
            node = node[key]
        conv = node[path[-1]] = dict(node[path[-1]])
        conv["conv"] = dict(conv["conv"])
        trained = module.subframe_channels(st - 1)
        for name in ("kernel", "bias"):
            if name in conv["conv"]:
                last = jnp.asarray(conv["conv"][name])[..., trained]
                conv["conv"][name] = jnp.concatenate([last] * st, axis=-1)
    return out
