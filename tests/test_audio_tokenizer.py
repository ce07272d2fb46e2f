"""Audio tokenizer (thesis Sec. 8.3.1). Residual VQ: level-major id flattening round trip,
EMA codebook update (exact value), dead-code restart, quantizer dropout, residual error
falling with each level, straight-through gradient, state updates out of jit. SoundStream
tokenizer: 34000 samples -> 106 frames, causality, token round trip, gradients. STFT
discriminator: shapes, per-example independence, gradients, feature matching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.data.moving_digits import soundtrack
from videogen.evaluation.audio_metrics import rvq_bitrate
from videogen.models.audio_discriminator import (
    MultiScaleSTFTDiscriminator,
    feature_matching_loss,
    per_example_logits,
)
from videogen.models.audio_tokenizer import SoundStreamTokenizer
from videogen.models.quantizers import (
    CodebookState,
    ResidualVQ,
    flatten_audio_tokens,
    unflatten_audio_tokens,
)

NUM_SAMPLES = 34_000  # 17 frames at 8 fps = 2.125 s at 16 kHz


def _normal(shape, seed: int, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _rngs(seed: int) -> nnx.Rngs:
    # rbg keys: eager threefry key derivation compiles a kernel per shape.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _rvq(**kwargs) -> ResidualVQ:
    return ResidualVQ(rngs=_rngs(0), **kwargs)


@nnx.jit
def _call(module, x):
    return module(x)


# --- level-major flattening ---------------------------------------------------------------


def test_flatten_is_level_major_with_disjoint_vocabularies_and_round_trips():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 1024, (3, 4, 106)), jnp.int32)
    ids = flatten_audio_tokens(tokens, 1024)
    assert ids.shape == (3, 424) and ids.dtype == jnp.int32
    # Position l * frames + f holds level l's token of frame f, offset by l * 1024.
    for level in range(4):
        np.testing.assert_array_equal(
            ids[:, level * 106 : (level + 1) * 106], tokens[:, level] + level * 1024
        )
        block = np.asarray(ids[:, level * 106 : (level + 1) * 106])
        assert block.min() >= level * 1024 and block.max() < (level + 1) * 1024
    np.testing.assert_array_equal(unflatten_audio_tokens(ids, 4, 1024), tokens)
    # Every id of the 4096-id vocabulary maps back to a (level, code) pair and returns.
    all_ids = jnp.arange(4096, dtype=jnp.int32).reshape(1, 4096)
    np.testing.assert_array_equal(
        flatten_audio_tokens(unflatten_audio_tokens(all_ids, 4, 1024), 1024), all_ids
    )
    with pytest.raises(ValueError, match="num_levels=4"):
        unflatten_audio_tokens(jnp.zeros((1, 10), jnp.int32), 4, 1024)


# --- residual VQ ---------------------------------------------------------------------------


def test_ema_moves_each_code_to_the_exact_ema_of_its_vectors():
    rvq = _rvq(num_levels=1, codebook_size=4, embedding_dim=2, decay=0.5, dead_code_threshold=0.0)
    codes = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]], np.float32)
    rvq.codebooks[...] = jnp.asarray(codes[None])
    rvq.cluster_size[...] = jnp.full((1, 4), 2.0)
    rvq.embedding_sum[...] = jnp.asarray(codes[None] * 2.0)
    # Three vectors near code 0, one near code 1; codes 2 and 3 get nothing.
    z = jnp.asarray([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [4.0, 4.0]]], jnp.float32)
    _, aux = _call(rvq, z)
    np.testing.assert_array_equal(aux["indices"][0, :, 0], [0, 0, 0, 1])
    new = np.asarray(rvq.codebooks[...][0])
    # size = 0.5 * 2 + 0.5 * count; sum = 0.5 * 2 * e + 0.5 * sum of vectors.
    np.testing.assert_allclose(new[0], (0.5 * 2 * codes[0] + 0.5 * np.array([2, 2])) / 2.5)
    np.testing.assert_allclose(new[1], (0.5 * 2 * codes[1] + 0.5 * np.array([4, 4])) / 1.5)
    np.testing.assert_allclose(new[2:], codes[2:])  # unassigned codes keep their vector
    np.testing.assert_allclose(rvq.cluster_size[...][0], [2.5, 1.5, 1.0, 1.0])
    # Each used code moved towards the mean of its vectors.
    assert np.linalg.norm(new[0] - [2 / 3, 2 / 3]) < np.linalg.norm(codes[0] - [2 / 3, 2 / 3])
    assert np.linalg.norm(new[1] - [4, 4]) < np.linalg.norm(codes[1] - [4, 4])


def test_dead_code_is_restarted_from_a_batch_vector():
    rvq = _rvq(num_levels=1, codebook_size=4, embedding_dim=2, dead_code_threshold=1.0)
    codes = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [100.0, 100.0]], np.float32)
    rvq.codebooks[...] = jnp.asarray(codes[None])
    rvq.cluster_size[...] = jnp.full((1, 4), 5.0)
    rvq.embedding_sum[...] = jnp.asarray(codes[None] * 5.0)
    z = _normal((2, 30, 2), 1)
    for _ in range(3):  # not dead yet: the EMA size of code 3 is 5 * 0.99^k > 1
        _call(rvq, z)
        np.testing.assert_array_equal(rvq.codebooks[...][0, 3], codes[3])
    rvq.cluster_size[...] = rvq.cluster_size[...].at[0, 3].set(1.0)  # now it falls below 1
    _call(rvq, z)
    replaced = np.asarray(rvq.codebooks[...][0, 3])
    batch = np.asarray(z).reshape(-1, 2)
    # The dead code is now exactly one of the batch's vectors, and alive again.
    assert np.min(np.abs(batch - replaced).sum(-1)) == 0.0
    assert float(rvq.cluster_size[...][0, 3]) == 1.0
    # Live codes were not restarted: they moved by EMA only, staying near their old place.
    assert np.all(np.linalg.norm(np.asarray(rvq.codebooks[...][0, :3]) - codes[:3], axis=-1) < 0.5)


def test_quantizer_dropout_uses_a_prefix_of_levels_per_example():
    rvq = _rvq(num_levels=4, codebook_size=16, embedding_dim=4)
    z = _normal((32, 5, 4), 2)
    codebooks = np.asarray(rvq.codebooks[...])  # the call quantizes with these, then updates
    z_q, aux = _call(rvq, z)
    idx = np.asarray(aux["indices"])  # [b, frames, levels]
    codes = np.stack([codebooks[level][idx[..., level]] for level in range(4)])  # [l, b, f, d]
    prefix_sums = np.cumsum(codes, axis=0)
    levels = []
    for b in range(32):
        errors = np.abs(prefix_sums[:, b] - np.asarray(z_q[b])).max(axis=(1, 2))
        assert errors.min() < 1e-5, f"example {b} is not the sum of a prefix of its levels"
        levels.append(1 + int(np.argmin(errors)))
    assert float(aux["metrics"]["levels_used"]) == pytest.approx(np.mean(levels))
    assert set(levels) == {1, 2, 3, 4}  # 32 draws of n in [1, 4] use fewer levels too
    # Evaluation: every level, deterministic, no state change.
    rvq.eval()
    before = np.asarray(rvq.codebooks[...])

    @nnx.jit
    def evaluate(m, z):
        tokens = m.tokenize(z)
        return (
            m(z),
            m(z),
            tokens,
            m.tokenize(z, 2),
            m.detokenize(tokens),
            m.detokenize(tokens[:, :2]),
        )

    (out1, aux1), (out2, _), tokens, tokens2, full, coarse = evaluate(rvq, z)
    assert float(aux1["metrics"]["levels_used"]) == 4.0
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(rvq.codebooks[...], before)
    assert tokens.shape == (32, 4, 5) and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(tokens, jnp.moveaxis(aux1["indices"], -1, 1))
    np.testing.assert_allclose(full, out1, atol=1e-5)
    # Fewer levels from tokenize / detokenize give the coarser prefix sums.
    np.testing.assert_array_equal(tokens2, tokens[:, :2])
    coarse = np.asarray(coarse)
    assert np.mean((coarse - np.asarray(z)) ** 2) > np.mean((np.asarray(out1) - np.asarray(z)) ** 2)


def test_residual_error_falls_with_each_level_after_ema_training():
    rvq = _rvq(num_levels=4, codebook_size=32, embedding_dim=4, quantizer_dropout=False)
    z = _normal((8, 64, 4), 3)
    _, first = _call(rvq, z)
    for _ in range(15):
        _call(rvq, z)
    rvq.eval()
    _, aux = _call(rvq, z)
    errors = np.asarray(aux["metrics"]["residual_error"])
    variance = float(np.mean(np.asarray(z) ** 2))
    # Each level removes a good share of what the previous levels left.
    assert variance > errors[0] and np.all(np.diff(errors) < 0), errors
    assert np.all(errors[1:] < 0.8 * errors[:-1]), errors
    assert np.all(errors < np.asarray(first["metrics"]["residual_error"])), errors
    np.testing.assert_allclose(aux["losses"]["commitment"], errors[-1], rtol=1e-5)
    # Codes were spread out by the restarts: most of every codebook is in use.
    assert np.all(np.asarray(aux["metrics"]["codebook_usage"]) > 0.6)
    assert np.all(np.asarray(aux["metrics"]["perplexity"]) > 10)


def test_straight_through_gradient_and_commitment_gradient():
    rvq = _rvq(num_levels=2, codebook_size=8, embedding_dim=3)
    rvq.eval()
    graphdef, state = nnx.split(rvq)
    z = _normal((2, 6, 3), 4)
    w = _normal(z.shape, 5)

    def objectives(z):
        z_q, aux = nnx.merge(graphdef, state)(z)
        return jnp.stack([jnp.sum(z_q * w), aux["losses"]["commitment"]]), z_q

    (ste, commitment), z_q = jax.jit(jax.jacrev(objectives, has_aux=True))(z)
    np.testing.assert_array_equal(ste, w)
    expected = 2 * (np.asarray(z) - np.asarray(z_q)) / z.size
    np.testing.assert_allclose(commitment, expected, rtol=1e-5, atol=1e-8)


def test_ema_state_leaves_jax_jit_through_split_and_merge():
    rvq = _rvq(num_levels=2, codebook_size=8, embedding_dim=3)
    graphdef, state = nnx.split(rvq)

    @jax.jit
    def step(state, z):
        module = nnx.merge(graphdef, state)
        _, aux = module(z)
        return nnx.state(module), aux["metrics"]["levels_used"]

    z = _normal((4, 10, 3), 6)
    new_state, _ = step(state, z)
    ema = nnx.state(rvq, CodebookState)
    new_ema = nnx.filter_state(new_state, CodebookState)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), ema, new_ema)
    assert all(jax.tree.leaves(changed)), changed
    # CodebookState is not a Param: an optimizer over nnx.Param never sees it.
    assert not jax.tree.leaves(nnx.state(rvq, nnx.Param))


# --- SoundStream tokenizer -------------------------------------------------------------------


def _fill_fan_in_uniform(module: nnx.Module, seed: int) -> None:
    """Sets every parameter of an abstract (`nnx.eval_shape`) module to U(+-1/sqrt(fan_in))
    drawn in numpy, the leading axes being the fan-in."""
    rng = np.random.default_rng(seed)

    def draw(x: jax.ShapeDtypeStruct) -> np.ndarray:
        fan_in = max(1, int(np.prod(x.shape[:-1])))
        return rng.uniform(-1, 1, x.shape).astype(np.float32) / np.sqrt(fan_in)

    nnx.update(module, jax.tree.map(draw, nnx.state(module, nnx.Param)))


def _numpy_filled_tokenizer(**kwargs) -> SoundStreamTokenizer:
    """A tokenizer (training mode) with `_fill_fan_in_uniform` weights.

    Built abstractly and filled: initialising it in JAX compiles a kernel per
    parameter (7 s for the tiny model on 2 cores).
    """
    model = nnx.eval_shape(lambda: SoundStreamTokenizer(**kwargs, rngs=_rngs(1)))
    _fill_fan_in_uniform(model, seed=1)
    q = model.quantizer
    model.quantizer = ResidualVQ(q.num_levels, q.codebook_size, q.embedding_dim, rngs=_rngs(1))
    return model


@pytest.fixture(scope="module")
def tiny_model() -> SoundStreamTokenizer:
    """The default strides (hop 320) with 4-16 channels, 8 latent dims, 4 x 16 codes."""
    return _numpy_filled_tokenizer(
        channels=4, channel_multipliers=(1, 2, 2, 4), latent_dim=8, num_levels=4, codebook_size=16
    )


@pytest.fixture(scope="module")
def clip_audio() -> jax.Array:
    """Two real moving-digits soundtracks (tone + bounce clicks), 34000 samples each."""
    tracks = [
        soundtrack(label, bounces, num_frames=17, fps=8.0, sample_rate=16_000)
        for label, bounces in ((3, [5, 12]), (7, [2]))
    ]
    return jnp.asarray(np.stack(tracks))


@pytest.fixture(scope="module")
def tiny_eval(tiny_model):
    """The tiny tokenizer in evaluation mode and one jitted program for every use."""
    model = nnx.merge(*nnx.split(tiny_model))
    model.eval()
    graphdef, state = nnx.split(model)

    def run(state, audio, other):
        m = nnx.merge(graphdef, state)
        reconstruction, aux = m(audio)
        tokens = m.tokenize(audio)
        latents, other_latents = m.encode(audio), m.encode(other)
        return {
            "reconstruction": reconstruction,
            "indices": aux["indices"],
            "tokens": tokens,
            "detokenized": m.detokenize(tokens, NUM_SAMPLES),
            "latents": latents,
            "other_latents": other_latents,
            "decoded": m.decode(latents, NUM_SAMPLES),
            "other_decoded": m.decode(other_latents, NUM_SAMPLES),
            "other_reconstruction": m(other)[0],
        }

    return model, functools.partial(jax.jit(run), state)


def test_default_tokenizer_is_soundstream_at_videopoet_rates():
    model = nnx.eval_shape(lambda: SoundStreamTokenizer(rngs=nnx.Rngs(0)))
    assert model.hop_length == 320 and 16_000 / model.hop_length == 50
    # Thesis: 2.125 s -> 106 frames (floor; ceil would give 107).
    assert model.latent_frames(NUM_SAMPLES) == 106
    assert model.coded_samples(NUM_SAMPLES) == 33_920
    assert model.quantizer.codebooks.shape == (4, 1024, 128)
    assert rvq_bitrate(4, 1024, 50) == 2000.0
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 9e6 < num_params < 11e6, num_params  # 9,841,249


def test_34000_samples_give_106_frames_and_tokens_round_trip(tiny_eval, clip_audio):
    _, run = tiny_eval
    out = run(clip_audio, clip_audio)
    assert out["latents"].shape == (2, 106, 8)
    tokens = out["tokens"]
    assert tokens.shape == (2, 4, 106) and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 16
    reconstruction = out["reconstruction"]
    assert reconstruction.shape == (2, NUM_SAMPLES)
    np.testing.assert_array_equal(jnp.moveaxis(out["indices"], -1, 1), tokens)
    np.testing.assert_allclose(out["detokenized"], reconstruction, atol=1e-5)
    # The 80 samples past 106 frames are not coded.
    np.testing.assert_array_equal(reconstruction[:, 33_920:], 0.0)
    ids = flatten_audio_tokens(tokens, 16)
    np.testing.assert_array_equal(unflatten_audio_tokens(ids, 4, 16), tokens)


@pytest.mark.parametrize("frame", [1, 37, 105])
def test_changing_future_samples_changes_no_earlier_frame_or_sample(tiny_eval, clip_audio, frame):
    model, run = tiny_eval
    start = frame * model.hop_length
    changed = clip_audio.at[:, start:].add(_normal((2, NUM_SAMPLES - start), 7, 0.5))
    out = run(clip_audio, changed)
    z0, z1 = out["latents"], out["other_latents"]
    np.testing.assert_array_equal(z0[:, :frame], z1[:, :frame])
    assert float(jnp.max(jnp.abs(z0[:, frame] - z1[:, frame]))) > 1e-4
    # The decoder only looks back (continuous latents: quantization could mask a change).
    r0, r1 = out["decoded"], out["other_decoded"]
    np.testing.assert_array_equal(r0[:, :start], r1[:, :start])
    assert float(jnp.max(jnp.abs(r0[:, start:] - r1[:, start:]))) > 1e-6
    # Through the whole codec, quantizer included.
    a, b = out["reconstruction"], out["other_reconstruction"]
    np.testing.assert_array_equal(a[:, :start], b[:, :start])


def _norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def test_training_step_updates_encoder_decoder_and_codebooks(clip_audio):
    # Two stages (hop 8): the property does not need the full hop, and compiles 4x faster.
    model = _numpy_filled_tokenizer(
        channels=4, channel_multipliers=(1, 2), strides=(2, 4), latent_dim=8, codebook_size=16
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, audio):
        def loss(params):
            # copy=True: fresh variables at this trace level, so the quantizer's EMA
            # state and RNG count may be updated under jax.grad.
            module = nnx.merge(graphdef, params, rest, copy=True)
            reconstruction, aux = module(audio)
            value = jnp.mean(jnp.abs(reconstruction - audio)) + aux["losses"]["commitment"]
            return value, nnx.state(module, nnx.Not(nnx.Param))

        return jax.grad(loss, has_aux=True)(params)

    grads, new_rest = step(params, rest, clip_audio[:1, :400])  # 50 frames
    assert _norm(grads["encoder"]) > 0 and _norm(grads["decoder"]) > 0
    old = nnx.filter_state(rest, CodebookState)["quantizer"]["codebooks"][...]
    new = nnx.filter_state(new_rest, CodebookState)["quantizer"]["codebooks"][...]
    assert not np.array_equal(old, new)


# --- STFT discriminator ----------------------------------------------------------------------


def test_stft_discriminator_shapes_independence_and_gradients():
    disc = nnx.eval_shape(
        lambda: MultiScaleSTFTDiscriminator(fft_sizes=(64, 128), channels=4, rngs=_rngs(2))
    )
    _fill_fan_in_uniform(disc, seed=2)
    graphdef, params = nnx.split(disc)
    real = _normal((2, 1024), 8, 0.3)
    fake = _normal((2, 1024), 9, 0.3)

    @jax.jit
    def run(params, real, fake):
        def losses(params, fake):
            real_logits, real_features = nnx.merge(graphdef, params)(real)
            fake_logits, fake_features = nnx.merge(graphdef, params)(fake)
            adversarial = jnp.mean(
                per_example_logits(fake_logits) - per_example_logits(real_logits)
            )
            matching = feature_matching_loss(real_features, fake_features)
            same = feature_matching_loss(real_features, real_features)
            return adversarial + matching, (real_logits, real_features, matching, same)

        return jax.grad(losses, argnums=(0, 1), has_aux=True)(params, fake)

    (grad_params, grad_fake), (logits, features, matching, same) = run(params, real, fake)
    # 64-point STFT, hop 16: 65 frames x 33 bins, frequency halved three times (33 -> 5).
    assert [x.shape for x in logits] == [(2, 65, 5, 1), (2, 33, 9, 1)]
    assert [len(f) for f in features] == [5, 5]
    assert features[0][0].shape == (2, 65, 33, 4) and features[1][-1].shape == (2, 33, 9, 4)
    # Gradients reach the discriminator and, through the STFT, the generated waveform.
    assert _norm(grad_params) > 0
    assert float(jnp.sum(jnp.abs(grad_fake))) > 0 and bool(jnp.all(jnp.isfinite(grad_fake)))
    assert float(same) == 0.0 and float(matching) > 0.01
    # Nothing mixes examples: changing example 1 leaves example 0's logits alone.
    _, (other, _, _, _) = run(params, real.at[1].set(fake[1]), fake)
    np.testing.assert_array_equal(other[0][0], logits[0][0])
    assert float(jnp.max(jnp.abs(other[1][1] - logits[1][1]))) > 0
