"""Tokenizers and their layers. MAGVIT-v2 causal tokenizer: temporal causality (also
with the adaptive output norm), the 1 + s*t frame mappings, image == first video frame, token round trips, input errors,
gradients through the straight-through estimator, remat and bf16 equivalence, sharding
names. MAGVIT 3D-VQ: thesis token grid and parameter count, non-causality, reflect
padding (a constant clip gives one token everywhere), average pooling, nearest + conv
up-sampling, round trips, gradients to every parameter."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models.layers import (
    CONV3D_KERNEL_AXES,
    AdaptiveGroupNorm,
    AvgPoolDownsample,
    CausalConv3d,
    DepthToSpaceUpsample,
    Downsample,
    GroupNorm,
    NearestUpsample,
    ResBlock3d,
    apply_blocks,
    conv3d_by_temporal_taps,
    conv3d_single,
    resize_nearest,
)
from videogen.models.tokenizer import CausalVideoTokenizer, VQVideoTokenizer

# Toy width, 4x temporal and 4x spatial compression: 17x16x16 -> 5x4x4 tokens.
TINY = dict(
    base_channels=8,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, True),
    num_bits=6,
    num_groups=4,
)
# Smallest useful model for the remat / bf16 equivalence checks: 5x8x8 -> 3x4x4.
MICRO = dict(
    base_channels=4,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    temporal_downsample=(True,),
    num_bits=4,
    num_groups=2,
)
FRAMES, SIZE = 17, 16


def _rngs(seed: int = 0) -> nnx.Rngs:
    # The 'rbg' PRNG compiles much faster on CPU than threefry (~4 s vs ~19 s for TINY).
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _build(**kwargs) -> CausalVideoTokenizer:
    return CausalVideoTokenizer(**kwargs, rngs=_rngs())


def _make(**kwargs) -> CausalVideoTokenizer:
    """`_build` with the initialisation compiled as one program (faster than eager)."""
    return nnx.jit(lambda: _build(**kwargs))()


def _normal(shape, seed: int) -> jax.Array:
    # numpy test data: eager jax.random would compile a PRNG kernel for every shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _video(seed: int, frames: int = FRAMES, size: int = SIZE, batch: int = 1) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (batch, frames, size, size, 3)), jnp.float32)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with jitted entry points (compiled once per input shape)."""
    model = _make(**TINY)
    # Adaptive-norm projections start at zero; make them non-zero so the tests
    # also exercise the latent-conditioning path (and its causal resize).
    for i, norm in enumerate(model.decoder.adaptive_norms):
        for j, proj in enumerate((norm.scale, norm.bias)):
            proj.kernel[...] = 0.3 * _normal(proj.kernel.shape, 100 + 2 * i + j)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, video):
        m = nnx.merge(graphdef, state)
        z = m.encode(video)
        z_q, aux = m.quantize(z)
        return dict(z=z, z_q=z_q, indices=aux["indices"], recon=m.decode(z_q))

    @jax.jit
    def decode(state, z_q):
        return nnx.merge(graphdef, state).decode(z_q)

    @jax.jit
    def token_round_trip(state, video):
        model = nnx.merge(graphdef, state)
        tokens = model.tokenize(video)
        return tokens, model.detokenize(tokens)

    return types.SimpleNamespace(
        model=model,
        run=lambda v: run(state, v),
        decode=lambda z: decode(state, z),
        token_round_trip=lambda v: token_round_trip(state, v),
    )


@pytest.fixture(scope="module")
def clip_batch(tiny):
    """A clip and copies with frame k replaced by noise, for k in PERTURBED, run once."""
    base = _video(0)[0]
    noise = _video(1)[0]
    videos = [base] + [base.at[k].set(noise[k]) for k in PERTURBED]
    return tiny.run(jnp.stack(videos))


PERTURBED = (1, 3, 4, 5, 8, 9, 13, 16)


# --- tokenizer ---------------------------------------------------------------------------


def test_thesis_config_token_grids():
    # Abstract model and shapes only: traces the thesis network without computing it.
    model = nnx.eval_shape(lambda: _build())
    assert (model.temporal_factor, model.spatial_factor) == (4, 8)
    assert model.quantizer.codebook_size == 2**18
    graphdef, state = nnx.split(model)
    for frames, latent_frames in ((17, 5), (1, 1)):
        assert model.latent_shape(frames, 128, 128) == (latent_frames, 16, 16)
        video = jax.ShapeDtypeStruct((2, frames, 128, 128, 3), jnp.float32)
        tokens = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s).tokenize(v), state, video)
        assert (tokens.shape, tokens.dtype) == ((2, latent_frames, 16, 16), jnp.int32)


def test_video_and_image_token_grids(tiny, clip_batch):
    assert (tiny.model.temporal_factor, tiny.model.spatial_factor) == (4, 4)
    assert clip_batch["indices"].shape == (len(PERTURBED) + 1, 5, 4, 4)
    assert clip_batch["indices"].dtype == jnp.int32
    assert clip_batch["z"].shape == (len(PERTURBED) + 1, 5, 4, 4, 6)
    image = tiny.run(_video(0)[:, :1])
    assert image["indices"].shape == (1, 1, 4, 4)
    # The first latent frame sees only the first frame: an image tokenizes identically.
    np.testing.assert_allclose(image["z"][0, 0], clip_batch["z"][0, 0], atol=1e-5)
    np.testing.assert_array_equal(image["indices"][0, 0], clip_batch["indices"][0, 0])
    np.testing.assert_allclose(image["recon"][0, 0], clip_batch["recon"][0, 0], atol=1e-5)


def test_reconstruction_keeps_shape(tiny, clip_batch, micro):
    assert clip_batch["recon"].shape == (len(PERTURBED) + 1, FRAMES, SIZE, SIZE, 3)
    assert clip_batch["recon"].dtype == jnp.float32
    assert tiny.run(_video(0)[:, :1])["recon"].shape == (1, 1, SIZE, SIZE, 3)
    assert micro.recon.shape == micro.video.shape == (1, 5, 8, 8, 3)


def test_encoder_is_temporally_causal(clip_batch):
    z = np.asarray(clip_batch["z"])
    for row, k in enumerate(PERTURBED, start=1):
        diff = np.abs(z[row] - z[0]).max(axis=(1, 2, 3))  # per latent frame
        # Latent frame j is computed from frames <= 4j.
        last_unchanged = (k - 1) // 4
        assert diff[: last_unchanged + 1].max() <= 1e-6, (k, diff)
        assert diff[last_unchanged + 1] > 1e-3, (k, diff)


def test_reconstruction_is_temporally_causal(clip_batch):
    recon = np.asarray(clip_batch["recon"])
    indices = np.asarray(clip_batch["indices"])
    any_flip = False
    for row, k in enumerate(PERTURBED, start=1):
        diff = np.abs(recon[row] - recon[0]).max(axis=(1, 2, 3))  # per output frame
        # Output frame f decodes latent ceil(f/4), which saw frames <= 4*ceil(f/4).
        unchanged = [f for f in range(FRAMES) if 4 * -(-f // 4) < k]
        assert diff[unchanged].max(initial=0.0) <= 1e-6, (k, diff)
        if k % 4 == 1:  # the change propagates causally: every frame before k is kept
            assert unchanged == list(range(k))
        flipped = np.flatnonzero((indices[row] != indices[0]).any(axis=(1, 2)))
        if flipped.size:
            any_flip = True
            # Tokens are causal too, and the first changed one changes its frames.
            j = flipped[0]
            assert 4 * j >= k, (k, flipped)
            assert diff[max(4 * j - 3, 0)] > 1e-4, (k, j, diff)
    assert any_flip, "no perturbation changed a token; the check above would be vacuous"


def _check_decoder_causality(decode, latent_shape, factor: int, seed: int) -> None:
    """Flipping latent frame j changes output frames factor*(j-1)+1 .. factor*j, no earlier."""
    rng = np.random.default_rng(seed)
    base = np.where(rng.random(latent_shape) > 0.5, 1.0, -1.0).astype(np.float32)
    batch = [base]
    for j in range(latent_shape[0]):
        changed = base.copy()
        changed[j] *= -1.0
        batch.append(changed)
    video = np.asarray(decode(jnp.asarray(np.stack(batch))))
    for j in range(latent_shape[0]):
        diff = np.abs(video[j + 1] - video[0]).max(axis=(1, 2, 3))
        first = 0 if j == 0 else factor * (j - 1) + 1
        assert diff[:first].max(initial=0.0) <= 1e-6, (j, diff)
        assert diff[first : factor * j + 1].min() > 1e-4, (j, diff)


def test_decoder_is_temporally_causal(tiny):
    _check_decoder_causality(tiny.decode, (5, 4, 4, 6), factor=4, seed=3)


def test_adaptive_output_norm_is_temporally_causal():
    model = _make(**MICRO, adaptive_norm_out=True)
    for j, proj in enumerate((model.decoder.norm_out.scale, model.decoder.norm_out.bias)):
        proj.kernel[...] = 0.3 * _normal(proj.kernel.shape, 200 + j)
    decode = nnx.jit(lambda m, z: m.decode(z))
    _check_decoder_causality(lambda z: decode(model, z), (3, 4, 4, 4), factor=2, seed=4)


def test_tokenize_detokenize_match_quantize_decode(tiny, clip_batch):
    tokens, video = tiny.token_round_trip(_video(0))
    np.testing.assert_array_equal(tokens, clip_batch["indices"][:1])
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 2**6
    codes = tiny.model.quantizer.codes_from_indices(tokens)
    np.testing.assert_array_equal(codes, clip_batch["z_q"][:1])
    np.testing.assert_allclose(video, clip_batch["recon"][:1], atol=1e-5)


def test_bad_frame_count_is_explained(tiny):
    with pytest.raises(ValueError) as err:
        tiny.model.encode(jnp.zeros((1, 16, SIZE, SIZE, 3)))
    message = str(err.value)
    for part in ("16", "1 + 4k", "13", "17"):
        assert part in message, message
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny.model.tokenize(jnp.zeros((1, 8, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="num_frames=16"):
        tiny.model.latent_shape(16, 128, 128)


def test_bad_frame_size_is_explained(tiny):
    with pytest.raises(ValueError) as err:
        tiny.model.encode(jnp.zeros((1, FRAMES, 12, 18, 3)))
    message = str(err.value)
    assert "12x18" in message and "spatial factor 4" in message, message
    with pytest.raises(ValueError, match="got shape"):
        tiny.model.encode(jnp.zeros((1, FRAMES, SIZE, SIZE, 1)))
    with pytest.raises(ValueError, match="latents must be"):
        tiny.model.decode(jnp.zeros((1, 5, 4, 4, 7)))


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="temporal_downsample"):
        _build(**{**TINY, "temporal_downsample": (True,)})
    with pytest.raises(ValueError, match="num_groups=3"):
        _build(**{**TINY, "num_groups": 3})
    with pytest.raises(ValueError, match="temporal_kernel_size=0"):
        _build(**{**TINY, "temporal_kernel_size": 0})
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        VQVideoTokenizer(**VQ_TINY, padding_mode="circular", rngs=_rngs())


def test_parameters_carry_logical_axis_names(tiny):
    allowed = set(CONV3D_KERNEL_AXES) | {"channels"}
    count = 0
    for _, var in nnx.iter_graph(tiny.model):
        if isinstance(var, nnx.Param):
            names = var.get_metadata()["out_sharding"]
            assert len(names) == var.ndim and set(names) <= allowed, names
            if var.ndim == 5:
                assert tuple(names) == CONV3D_KERNEL_AXES
            count += 1
    assert count > 50


def _reconstruction_grads(model: CausalVideoTokenizer, video: jax.Array):
    """(loss, reconstruction), gradients of the reconstruction loss alone."""
    graphdef, state = nnx.split(model)

    def loss(state):
        # Only the reconstruction: the encoder can get gradient only through the STE.
        recon, _ = nnx.merge(graphdef, state)(video)
        return jnp.mean(jnp.square(recon - video)), recon

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)


@pytest.fixture(scope="module")
def micro():
    """MICRO model, a clip and its reconstruction loss gradients."""
    model = _make(**MICRO)
    video = _video(5, frames=5, size=8)
    (loss, recon), grads = _reconstruction_grads(model, video)
    return types.SimpleNamespace(model=model, video=video, recon=recon, loss=loss, grads=grads)


def _with_params_of(model: CausalVideoTokenizer, **kwargs) -> CausalVideoTokenizer:
    """A MICRO variant (e.g. remat, dtype) sharing ``model``'s parameters."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _build(**MICRO, **kwargs)))
    return nnx.merge(graphdef, nnx.state(model))


def test_reconstruction_gradient_reaches_encoder_through_ste(micro):
    encoder_grads = jax.tree.leaves(micro.grads["encoder"])
    assert len(encoder_grads) > 10
    for g in encoder_grads:
        assert np.all(np.isfinite(g))
    norms = [float(jnp.max(jnp.abs(g))) for g in encoder_grads]
    assert min(norms) > 0.0, norms


def test_remat_wraps_residual_blocks_and_keeps_gradients(micro):
    remat = _with_params_of(micro.model, remat=True)
    for model, expected in ((remat, True), (micro.model, False)):
        jaxpr = str(jax.make_jaxpr(lambda v: model(v)[0])(micro.video))
        assert ("remat" in jaxpr) == expected
    # Remat only trades compute for memory: same loss and gradients through a stack of blocks.
    blocks = [
        ResBlock3d(4, 8, num_groups=2, rngs=_rngs(1)),
        ResBlock3d(8, 8, num_groups=2, rngs=_rngs(2)),
    ]
    x = _normal((1, 5, 4, 4, 4), 30)

    def grads(remat):
        def loss(blocks, x):
            return jnp.sum(jnp.sin(apply_blocks(blocks, x, remat=remat)))

        return nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(blocks, x)

    (loss_plain, grads_plain), (loss_remat, grads_remat) = grads(False), grads(True)
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_float32_params_and_outputs(micro):
    bf16 = _with_params_of(micro.model, dtype=jnp.bfloat16)
    encode = jax.jit(lambda m, v: m.encode(v))
    z_plain, z_bf16 = encode(micro.model, micro.video), encode(bf16, micro.video)
    assert z_bf16.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    assert "bf16" in str(jax.make_jaxpr(lambda v: bf16.encode(v))(micro.video))
    scale = float(jnp.max(jnp.abs(z_plain)))
    assert float(jnp.max(jnp.abs(z_bf16 - z_plain))) < 0.05 * scale


# --- layers ------------------------------------------------------------------------------


def _conv(*args, **kwargs) -> CausalConv3d:
    return CausalConv3d(*args, **kwargs, rngs=_rngs(7))


def test_causal_conv_on_one_frame_is_a_2d_conv_with_the_last_kernel_slice():
    conv = _conv(3, 5, (3, 3, 3))
    conv.bias[...] = jnp.arange(5.0)
    x = _normal((2, 1, 6, 6, 3), 8)
    expected = (
        jax.lax.conv_general_dilated(
            x[:, 0],
            conv.kernel[...][-1],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + conv.bias[...]
    )
    np.testing.assert_allclose(conv(x)[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_conv3d_temporal_receptive_field(causal):
    conv = _conv(2, 3, (3, 3, 3), strides=(2, 1, 1), causal=causal)
    frames = 9 if causal else 8
    x = _normal((1, frames, 4, 4, 2), 9)
    y = conv(x)
    assert y.shape == (1, 5 if causal else 4, 4, 4, 3)
    k = 4
    changed = np.abs(conv(x.at[:, k].add(1.0)) - y).max(axis=(0, 2, 3, 4)) > 1e-6
    # Causal output j sees frames 2j-2 .. 2j; non-causal output j sees 2j-1 .. 2j+1.
    first = (lambda j: 2 * j - 2) if causal else (lambda j: 2 * j - 1)
    expected = [first(j) <= k <= first(j) + 2 for j in range(y.shape[1])]
    np.testing.assert_array_equal(changed, expected)


@pytest.mark.parametrize(
    ("kernel", "strides", "padding"),
    [
        ((3, 3, 3), (1, 1, 1), ((2, 0), (1, 1), (1, 1))),  # causal
        ((3, 3, 3), (2, 2, 2), ((2, 0), (0, 1), (0, 1))),  # causal, strided
        ((4, 4, 4), (2, 2, 2), ((1, 2), (1, 1), (1, 1))),  # non-causal, even kernel
        ((1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
    ],
)
def test_cpu_temporal_tap_conv_equals_a_single_conv3d(kernel, strides, padding):
    x = _normal((2, 9, 8, 8, 3), 20)
    w = _normal((*kernel, 3, 4), 21)

    def single(x, w):
        return conv3d_single(x, w, strides, padding)

    def taps(x, w):
        return conv3d_by_temporal_taps(x, w, strides, padding)

    def grads(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1)))(x, w)

    np.testing.assert_allclose(jax.jit(single)(x, w), jax.jit(taps)(x, w), atol=1e-4)
    for g_single, g_taps in zip(grads(single), grads(taps)):
        np.testing.assert_allclose(g_single, g_taps, atol=1e-4)


def test_causal_conv_rejects_frame_counts_that_do_not_fit_the_stride():
    with pytest.raises(ValueError, match="1 \\+ 2k"):
        _conv(2, 2, strides=(2, 1, 1))(jnp.zeros((1, 8, 4, 4, 2)))


@pytest.mark.parametrize("temporal", [True, False])
def test_downsample_shapes(temporal):
    down = Downsample(4, 6, temporal=temporal, rngs=_rngs())
    assert down(jnp.zeros((1, 9, 8, 8, 4))).shape == (1, 5 if temporal else 9, 4, 4, 6)


def test_resize_nearest_maps_frames_causally():
    x = jnp.arange(3.0).reshape(1, 3, 1, 1, 1) * jnp.ones((1, 3, 2, 2, 1))
    causal = resize_nearest(x, (5, 4, 4), causal=True)
    np.testing.assert_array_equal(causal[0, :, 0, 0, 0], [0, 1, 1, 2, 2])
    assert causal.shape == (1, 5, 4, 4, 1)
    plain = resize_nearest(x, (6, 2, 2), causal=False)
    np.testing.assert_array_equal(plain[0, :, 0, 0, 0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(resize_nearest(x[:, :1], (1, 4, 4)), jnp.zeros((1, 1, 4, 4, 1)))


def test_depth_to_space_rearranges_and_drops_the_first_frames():
    out, st, s = 2, 2, 2
    up = DepthToSpaceUpsample(
        out * st * s * s,
        out,
        temporal_factor=st,
        spatial_factor=s,
        kernel_size=(1, 1, 1),
        rngs=_rngs(),
    )
    up.conv.kernel[...] = jnp.eye(16).reshape(1, 1, 1, 16, 16)
    x = np.random.default_rng(0).standard_normal((1, 3, 2, 2, 16)).astype(np.float32)
    y = np.asarray(up(jnp.asarray(x)))
    assert y.shape == (1, 1 + st * 2, 4, 4, out)
    expected = np.zeros((1, 3 * st, 4, 4, out), np.float32)
    for t, dt, h, dh, w, dw in np.ndindex(3, st, 2, s, 2, s):
        channels = ((dt * s + dh) * s + dw) * out
        expected[0, t * st + dt, h * s + dh, w * s + dw] = x[0, t, h, w, channels : channels + out]
    np.testing.assert_allclose(y, expected[:, st - 1 :], atol=1e-6)


def test_group_norm_per_frame_statistics():
    norm = GroupNorm(8, num_groups=2, per_frame=True)
    x = 3.0 + 2.0 * _normal((2, 3, 4, 4, 8), 10)
    y = norm(x).reshape(2, 3, 16, 2, 4)
    np.testing.assert_allclose(y.mean(axis=(2, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(2, 4)), 1.0, atol=1e-3)
    changed = x.at[:, 2].multiply(5.0)
    np.testing.assert_allclose(norm(changed)[:, :2], norm(x)[:, :2], atol=1e-6)
    clip_norm = GroupNorm(8, num_groups=2, per_frame=False)
    assert float(jnp.abs(clip_norm(changed)[:, 0] - clip_norm(x)[:, 0]).max()) > 1e-2


def test_adaptive_group_norm_follows_the_causal_latent_frame():
    ada = AdaptiveGroupNorm(8, 4, num_groups=2, rngs=_rngs())
    x = _normal((1, 9, 4, 4, 8), 11)
    cond = _normal((1, 3, 2, 2, 4), 12)
    # Zero-initialised projections: a plain normalisation.
    plain = GroupNorm(8, num_groups=2, use_affine=False)
    np.testing.assert_allclose(ada(x, cond), plain(x), atol=1e-6)
    for seed, proj in enumerate((ada.scale, ada.bias)):
        proj.kernel[...] = _normal(proj.kernel.shape, 13 + seed)
    y = ada(x, cond)
    for j in range(3):
        changed = np.abs(ada(x, cond.at[:, j].add(1.0)) - y).max(axis=(0, 2, 3, 4)) > 1e-6
        # 1 + t latent -> 1 + 4t feature frames: frame f uses latent frame ceil(f / 4).
        np.testing.assert_array_equal(changed, [-(-f // 4) == j for f in range(9)])


@pytest.mark.parametrize("causal", [False, True])
def test_reflect_padding_conv_equals_a_valid_conv_on_a_reflect_padded_input(causal):
    conv = _conv(2, 3, (3, 3, 3), causal=causal, padding_mode="reflect")
    conv.bias[...] = jnp.arange(3.0)
    x = _normal((1, 4, 5, 6, 2), 40)
    # Non-causal: time is reflected too; causal: two zero frames before, none after.
    if causal:
        padded = np.pad(np.asarray(x), ((0, 0), (2, 0), (1, 1), (1, 1), (0, 0)))
        padded[:, 2:] = np.pad(np.asarray(x), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), "reflect")
    else:
        padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)), "reflect")
    expected = jax.lax.conv_general_dilated(
        jnp.asarray(padded),
        conv.kernel[...],
        (1, 1, 1),
        "VALID",
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    np.testing.assert_allclose(conv(x), expected + conv.bias[...], atol=1e-5)


def test_reflect_padding_keeps_a_constant_input_constant():
    # Thesis 3.2: reflect padding gives the same features for the same content anywhere.
    x = jnp.ones((1, 4, 6, 6, 2)) * jnp.array([0.5, -1.0])
    for mode, constant in (("reflect", True), ("zeros", False)):
        y = np.asarray(_conv(2, 3, (3, 3, 3), causal=False, padding_mode=mode)(x))
        spread = np.abs(y - y[:, 1:2, 2:3, 2:3]).max()
        assert (spread < 1e-5) == constant, (mode, spread)


def test_avg_pool_downsample_averages_blocks():
    x = _normal((2, 4, 6, 8, 3), 41)
    blocks = np.asarray(x).reshape(2, 2, 2, 3, 2, 4, 2, 3)
    np.testing.assert_allclose(
        AvgPoolDownsample(temporal=True)(x), blocks.mean(axis=(2, 4, 6)), atol=1e-6
    )
    spatial = np.asarray(x).reshape(2, 4, 1, 3, 2, 4, 2, 3).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(AvgPoolDownsample(temporal=False)(x), spatial, atol=1e-6)
    with pytest.raises(ValueError, match="5x6x8"):
        AvgPoolDownsample(temporal=True)(jnp.zeros((1, 5, 6, 8, 3)))


@pytest.mark.parametrize(("temporal_factor", "causal"), [(2, False), (1, False), (2, True)])
def test_nearest_upsample_repeats_then_convolves(temporal_factor, causal):
    up = NearestUpsample(
        3, 3, temporal_factor=temporal_factor, kernel_size=(1, 1, 1), causal=causal, rngs=_rngs()
    )
    up.conv.kernel[...] = 2.0 * jnp.eye(3).reshape(1, 1, 1, 3, 3)
    x = _normal((1, 3, 2, 2, 3), 42)
    y = np.asarray(up(x))
    frames = 1 + temporal_factor * 2 if causal else 3 * temporal_factor
    assert y.shape == (1, frames, 4, 4, 3)
    source = [-(-f // temporal_factor) if causal else f // temporal_factor for f in range(frames)]
    expected = 2.0 * np.asarray(x)[:, source].repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_allclose(y, expected, atol=1e-6)


# --- MAGVIT 3D-VQ tokenizer ---------------------------------------------------------------

# Toy 3D-VQ: 3D pooling at the pixel level, 2D near the latent; 4x16x16 -> 2x4x4 tokens.
VQ_TINY = dict(
    base_channels=8,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, False),
    codebook_size=16,
    embedding_dim=4,
    num_groups=4,
)
VQ_FRAMES = 4
# Smallest 3D-VQ for the gradient check: 2x8x8 -> 1x4x4.
VQ_MICRO = dict(
    base_channels=4,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    temporal_downsample=(True,),
    codebook_size=8,
    embedding_dim=4,
    num_groups=2,
)


def test_vq_thesis_config_token_grid_and_parameter_counts():
    # Thesis 3.3.1 (B): 16x128x128 -> 4x16x16 tokens, vocabulary 1024, embedding 256;
    # 3.2.2: 41M (B) and 158M (L, base 128) parameters without the discriminator.
    model = nnx.eval_shape(lambda: VQVideoTokenizer(rngs=nnx.Rngs(0)))
    assert (model.temporal_factor, model.spatial_factor) == (4, 8)
    assert model.quantizer.codebook.shape == (1024, 256)
    assert model.latent_shape(16, 128, 128) == (4, 16, 16)
    graphdef, state = nnx.split(model)
    video = jax.ShapeDtypeStruct((2, 16, 128, 128, 3), jnp.float32)
    tokens, recon = jax.eval_shape(
        lambda s, v: (nnx.merge(graphdef, s).tokenize(v), nnx.merge(graphdef, s)(v)[0]),
        state,
        video,
    )
    assert (tokens.shape, tokens.dtype) == ((2, 4, 16, 16), jnp.int32)
    assert recon.shape == video.shape
    large = nnx.eval_shape(lambda: VQVideoTokenizer(base_channels=128, rngs=nnx.Rngs(0)))
    for m, thesis in ((model, 41e6), (large, 158e6)):
        count = sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
        assert abs(count - thesis) < 0.015 * thesis, count


@pytest.fixture(scope="module")
def vq_tiny():
    """Tiny 3D-VQ run once on [a clip, the clip with its last frame changed, a constant clip]."""
    model = nnx.jit(lambda: VQVideoTokenizer(**VQ_TINY, rngs=_rngs()))()
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, video):
        m = nnx.merge(graphdef, state)
        z = m.encode(video)
        z_q, aux = m.quantize(z)
        tokens = aux["indices"]
        return dict(
            z=z, z_q=z_q, aux=aux, recon=m.decode(z_q), tokens=tokens, detok=m.detokenize(tokens)
        )

    base = _video(50, frames=VQ_FRAMES)[0]
    changed = base.at[-1].set(_video(51, frames=VQ_FRAMES)[0, -1])
    constant = jnp.ones_like(base) * jnp.array([0.3, -0.5, 0.8])
    out = run(state, jnp.stack([base, changed, constant]))
    return types.SimpleNamespace(model=model, out=out)


def test_vq_token_grid_and_reconstruction_shape(vq_tiny):
    model, out = vq_tiny.model, vq_tiny.out
    assert (model.temporal_factor, model.spatial_factor) == (2, 4)
    assert out["z"].shape == (3, 2, 4, 4, 4)
    assert out["tokens"].shape == (3, 2, 4, 4) and out["tokens"].dtype == jnp.int32
    assert int(out["tokens"].min()) >= 0 and int(out["tokens"].max()) < 16
    assert out["recon"].shape == (3, VQ_FRAMES, SIZE, SIZE, 3)
    assert set(out["aux"]["losses"]) == {"commitment", "codebook"}


def test_vq_encoder_is_not_causal(vq_tiny):
    z = np.asarray(vq_tiny.out["z"])
    # Changing the last frame changes the first latent frame too (thesis 3.2: the
    # receptive field is non-local), unlike the causal tokenizer.
    diff = np.abs(z[1] - z[0]).max(axis=(1, 2, 3))
    assert diff.min() > 1e-3, diff


def test_vq_constant_clip_gives_one_token_everywhere(vq_tiny):
    # Reflect padding: no border effects, so equal content gives equal latents and tokens.
    out = vq_tiny.out
    z = np.asarray(out["z"][2])
    assert np.abs(z - z[0, 0, 0]).max() < 1e-5 * max(1.0, np.abs(z).max())
    assert np.abs(z[0, 0, 0]).max() > 1e-3  # not trivially zero
    assert len(np.unique(np.asarray(out["tokens"][2]))) == 1
    recon = np.asarray(out["recon"][2])
    assert np.abs(recon - recon[0, 0, 0]).max() < 1e-4


def test_vq_detokenize_matches_quantize_decode(vq_tiny):
    out = vq_tiny.out
    codes = vq_tiny.model.quantizer.codes_from_indices(out["tokens"])
    np.testing.assert_allclose(codes, out["z_q"], atol=1e-6)
    np.testing.assert_allclose(out["detok"], out["recon"], atol=1e-5)


def test_vq_bad_frame_count_is_explained(vq_tiny):
    with pytest.raises(ValueError) as err:
        vq_tiny.model.encode(jnp.zeros((1, 5, SIZE, SIZE, 3)))
    message = str(err.value)
    for part in ("num_frames=5", "multiple of 2", "4 or 6"):
        assert part in message, message
    with pytest.raises(ValueError, match="spatial factor 4"):
        vq_tiny.model.latent_shape(4, 12, 18)
    with pytest.raises(ValueError, match="latents must be"):
        vq_tiny.model.decode(jnp.zeros((1, 2, 4, 4, 6)))


def test_vq_gradient_reaches_every_parameter():
    graphdef, state = nnx.split(nnx.jit(lambda: VQVideoTokenizer(**VQ_MICRO, rngs=_rngs()))())
    video = _video(52, frames=2, size=8)

    def loss(state):
        recon, aux = nnx.merge(graphdef, state)(video)
        losses = aux["losses"]
        return jnp.mean(jnp.square(recon - video)) + losses["commitment"] + losses["codebook"]

    grads = jax.jit(jax.grad(loss))(state)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) > 20
    for path, g in leaves:
        assert np.all(np.isfinite(g)), path
        assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)
