"""LFQ: index <-> bits (Eq. 5.4), sign with straight-through gradient, and the entropy
terms of Eq. 5.5 checked against a brute-force softmax over all 2^K codes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.models.quantizers import (
    LFQ,
    bits_from_indices,
    codebook_entropy,
    grouped_codebook_entropy,
    indices_from_bits,
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
    np.testing.assert_allclose(aux["commitment_loss"], np.mean((zn - q) ** 2), rtol=1e-6)
    used = len(np.unique(np.asarray(aux["indices"])))
    np.testing.assert_allclose(aux["codebook_usage"], used / 32, rtol=1e-6)
    m = np.mean(zn > 0, axis=0)
    bit_h = -(m * np.log2(m) + (1 - m) * np.log2(1 - m))
    np.testing.assert_allclose(aux["bit_entropy"], bit_h, rtol=1e-5)
    np.testing.assert_allclose(
        aux["entropy_loss"], aux["per_sample_entropy"] - aux["codebook_entropy"], rtol=1e-6
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
    np.testing.assert_allclose(aux["per_sample_entropy"], sample_h, atol=1e-5)
    np.testing.assert_allclose(aux["codebook_entropy"], codebook_h, atol=1e-5)


@pytest.mark.parametrize(("k", "groups"), [(8, 2), (7, 3), (6, 6)])
def test_grouped_codebook_entropy_matches_brute_force_per_group(k, groups):
    temperature = 0.5
    z = _random_latents(64, k, seed=10 + k)
    _, aux = _quantize(jnp.asarray(z), k, entropy_temperature=temperature, entropy_groups=groups)
    expected = sum(
        _brute_force_entropies(z[:, idx].astype(np.float64), temperature)[1]
        for idx in np.array_split(np.arange(k), groups)
    )
    np.testing.assert_allclose(aux["codebook_entropy"], expected, atol=1e-5)
    # Sub-grouping ignores dependence between groups: it can only over-estimate.
    exact = _brute_force_entropies(z.astype(np.float64), temperature)[1]
    assert float(aux["codebook_entropy"]) >= exact - 1e-5


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
        return aux["entropy_loss"] + 0.25 * aux["commitment_loss"]

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
