"""Lookup-free quantization (LFQ, thesis Sec. 5.3.1).

Each of the K latent dimensions is quantized independently to {-1, +1}
(Eq. 5.3); the token index is the integer whose bit i is set when z_i > 0
(Eq. 5.4, bit i (0-based) has weight 2^i), so the vocabulary is 2^K with no
codebook to look up.

Entropy penalty (Eq. 5.5): ``entropy_loss = E[H(q(z))] - H[E(q(z))]`` with the
soft assignment q(z) = softmax over all codes c in {-1,1}^K of
``-||z - c||^2 / temperature``. Because ``||z - c||^2 = const - 2 <z, c>``, q
factorizes over bits with ``p(bit_i = 1) = sigmoid(4 z_i / temperature)``, so

* ``H(q(z)) = sum_i H(p_i)`` (exact, per token), and
* ``E(q(z))[code (a, b)] = mean_n P1[n, a] P2[n, b]`` after splitting the bits
  into a low half (code a) and a high half (code b): one ``[2^K1, N] @ [N, 2^K2]``
  matmul gives the exact token-averaged distribution over all 2^K codes without
  an ``[N, 2^K]`` array (512 x 512 at K = 18).

Entropies use the natural log (nats); ``bit_entropy`` is a diagnostic in bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

# Largest K whose indices fit in int32.
MAX_BITS = 31
# Keeps log finite (and its gradient bounded) for codes of zero mean probability.
_LOG_EPS = 1e-10
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_num_bits(num_bits: int) -> None:
    if not 1 <= num_bits <= MAX_BITS:
        raise ValueError(
            f"num_bits={num_bits} is out of range: LFQ indices are int32, so use 1 to "
            f"{MAX_BITS} bits."
        )


def indices_from_bits(bits: Bool[Array, "... k"] | Float[Array, "... k"]) -> Int[Array, "..."]:
    """Token index ``sum_i 2^i [bits_i > 0]`` (Eq. 5.4); accepts {0,1}, bool or {-1,+1} bits."""
    num_bits = bits.shape[-1]
    _check_num_bits(num_bits)
    weights = jnp.left_shift(jnp.int32(1), jnp.arange(num_bits, dtype=jnp.int32))
    return jnp.sum(jnp.where(bits > 0, weights, 0), axis=-1, dtype=jnp.int32)


def bits_from_indices(indices: Int[Array, "..."], num_bits: int) -> Int[Array, "... k"]:
    """Inverse of `indices_from_bits`: ``[...] -> [..., num_bits]`` int32 in {0, 1}."""
    _check_num_bits(num_bits)
    shifts = jnp.arange(num_bits, dtype=jnp.int32)
    return jnp.right_shift(indices.astype(jnp.int32)[..., None], shifts) & 1


def _code_bits(num_bits: int) -> np.ndarray:
    """``[2^num_bits, num_bits]`` float32 table: row a holds the bits of code a."""
    codes = np.arange(2**num_bits)[:, None]
    return ((codes >> np.arange(num_bits)) & 1).astype(np.float32)


def _entropy(probs: jax.Array) -> jax.Array:
    return -jnp.sum(probs * jnp.log(probs + _LOG_EPS))


def per_sample_entropy(logits: Float[Array, "n k"]) -> Float[Array, ""]:
    """``E_n[H(q(z_n))]`` in nats from bit logits ``4 z / temperature``: ``[n, k] -> []``."""
    logits = logits.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    # H(p) = -p log p - (1-p) log(1-p), with log-sigmoids: exact and finite at saturation.
    h = -(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits))
    return jnp.mean(jnp.sum(h, axis=-1))


def _log_code_probs(logits: Float[Array, "n k"]) -> Float[Array, "n codes"]:
    """log q over the 2^k codes of these bits: one ``[n, k] @ [k, 2^k]`` matmul pair."""
    table = jnp.asarray(_code_bits(logits.shape[-1]))
    return jnp.matmul(jax.nn.log_sigmoid(logits), table.T, precision=_HIGHEST) + jnp.matmul(
        jax.nn.log_sigmoid(-logits), 1.0 - table.T, precision=_HIGHEST
    )


def codebook_entropy(logits: Float[Array, "n k"]) -> Float[Array, ""]:
    """Exact ``H[E_n(q(z_n))]`` in nats over all 2^k codes: ``[n, k] -> []``.

    Splits the bits into halves so the mean distribution is ``P1^T @ P2 / n``,
    a ``[2^(k//2), 2^(k - k//2)]`` matrix; memory is ``O(n 2^(k/2))``.
    """
    logits = logits.astype(jnp.float32)
    n, k = logits.shape
    k1 = k // 2
    p1 = jnp.exp(_log_code_probs(logits[:, :k1]))
    p2 = jnp.exp(_log_code_probs(logits[:, k1:]))
    mean_probs = jnp.matmul(p1.T, p2, precision=_HIGHEST) / n
    return _entropy(mean_probs)


def grouped_codebook_entropy(logits: Float[Array, "n k"], num_groups: int) -> Float[Array, ""]:
    """Sum of exact codebook entropies of ``num_groups`` disjoint contiguous groups of bits.

    ``num_groups = 1`` is exact; more groups is the thesis' approximation for
    very large K (it ignores dependence between groups, so it upper-bounds the
    exact entropy).
    """
    k = logits.shape[-1]
    if not 1 <= num_groups <= k:
        raise ValueError(f"entropy_groups={num_groups} must be between 1 and num_bits={k}.")
    bounds = np.cumsum([0] + [len(g) for g in np.array_split(np.arange(k), num_groups)])
    return sum(codebook_entropy(logits[:, lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:]))


def _bit_entropy(bits: Bool[Array, "n k"]) -> Float[Array, "k"]:
    """Entropy in bits of each bit's empirical frequency of being set."""
    m = jnp.mean(bits.astype(jnp.float32), axis=0)
    return (jax.scipy.special.entr(m) + jax.scipy.special.entr(1.0 - m)) / jnp.log(2.0)


def _codebook_usage(indices: Int[Array, "n"], num_bits: int) -> Float[Array, ""]:
    """Fraction of the 2^K codes that occur; sorting keeps memory O(n) for any K."""
    s = jnp.sort(indices)
    num_unique = 1 + jnp.sum(s[1:] != s[:-1])
    return num_unique.astype(jnp.float32) / (2.0**num_bits)


class LFQ(nnx.Module):
    """Lookup-free quantizer with the entropy penalty; has no parameters.

    ``__call__(z)`` returns ``(z_q, aux)``: ``z_q = sign(z)`` in {-1, +1} with a
    straight-through gradient, and ``aux`` with
      * ``indices`` int32 ``[...]``,
      * ``commitment_loss``: mean over ELEMENTS of ``(z - sg(q))^2`` (independent of K),
      * ``per_sample_entropy`` E[H(q(z))], ``codebook_entropy`` H[E(q(z))] and
        ``entropy_loss`` = their difference (Eq. 5.5), in nats,
      * diagnostics ``codebook_usage`` (fraction of 2^K codes used in this call)
        and ``bit_entropy`` ``[K]`` (bits; 1 = the bit is set half the time).
    Everything is computed in float32 and averaged over all leading axes.
    """

    def __init__(
        self, num_bits: int, *, entropy_temperature: float = 0.01, entropy_groups: int = 1
    ):
        _check_num_bits(num_bits)
        if not 1 <= entropy_groups <= num_bits:
            raise ValueError(
                f"entropy_groups={entropy_groups} must be between 1 and num_bits={num_bits}."
            )
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature={entropy_temperature} must be positive.")
        self.num_bits = num_bits
        self.entropy_temperature = entropy_temperature
        self.entropy_groups = entropy_groups

    @property
    def codebook_size(self) -> int:
        return 2**self.num_bits

    def codes_from_indices(self, indices: Int[Array, "..."]) -> Float[Array, "... k"]:
        """Token indices ``[...]`` -> quantized vectors ``[..., K]`` in {-1, +1} (float32)."""
        return 2.0 * bits_from_indices(indices, self.num_bits).astype(jnp.float32) - 1.0

    def __call__(
        self, z: Float[Array, "... k"]
    ) -> tuple[Float[Array, "... k"], dict[str, jax.Array]]:
        """Quantize ``z [..., K]``; returns ``(z_q [..., K], aux)`` (see class docstring)."""
        if z.shape[-1] != self.num_bits:
            raise ValueError(
                f"LFQ expects {self.num_bits} channels in the last axis, got shape {z.shape}."
            )
        z = z.astype(jnp.float32)
        positive = z > 0
        q = jnp.where(positive, 1.0, -1.0)
        # Straight-through: forward is sign(z), backward is the identity.
        z_q = z + jax.lax.stop_gradient(q - z)
        flat = z.reshape(-1, self.num_bits)
        logits = 4.0 * flat / self.entropy_temperature
        sample_h = per_sample_entropy(logits)
        codebook_h = grouped_codebook_entropy(logits, self.entropy_groups)
        indices = indices_from_bits(positive)
        aux = {
            "indices": indices,
            "commitment_loss": jnp.mean(jnp.square(z - jax.lax.stop_gradient(q))),
            "per_sample_entropy": sample_h,
            "codebook_entropy": codebook_h,
            "entropy_loss": sample_h - codebook_h,
            "codebook_usage": _codebook_usage(indices.reshape(-1), self.num_bits),
            "bit_entropy": _bit_entropy(positive.reshape(-1, self.num_bits)),
        }
        return z_q, aux
