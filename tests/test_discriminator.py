"""3D StyleGAN discriminator: blur pooling against an independent numpy reference, constant
preservation and odd lengths, one logit per clip that depends on that clip only, gradients
to every parameter, images (T=1), shape errors, the thesis-size parameter count, sharding
names, and remat equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import sharding
from videogen.models.discriminator import (
    BlurPool3d,
    DiscriminatorBlock3d,
    StyleGANDiscriminator3d,
)

# 4x16x16 clips -> 2x8x8 -> 1x4x4 features of width 8.
TINY = {"base_channels": 4, "channel_multipliers": (1, 2), "num_frames": 4, "resolution": 16}


def _rngs(seed: int = 0) -> nnx.Rngs:
    # 'rbg' keys compile much faster on CPU than threefry.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _make(**kwargs) -> StyleGANDiscriminator3d:
    return nnx.jit(lambda: StyleGANDiscriminator3d(**kwargs, rngs=_rngs()))()


def _video(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _numpy_blur_pool(x: np.ndarray) -> np.ndarray:
    """Direct 4x4x4 sum: out[i] = sum_k f[k] x[clip(2i + k - 1)] per axis (edge padding)."""
    f = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    kernel = f[:, None, None] * f[None, :, None] * f[None, None, :]
    b, t, h, w, c = x.shape
    out = np.zeros((b, -(-t // 2), -(-h // 2), -(-w // 2), c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for k in range(out.shape[3]):
                for a in range(4):
                    for bb in range(4):
                        for cc in range(4):
                            ti = min(max(2 * i + a - 1, 0), t - 1)
                            hi = min(max(2 * j + bb - 1, 0), h - 1)
                            wi = min(max(2 * k + cc - 1, 0), w - 1)
                            out[:, i, j, k] += kernel[a, bb, cc] * x[:, ti, hi, wi]
    return out


@pytest.fixture(scope="module")
def tiny():
    return _make(**TINY)


@pytest.fixture(scope="module")
def forward():
    return nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize(
    "shape, expected",
    [((1, 4, 16, 16, 2), (1, 2, 8, 8, 2)), ((1, 5, 7, 9, 1), (1, 3, 4, 5, 1))],
)
def test_blur_pool_keeps_a_constant_video_constant_and_halves_each_dim(shape, expected):
    y = BlurPool3d()(jnp.full(shape, 0.7, jnp.float32))
    assert y.shape == expected
    np.testing.assert_allclose(np.asarray(y), 0.7, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7, 3), (1, 1, 4, 5, 2), (1, 2, 3, 1, 1)])
def test_blur_pool_matches_an_independent_numpy_implementation(shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y = BlurPool3d()(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), _numpy_blur_pool(x), rtol=1e-5, atol=1e-6)


def test_blur_pool_is_a_fixed_constant_without_parameters():
    assert not jax.tree.leaves(nnx.state(BlurPool3d()))
    with pytest.raises(ValueError, match=r"taps=\(1.0,\)"):
        BlurPool3d(taps=(1.0,))


def test_block_is_blurred_residual_scaled_by_inverse_sqrt2():
    block = DiscriminatorBlock3d(2, 3, rngs=_rngs())
    x = _video(6, (1, 3, 8, 8, 2))
    blur = BlurPool3d()
    main = jax.nn.leaky_relu(block.conv2(blur(jax.nn.leaky_relu(block.conv1(x), 0.2))), 0.2)
    expected = (main + block.skip(blur(x))) / np.sqrt(2.0)
    y = nnx.jit(lambda b, v: b(v))(block, x)
    assert y.shape == (1, 2, 4, 4, 3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_one_float32_logit_per_clip(tiny, forward):
    logits = forward(tiny, _video(0, (3, 4, 16, 16, 3)))
    assert logits.shape == (3,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # Different clips get different logits: the output is not a constant.
    assert np.unique(np.asarray(logits)).size == 3


def test_each_logit_depends_on_its_own_clip_only(tiny, forward):
    # Required by the one-pass R1 penalty (per-clip input gradients of sum(logits)).
    x = _video(1, (2, 4, 16, 16, 3))
    before = np.asarray(forward(tiny, x))
    after = np.asarray(forward(tiny, x.at[1].set(_video(2, (4, 16, 16, 3)))))
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_gradient_reaches_every_parameter(tiny):
    x = _video(3, (2, 4, 16, 16, 3))
    grads = nnx.jit(nnx.grad(lambda model: jnp.sum(model(x))))(tiny)
    norms = {
        jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    # stem, 2 blocks x (conv1, conv2, bias-free skip), final conv, 2 dense layers.
    assert len(norms) == 2 + 2 * 5 + 2 + 4
    assert all(n > 0 for n in norms.values()), norms


def test_images_single_frame():
    model = _make(**{**TINY, "num_frames": 1})
    # Time stays at one frame through every block, so the dense input is 1x4x4x8.
    assert model.dense.kernel.shape == (1 * 4 * 4 * 8, 8)
    logits = nnx.jit(lambda m, x: m(x))(model, _video(4, (2, 1, 16, 16, 3)))
    assert logits.shape == (2,) and np.all(np.isfinite(logits))


def test_odd_frame_counts_halve_with_ceil():
    model = nnx.eval_shape(
        lambda: StyleGANDiscriminator3d(
            base_channels=2,
            channel_multipliers=(1,) * 5,
            num_frames=17,
            resolution=32,
            rngs=_rngs(),
        )
    )
    # 17 -> 9 -> 5 -> 3 -> 2 -> 1 frames, 32 -> 1 pixels, width 2.
    assert model.dense.kernel.shape == (1 * 1 * 1 * 2, 2)
    model = nnx.eval_shape(
        lambda: StyleGANDiscriminator3d(**{**TINY, "num_frames": 9}, rngs=_rngs())
    )
    # 9 -> 5 -> 3 frames, 16 -> 4 pixels, width 8.
    assert model.dense.kernel.shape == (3 * 4 * 4 * 8, 8)


def test_resolution_that_cannot_be_halved_enough_times_is_rejected():
    with pytest.raises(
        ValueError, match=r"resolution=16 cannot be halved 5 times.*divisible by 32"
    ):
        StyleGANDiscriminator3d(base_channels=2, resolution=16, rngs=_rngs())
    with pytest.raises(ValueError, match=r"resolution=18 cannot be halved 2 times"):
        StyleGANDiscriminator3d(**{**TINY, "resolution": 18}, rngs=_rngs())
    with pytest.raises(ValueError, match=r"num_frames=0"):
        StyleGANDiscriminator3d(**{**TINY, "num_frames": 0}, rngs=_rngs())


def test_clip_of_another_shape_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"built for clips \[batch, 4, 16, 16, 3\].*\(1, 5, 16"):
        tiny(jnp.zeros((1, 5, 16, 16, 3)))


def test_thesis_size_parameter_count():
    model = nnx.eval_shape(lambda: StyleGANDiscriminator3d(rngs=_rngs()))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    def conv(ci, co, k=27, bias=True):
        return k * ci * co + (co if bias else 0)

    widths = [128 * m for m in (2, 4, 4, 4, 4)]
    expected = conv(3, 128)
    ci = 128
    for co in widths:
        expected += conv(ci, ci) + conv(ci, co) + conv(ci, co, k=1, bias=False)
        ci = co
    # 17x128x128 -> 1x4x4 features of width 512.
    expected += conv(512, 512) + (1 * 4 * 4 * 512) * 512 + 512 + 512 + 1
    assert count == expected == 61_341_569


def test_every_parameter_has_logical_axes_with_sharding_rules(tiny):
    abstract = nnx.state(nnx.eval_shape(lambda: StyleGANDiscriminator3d(**TINY, rngs=_rngs())))
    mesh = sharding.make_mesh((1, -1, 1))
    shardings = sharding.state_shardings(abstract, mesh, "fsdp")
    specs = {
        jax.tree_util.keystr(path): s.spec
        for path, s in jax.tree_util.tree_leaves_with_path(shardings)
    }
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        assert len(specs[jax.tree_util.keystr(path)]) == leaf.ndim
    # The 8-wide output axes split over the 8-device fsdp axis.
    assert specs["['dense']['kernel'].value"] == jax.sharding.PartitionSpec(None, "fsdp")
    assert specs["['blocks'][1]['conv2']['kernel'].value"][-1] == "fsdp"


def test_remat_gives_the_same_logits_and_gradients():
    micro = {"base_channels": 2, "channel_multipliers": (1,), "num_frames": 2, "resolution": 8}
    x = _video(5, (2, 2, 8, 8, 3))
    step = nnx.value_and_grad(lambda model: jnp.sum(model(x)))
    value, grads = nnx.jit(step)(_make(**micro))
    value_r, grads_r = nnx.jit(step)(_make(**micro, remat=True))
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-7)
