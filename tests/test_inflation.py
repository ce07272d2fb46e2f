"""Image-to-video inflation: kernel placement ("last" / "central"), copies, errors naming the
parameter; an inflated causal tokenizer encodes, tokenizes and decodes a clip's first frame
exactly as its image model does the frame alone, and (its up-samplers' untrained sub-frames
filled) every frame of a static clip; an inflated 3D-VQ reproduces its image model on every
frame of a static clip."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models.inflation import fill_untrained_subframes, inflate_params
from videogen.models.layers import CausalConv3d
from videogen.models.tokenizer import CausalVideoTokenizer, VQVideoTokenizer

CAUSAL = dict(
    base_channels=4,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    temporal_downsample=(True,),
    num_bits=4,
    num_groups=2,
)
VQ = dict(
    base_channels=4,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    codebook_size=8,
    embedding_dim=4,
    num_groups=2,
)


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _normal(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _video(seed: int, frames: int, size: int = 8) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (1, frames, size, size, 3)), jnp.float32)


# --- inflate_params on plain dicts -----------------------------------------------------------


def _image_and_template():
    image = {
        "conv": {"kernel": _normal((1, 3, 3, 2, 4), 0), "bias": _normal((4,), 1)},
        "even": {"kernel": _normal((1, 3, 3, 2, 2), 2)},
        "pointwise": {0: {"kernel": _normal((1, 1, 1, 2, 2), 3)}},
        "codebook": _normal((8, 4), 4),
    }
    template = {
        "conv": {
            "kernel": jax.ShapeDtypeStruct((3, 3, 3, 2, 4), jnp.float32),
            "bias": jax.ShapeDtypeStruct((4,), jnp.float32),
        },
        "even": {"kernel": jax.ShapeDtypeStruct((4, 3, 3, 2, 2), jnp.float32)},
        "pointwise": {0: {"kernel": jax.ShapeDtypeStruct((1, 1, 1, 2, 2), jnp.float32)}},
        "codebook": jax.ShapeDtypeStruct((8, 4), jnp.float32),
    }
    return image, template


@pytest.mark.parametrize(("mode", "slot3", "slot4"), [("last", 2, 3), ("central", 1, 1)])
def test_inflation_puts_the_2d_kernel_in_one_temporal_slice(mode, slot3, slot4):
    image, template = _image_and_template()
    video = inflate_params(image, template, mode)
    assert jax.tree.structure(video) == jax.tree.structure(image)
    for name, slot in (("conv", slot3), ("even", slot4)):
        kernel = np.asarray(video[name]["kernel"])
        assert kernel.shape == template[name]["kernel"].shape
        np.testing.assert_array_equal(kernel[slot], image[name]["kernel"][0])
        others = np.delete(kernel, slot, axis=0)
        np.testing.assert_array_equal(others, 0.0)
    # Everything else, 1x1x1 kernels included, is copied.
    np.testing.assert_array_equal(video["conv"]["bias"], image["conv"]["bias"])
    np.testing.assert_array_equal(video["pointwise"][0]["kernel"], image["pointwise"][0]["kernel"])
    np.testing.assert_array_equal(video["codebook"], image["codebook"])


def test_inflation_errors_name_the_parameter():
    image, template = _image_and_template()
    wrong_width = {**image, "conv": {**image["conv"], "kernel": _normal((1, 3, 3, 2, 5), 5)}}
    with pytest.raises(ValueError, match="conv/kernel has shape \\(1, 3, 3, 2, 5\\)"):
        inflate_params(wrong_width, template, "last")
    not_2d = {**image, "conv": {**image["conv"], "kernel": _normal((2, 3, 3, 2, 4), 6)}}
    with pytest.raises(ValueError, match="conv/kernel"):
        inflate_params(not_2d, template, "central")
    wrong_codebook = {**image, "codebook": _normal((16, 4), 7)}
    with pytest.raises(ValueError, match="codebook has shape \\(16, 4\\)"):
        inflate_params(wrong_codebook, template, "last")
    missing = {**image, "pointwise": {}}
    with pytest.raises(ValueError, match="pointwise/0"):
        inflate_params(missing, template, "last")
    with pytest.raises(ValueError, match="mode='middle'"):
        inflate_params(image, template, "middle")


@pytest.mark.parametrize(("causal", "mode"), [(True, "last"), (False, "central")])
def test_inflated_conv_is_the_2d_conv_on_every_frame(causal, mode):
    # Holds for any clip, moving or not: the only non-zero tap reads the output's own frame.
    padding_mode = "zeros" if causal else "reflect"
    conv2d = CausalConv3d(3, 4, (1, 3, 3), causal=causal, padding_mode=padding_mode, rngs=_rngs())
    conv3d = CausalConv3d(3, 4, (3, 3, 3), causal=causal, padding_mode=padding_mode, rngs=_rngs(1))
    conv2d.bias[...] = jnp.arange(4.0)
    params = inflate_params(
        nnx.to_pure_dict(nnx.state(conv2d)), nnx.to_pure_dict(nnx.state(conv3d)), mode
    )
    state = nnx.state(conv3d)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(conv3d, state)
    x = jnp.asarray(_normal((1, 5, 6, 6, 3), 8))
    np.testing.assert_allclose(conv3d(x), conv2d(x), atol=1e-5)


# --- whole tokenizers --------------------------------------------------------------------------


def _inflated_pair(cls, image_kwargs, video_kwargs, mode):
    """Random image model, the inflated video model, and one jitted runner per model."""
    image = nnx.jit(lambda: cls(**image_kwargs, rngs=_rngs()))()
    # Zero-initialised parameters (adaptive-norm projections) would hide misplaced kernels.
    zeros = [v for _, v in nnx.iter_graph(image) if isinstance(v, nnx.Param) and not v[...].any()]
    for seed, var in enumerate(zeros):
        var[...] = 0.3 * jnp.asarray(_normal(var.shape, 100 + seed))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(**video_kwargs, rngs=_rngs())))
    image_params = nnx.to_pure_dict(nnx.state(image))

    abstract_model = nnx.merge(graphdef, abstract)

    def video_state(mode, fill=True):
        state = jax.tree.map(lambda x: x, abstract)
        params = inflate_params(image_params, nnx.to_pure_dict(abstract), mode)
        if fill:
            params = fill_untrained_subframes(params, abstract_model)
        nnx.replace_by_pure_dict(state, params)
        return state

    def runner(graphdef):
        @jax.jit
        def run(state, video):
            model = nnx.merge(graphdef, state)
            z = model.encode(video)
            z_q, _ = model.quantize(z)
            return dict(z=z, tokens=model.tokenize(video), recon=model.decode(z_q))

        return run

    image_graphdef, image_state = nnx.split(image)
    run_image, run_video = runner(image_graphdef), runner(graphdef)
    return types.SimpleNamespace(
        image=lambda v: run_image(image_state, v),
        video=lambda v, mode=mode, fill=True: run_video(video_state(mode, fill), v),
    )


def _causal_pair(arch: dict):
    """`_inflated_pair` of the causal tokenizer with architecture ``arch``, "last" inflation."""
    return _inflated_pair(
        CausalVideoTokenizer,
        dict(arch, temporal_kernel_size=1),
        dict(arch, temporal_kernel_size=3),
        "last",
    )


def test_last_inflated_causal_tokenizer_treats_the_first_frame_as_the_image():
    pair = _causal_pair(CAUSAL)
    clip = _video(0, frames=5)
    video, image = pair.video(clip), pair.image(clip[:, :1])
    assert video["z"].shape == (1, 3, 4, 4, 4) and image["z"].shape == (1, 1, 4, 4, 4)
    np.testing.assert_allclose(video["z"][:, 0], image["z"][:, 0], atol=1e-5)
    np.testing.assert_array_equal(video["tokens"][:, 0], image["tokens"][:, 0])
    np.testing.assert_allclose(video["recon"][:, 0], image["recon"][:, 0], atol=1e-5)
    assert float(jnp.abs(image["z"]).max()) > 1e-2
    # The check can fail: the central slice does not match causal padding.
    central = pair.video(clip, mode="central")
    assert float(jnp.abs(central["z"][:, 0] - image["z"][:, 0]).max()) > 1e-3


def test_last_inflated_causal_tokenizer_reproduces_the_image_model_on_a_static_clip():
    # Two temporal up-samplings: output frames 1-4 come from latent 1, each from one of
    # the 4 sub-frames, of which the image model trained only the last.
    pair = _causal_pair(
        dict(CAUSAL, channel_multipliers=(1, 1, 2), temporal_downsample=(True, True))
    )
    frame = _video(3, frames=1)
    static = jnp.repeat(frame, 9, axis=1)
    image = pair.image(frame)
    video = pair.video(static)
    assert video["recon"].shape == (1, 9, 8, 8, 3)
    for f in range(9):
        np.testing.assert_allclose(video["recon"][0, f], image["recon"][0, 0], atol=1e-5)
    # Without the copy the untrained sub-frames decode to something else.
    unfilled = pair.video(static, fill=False)
    np.testing.assert_allclose(unfilled["recon"][0, 0], image["recon"][0, 0], atol=1e-5)
    assert float(jnp.abs(unfilled["recon"][0, 1] - image["recon"][0, 0]).max()) > 1e-2


def test_central_inflated_3dvq_reproduces_the_image_model_on_a_static_clip():
    # Pooling has no parameters: the image model keeps time at full rate.
    pair = _inflated_pair(
        VQVideoTokenizer,
        dict(VQ, temporal_kernel_size=1, temporal_downsample=(False,)),
        dict(VQ, temporal_kernel_size=3, temporal_downsample=(True,)),
        "central",
    )
    frame = _video(1, frames=1)
    static = jnp.repeat(frame, 4, axis=1)
    moving = _video(2, frames=4).at[:, 0].set(frame[:, 0])
    video = pair.video(jnp.concatenate([static, moving]))
    image = pair.image(frame)
    assert video["z"].shape == (2, 2, 4, 4, 4) and image["z"].shape == (1, 1, 4, 4, 4)
    # Every latent frame, token and output frame of the static clip equals the image's.
    for j in range(2):
        np.testing.assert_allclose(video["z"][0, j], image["z"][0, 0], atol=1e-5)
        np.testing.assert_array_equal(video["tokens"][0, j], image["tokens"][0, 0])
    for f in range(4):
        np.testing.assert_allclose(video["recon"][0, f], image["recon"][0, 0], atol=1e-5)
    assert len(np.unique(np.asarray(image["tokens"]))) > 1
    # Only for static clips: on a moving clip the frames interact through the clip-wide
    # GroupNorm statistics and the temporal pooling, so frame 0 no longer matches.
    assert float(jnp.abs(video["z"][1, 0] - image["z"][0, 0]).max()) > 1e-3
