"""Quantizers. LFQ: index <-> bits (Eq. 5.4), sign with straight-through gradient, the
entropy terms of Eq. 5.5 checked against a brute-force softmax over all 2^K codes, token
factorization (Sec. 5.3.2). VQ (Eq. 5.1): nearest code vs brute force, straight-through
gradient, commitment / codebook losses and their gradients. Both: the aux contract."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models.quantizers import (
    LFQ,
    VectorQuantizer,
    bits_from_indices,
    codebook_entropy,
    factorize_indices,
    grouped_codebook_entropy,
    indices_from_bits,
    unfactorize_indices,
)


def _brute_force_entropies(z: np.ndarray, temperature: float) -> tuple[float, float]:
    """(E[H(q(z))], H[E(q(z))]) in nats, materialising all 2^K codes, float64."""
    k = z.shape[-1]
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=k)))  # [2^K, K]
    dist = np.sum((z[:, None, :] - codes[None]) ** 2, axis=-1)  # [N, 2^K]
    logits = -dist / temperature
    logits -= logits.max(axis=1, keepdims=True)
    q = np.exp(logits)
    q /= q.sum(axis=1, keepdims=True)

    def entropy(p, axis):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)

    return float(np.mean(entropy(q, 1))), float(entropy(q.mean(axis=0), 0))


def _quantize(z, num_bits, **kwargs):
    """Jitted LFQ call: a whole-function compile is much faster than op-by-op dispatch."""
    return jax.jit(LFQ(num_bits, **kwargs).__call__)(z)


def _normal(shape, seed: int) -> jax.Array:
    # numpy test data: eager jax.random would compile a PRNG kernel for every shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _random_latents(n: int, k: int, seed: int, scale: float = 0.3) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((n, k))).astype(np.float32)


def test_index_bits_round_trip_all_codes_k6():
    indices = jnp.arange(64, dtype=jnp.int32)
    bits = bits_from_indices(indices, 6)
    assert bits.shape == (64, 6)
    np.testing.assert_array_equal(indices_from_bits(bits), indices)
    # Eq. 5.4: bit i (0-based) has weight 2^i, so 37 = 1 + 4 + 32.
    np.testing.assert_array_equal(bits[37], [1, 0, 1, 0, 0, 1])
    # Every code appears exactly once.
    assert len({tuple(b) for b in np.asarray(bits)}) == 64
    # {-1, +1} codes and booleans give the same indices as {0, 1} bits.
    np.testing.assert_array_equal(indices_from_bits(2 * bits - 1), indices)
    np.testing.assert_array_equal(indices_from_bits(bits.astype(bool)), indices)


def test_index_bits_round_trip_random_k18():
    rng = np.random.default_rng(0)
    indices = jnp.asarray(rng.integers(0, 2**18, (4, 5, 16, 16)), jnp.int32)
    bits = jax.jit(bits_from_indices, static_argnums=1)(indices, 18)
    assert bits.shape == (4, 5, 16, 16, 18)
    np.testing.assert_array_equal(jax.jit(indices_from_bits)(bits), indices)
    assert int(indices_from_bits(jnp.ones((18,)))) == 2**18 - 1


def test_num_bits_out_of_range_raises():
    with pytest.raises(ValueError, match="num_bits=32"):
        bits_from_indices(jnp.zeros((2,), jnp.int32), 32)
    with pytest.raises(ValueError, match="entropy_groups=7"):
        LFQ(6, entropy_groups=7)


def test_lfq_quantizes_to_sign_with_identity_gradient():
    lfq = LFQ(8)
    z = _normal((3, 4, 8), 1)
    z = z.at[0, 0, 0].set(0.0)  # Eq. 5.3: sign(0) = -1
    z_q, aux = _quantize(z, 8)
    expected = np.where(np.asarray(z) > 0, 1.0, -1.0)
    np.testing.assert_array_equal(z_q, expected)
    weights = 2 ** np.arange(8)
    np.testing.assert_array_equal(aux["indices"], np.sum((np.asarray(z) > 0) * weights, -1))
    np.testing.assert_array_equal(lfq.codes_from_indices(aux["indices"]), z_q)
    w = _normal(z.shape, 2)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(lfq(z)[0] * w)))(z)
    np.testing.assert_allclose(grad, w, rtol=0, atol=0)


def test_lfq_diagnostics_and_commitment():
    z = _normal((40, 5), 3)
    _, aux = _quantize(z, 5)
    zn = np.asarray(z)
    q = np.where(zn > 0, 1.0, -1.0)
    losses, metrics = aux["losses"], aux["metrics"]
    np.testing.assert_allclose(losses["commitment"], np.mean((zn - q) ** 2), rtol=1e-6)
    used = len(np.unique(np.asarray(aux["indices"])))
    np.testing.assert_allclose(metrics["codebook_usage"], used / 32, rtol=1e-6)
    m = np.mean(zn > 0, axis=0)
    bit_h = -(m * np.log2(m) + (1 - m) * np.log2(1 - m))
    np.testing.assert_allclose(metrics["bit_entropy"], bit_h, rtol=1e-5)
    np.testing.assert_allclose(
        losses["entropy"], metrics["per_sample_entropy"] - metrics["codebook_entropy"], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("k", "temperature"), [(4, 0.5), (5, 0.5), (6, 0.5), (7, 0.5), (8, 0.5), (6, 0.01)]
)
def test_entropies_match_brute_force(k, temperature):
    z = _random_latents(96, k, seed=k, scale=0.3 if temperature > 0.1 else 0.01)
    _, aux = _quantize(jnp.asarray(z).reshape(2, 48, k), k, entropy_temperature=temperature)
    sample_h, codebook_h = _brute_force_entropies(z.astype(np.float64), temperature)
    # The entropies must be informative, not saturated at 0 or K log 2.
    assert 0.05 < sample_h < k * np.log(2) - 0.05
    assert sample_h + 0.05 < codebook_h < k * np.log(2)
    np.testing.assert_allclose(aux["metrics"]["per_sample_entropy"], sample_h, atol=1e-5)
    np.testing.assert_allclose(aux["metrics"]["codebook_entropy"], codebook_h, atol=1e-5)


@pytest.mark.parametrize(("k", "groups"), [(8, 2), (7, 3), (6, 6)])
def test_grouped_codebook_entropy_matches_brute_force_per_group(k, groups):
    temperature = 0.5
    z = _random_latents(64, k, seed=10 + k)
    _, aux = _quantize(jnp.asarray(z), k, entropy_temperature=temperature, entropy_groups=groups)
    expected = sum(
        _brute_force_entropies(z[:, idx].astype(np.float64), temperature)[1]
        for idx in np.array_split(np.arange(k), groups)
    )
    np.testing.assert_allclose(aux["metrics"]["codebook_entropy"], expected, atol=1e-5)
    # Sub-grouping ignores dependence between groups: it can only over-estimate.
    exact = _brute_force_entropies(z.astype(np.float64), temperature)[1]
    assert float(aux["metrics"]["codebook_entropy"]) >= exact - 1e-5


def test_codebook_entropy_k18_thesis_token_count():
    k, n = 18, 1280  # one 17x128x128 clip -> 5x16x16 tokens
    z = _normal((n, k), 4)
    h = jax.jit(codebook_entropy)(4.0 * z / 0.01)
    assert np.isfinite(float(h))
    # At most log(#tokens) nats for near-one-hot assignments, far below log(2^18).
    assert 0.0 < float(h) < k * np.log(2.0)
    assert float(h) < np.log(n) + 0.5
    # Uniform assignments (z = 0) give exactly the uniform distribution over 2^18 codes.
    h_uniform = jax.jit(codebook_entropy)(jnp.zeros((n, k)))
    np.testing.assert_allclose(h_uniform, k * np.log(2.0), rtol=1e-5)
    h_grouped = jax.jit(grouped_codebook_entropy, static_argnums=1)(jnp.zeros((n, k)), 3)
    np.testing.assert_allclose(h_grouped, k * np.log(2.0), rtol=1e-5)


@pytest.mark.parametrize("k", [6, 18])
def test_entropy_and_commitment_losses_are_differentiable(k):
    lfq = LFQ(k, entropy_temperature=0.5)
    z = _normal((1280, k), 5) * 0.3

    def loss(z):
        _, aux = lfq(z)
        return aux["losses"]["entropy"] + 0.25 * aux["losses"]["commitment"]

    loss = jax.jit(loss)
    value, grad = jax.jit(jax.value_and_grad(loss))(z)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad))
    assert float(jnp.max(jnp.abs(grad))) > 0.0
    # Finite-difference check of the directional derivative.
    direction = _normal(z.shape, 6)
    eps = 1e-2
    numeric = (loss(z + eps * direction) - loss(z - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-2, atol=1e-4)


def _largest_intermediate(fn, *args) -> int:
    """Element count of the largest array in ``fn``'s jaxpr, sub-jaxprs included."""

    def walk(jaxpr) -> int:
        largest = 0
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                largest = max(largest, int(np.prod(var.aval.shape)))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        largest = max(largest, walk(sub.jaxpr))
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        largest = max(largest, walk(sub))
        return largest

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_codebook_entropy_functions_match_brute_force_at_odd_k():
    # K = 9 splits into 4 + 5 bits; grouped entropy with 3 groups of 3 bits.
    k, temperature = 9, 0.5
    z = _random_latents(64, k, seed=30, scale=1.0)
    logits = jnp.asarray(4.0 * z / temperature)
    sample_h, exact = _brute_force_entropies(z.astype(np.float64), temperature)
    # Informative: far from both saturations.
    assert sample_h + 1.0 < exact < k * np.log(2) - 0.5
    np.testing.assert_allclose(jax.jit(codebook_entropy)(logits), exact, atol=1e-5)
    per_group = sum(
        _brute_force_entropies(z[:, 3 * g : 3 * g + 3].astype(np.float64), temperature)[1]
        for g in range(3)
    )
    grouped = jax.jit(grouped_codebook_entropy, static_argnums=1)
    np.testing.assert_allclose(grouped(logits, 3), per_group, atol=1e-5)
    np.testing.assert_allclose(grouped(logits, 1), exact, atol=1e-5)


def test_codebook_entropy_never_materialises_tokens_by_codes():
    n, k = 64, 12
    logits = jnp.zeros((n, k))
    full = n * 2**k
    # The half split keeps every array at O(n 2^(k/2) + 2^k): here at most 2^12 elements.
    assert _largest_intermediate(codebook_entropy, logits) <= 2**k < full // 8
    assert _largest_intermediate(lambda x: grouped_codebook_entropy(x, 2), logits) < full // 8


# --- token factorization (Sec. 5.3.2) ----------------------------------------------------


@pytest.mark.parametrize("num_factors", [1, 2, 3, 6])
def test_factorize_round_trips_every_index_k6(num_factors):
    indices = jnp.arange(64, dtype=jnp.int32)
    factors = factorize_indices(indices, 6, num_factors)
    assert factors.shape == (64, num_factors) and factors.dtype == jnp.int32
    sub_vocab = 2 ** (6 // num_factors)
    assert int(factors.min()) == 0 and int(factors.max()) == sub_vocab - 1
    # A bijection: every index has its own tuple of sub-indices.
    assert len({tuple(f) for f in np.asarray(factors)}) == 64
    np.testing.assert_array_equal(unfactorize_indices(factors, 6), indices)


def test_factors_are_the_lfq_indices_of_contiguous_bit_groups():
    rng = np.random.default_rng(7)
    indices = jnp.asarray(rng.integers(0, 2**18, (2, 5, 16, 16)), jnp.int32)
    bits = bits_from_indices(indices, 18)
    for num_factors in (2, 3):
        factors = factorize_indices(indices, 18, num_factors)
        assert factors.shape == (2, 5, 16, 16, num_factors)
        width = 18 // num_factors
        for j in range(num_factors):
            expected = indices_from_bits(bits[..., j * width : (j + 1) * width])
            np.testing.assert_array_equal(factors[..., j], expected)
        np.testing.assert_array_equal(unfactorize_indices(factors, 18), indices)
    # Thesis example: 2^18 -> two 2^9 vocabularies, low bits first.
    np.testing.assert_array_equal(factorize_indices(jnp.int32(2**18 - 1), 18, 2), [511, 511])
    np.testing.assert_array_equal(factorize_indices(jnp.int32(2**9 + 5), 18, 2), [5, 1])


def test_factorization_rejects_uneven_splits():
    with pytest.raises(ValueError, match="num_factors=4.*num_bits=18.*\\[1, 2, 3, 6, 9, 18\\]"):
        factorize_indices(jnp.zeros((3,), jnp.int32), 18, 4)
    with pytest.raises(ValueError, match="num_factors=4"):
        unfactorize_indices(jnp.zeros((3, 4), jnp.int32), 18)
    with pytest.raises(ValueError, match="num_factors=0"):
        factorize_indices(jnp.zeros((3,), jnp.int32), 6, 0)


# --- vector quantizer (Eq. 5.1) -----------------------------------------------------------


def _vq(codebook_size: int, dim: int, seed: int = 0) -> VectorQuantizer:
    return VectorQuantizer(codebook_size, dim, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))


def _vq_call(vq: VectorQuantizer, z: jax.Array):
    graphdef, state = nnx.split(vq)
    return jax.jit(lambda s, z: nnx.merge(graphdef, s)(z))(state, z)


def test_vq_codebook_defaults_and_init():
    vq = nnx.eval_shape(lambda: VectorQuantizer(rngs=nnx.Rngs(0)))
    assert vq.codebook.shape == (1024, 256) and vq.codebook_size == 1024
    codebook = np.asarray(_vq(256, 64).codebook[...])
    limit = np.sqrt(3 / 256)
    assert np.abs(codebook).max() <= limit
    np.testing.assert_allclose(codebook.var(), 1 / 256, rtol=0.05)


def test_vq_picks_the_nearest_code_like_brute_force():
    vq = _vq(32, 8)
    codebook = np.asarray(vq.codebook[...], np.float64)
    z = 0.3 * _normal((4, 6, 8), 31)
    z_q, aux = _vq_call(vq, z)
    distances = np.sum((np.asarray(z, np.float64)[..., None, :] - codebook) ** 2, axis=-1)
    expected = np.argmin(distances, axis=-1)
    np.testing.assert_array_equal(aux["indices"], expected)
    assert aux["indices"].dtype == jnp.int32 and aux["indices"].shape == (4, 6)
    assert len(np.unique(expected)) > 8  # many codes in play, not one winner
    np.testing.assert_allclose(z_q, codebook[expected], atol=1e-6)
    # z + sg(e - z) equals e up to rounding.
    np.testing.assert_allclose(vq.codes_from_indices(aux["indices"]), z_q, atol=1e-6)
    # A code is its own nearest code.
    _, aux = _vq_call(vq, vq.codebook[...][jnp.array([3, 7, 31])])
    np.testing.assert_array_equal(aux["indices"], [3, 7, 31])


def test_vq_never_materialises_tokens_by_codes_by_dims():
    vq = _vq(128, 16)
    graphdef, state = nnx.split(vq)
    z = jnp.zeros((64, 16))
    largest = _largest_intermediate(lambda s, z: nnx.merge(graphdef, s)(z), state, z)
    assert largest == 64 * 128  # the [n, codebook] scores, not [n, codebook, dim]


def test_vq_straight_through_and_loss_gradients():
    vq = _vq(16, 4)
    graphdef, state = nnx.split(vq)
    z = 0.3 * _normal((40, 4), 32)
    w = _normal(z.shape, 33)

    def value(term):
        def f(state, z):
            z_q, aux = nnx.merge(graphdef, state)(z)
            return jnp.sum(z_q * w) if term == "ste" else aux["losses"][term]

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(state, z)

    _, aux = _vq_call(vq, z)
    idx = np.asarray(aux["indices"])
    assert len(np.unique(idx)) >= 4
    codes = np.asarray(vq.codebook[...])[idx]
    zn = np.asarray(z)
    # Straight-through: identity gradient to z, nothing to the codebook.
    _, (g_state, g_z) = value("ste")
    np.testing.assert_array_equal(g_z, w)
    np.testing.assert_array_equal(g_state["codebook"][...], 0.0)
    # Commitment ||sg(e) - z||^2: moves the encoder output only.
    loss, (g_state, g_z) = value("commitment")
    np.testing.assert_allclose(loss, np.mean((zn - codes) ** 2), rtol=1e-6)
    np.testing.assert_allclose(g_z, 2 * (zn - codes) / zn.size, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(g_state["codebook"][...], 0.0)
    # Codebook ||e - sg(z)||^2: moves the chosen codes only, towards their vectors.
    loss, (g_state, g_z) = value("codebook")
    np.testing.assert_allclose(loss, np.mean((zn - codes) ** 2), rtol=1e-6)
    np.testing.assert_array_equal(g_z, 0.0)
    expected = np.zeros((16, 4), np.float32)
    np.add.at(expected, idx, 2 * (codes - zn) / zn.size)
    np.testing.assert_allclose(g_state["codebook"][...], expected, rtol=1e-5, atol=1e-9)
    unused = np.setdiff1d(np.arange(16), idx)
    assert unused.size and np.all(np.asarray(g_state["codebook"][...])[unused] == 0.0)


def test_vq_usage_and_perplexity():
    vq = _vq(8, 4)
    chosen = jnp.array([0, 0, 0, 1, 2, 2])
    z = vq.codebook[...][chosen] + 1e-4 * _normal((6, 4), 34)
    _, aux = _vq_call(vq, z)
    np.testing.assert_array_equal(aux["indices"], chosen)
    p = np.array([3, 1, 2]) / 6
    np.testing.assert_allclose(aux["metrics"]["perplexity"], np.exp(-np.sum(p * np.log(p))))
    np.testing.assert_allclose(aux["metrics"]["codebook_usage"], 3 / 8)
    with pytest.raises(ValueError, match="expects 4 channels"):
        vq(jnp.zeros((2, 5)))


@pytest.mark.parametrize("kind", ["lfq", "vq"])
def test_every_quantizer_returns_indices_losses_metrics(kind):
    if kind == "lfq":
        quantizer, loss_names = LFQ(6), {"commitment", "entropy"}
        metric_names = {"per_sample_entropy", "codebook_entropy", "codebook_usage", "bit_entropy"}
    else:
        quantizer, loss_names = _vq(16, 6), {"commitment", "codebook"}
        metric_names = {"codebook_usage", "perplexity"}
    z = 0.3 * _normal((2, 3, 4, 6), 35)
    z_q, aux = _vq_call(quantizer, z)
    assert set(aux) == {"indices", "losses", "metrics"}
    assert set(aux["losses"]) == loss_names
    assert set(aux["metrics"]) == metric_names
    assert z_q.shape == z.shape and z_q.dtype == jnp.float32
    assert aux["indices"].shape == (2, 3, 4) and aux["indices"].dtype == jnp.int32
    for value in aux["losses"].values():
        assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(float(value))
    assert float(aux["losses"]["commitment"]) > 0
