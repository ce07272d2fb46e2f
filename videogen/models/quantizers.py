"""Quantizers: lookup-free quantization (LFQ, thesis Sec. 5.3.1), the VQ codebook of the
MAGVIT 3D-VQ (Sec. 3.2, Eq. 5.1) and the residual VQ of the SoundStream audio tokenizer
(Sec. 8.3.1, `ResidualVQ`), with one output contract.

Every quantizer's ``__call__(z)`` returns ``(z_q, aux)`` with a straight-through
``z_q`` and ``aux = {"indices": int32 [...], "losses": {name: unweighted scalar},
"metrics": {name: array for logging}}``. A trainer weights each loss by its
``f"{name}_weight"`` without knowing which quantizer it has.

LFQ: each of the K latent dimensions is quantized independently to {-1, +1}
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

Token factorization (Sec. 5.3.2): `factorize_indices` splits a 2^K LFQ index
into equal sub-vocabularies (2^18 -> 2 x 2^9) for a language model's
embeddings and prediction heads; `unfactorize_indices` inverts it.

Audio tokens (Sec. 8.3.1): `flatten_audio_tokens` lays RVQ tokens out level by
level with a disjoint id range per level (4 x 1024 -> 4096 ids);
`unflatten_audio_tokens` inverts it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

# Largest K whose indices fit in int32.
MAX_BITS = 31
# Logical axis names of the VQ codebook (`videogen.sharding` maps them to mesh axes).
CODEBOOK_AXES = ("codebook", "channels")
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


def _check_factors(num_bits: int, num_factors: int) -> int:
    """Bits per factor; raises unless ``num_factors`` divides ``num_bits``."""
    _check_num_bits(num_bits)
    if num_factors < 1 or num_bits % num_factors:
        divisors = [d for d in range(1, num_bits + 1) if num_bits % d == 0]
        raise ValueError(
            f"cannot factorize a 2^{num_bits} vocabulary into num_factors={num_factors} equal "
            f"sub-vocabularies: num_factors must divide num_bits={num_bits}; use one of {divisors}."
        )
    return num_bits // num_factors


def factorize_indices(
    indices: Int[Array, "..."], num_bits: int, num_factors: int
) -> Int[Array, "... f"]:
    """Split 2^num_bits LFQ indices into ``num_factors`` sub-indices of 2^(num_bits/num_factors).

    Factor ``j`` holds bits ``j*b .. (j+1)*b - 1`` of the index (``b`` bits per
    factor), i.e. `indices_from_bits` of that slice of latent channels, low bits
    first: ``[...] -> [..., num_factors]`` int32.
    """
    bits = _check_factors(num_bits, num_factors)
    shifts = bits * jnp.arange(num_factors, dtype=jnp.int32)
    mask = jnp.int32((1 << bits) - 1)
    return jnp.right_shift(indices.astype(jnp.int32)[..., None], shifts) & mask


def unfactorize_indices(factors: Int[Array, "... f"], num_bits: int) -> Int[Array, "..."]:
    """Inverse of `factorize_indices`: ``[..., num_factors] -> [...]`` int32 indices."""
    num_factors = factors.shape[-1]
    bits = _check_factors(num_bits, num_factors)
    shifts = bits * jnp.arange(num_factors, dtype=jnp.int32)
    return jnp.sum(jnp.left_shift(factors.astype(jnp.int32), shifts), axis=-1, dtype=jnp.int32)


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


def _codebook_usage(indices: Int[Array, "n"], codebook_size: int) -> Float[Array, ""]:
    """Fraction of the codes that occur; sorting keeps memory O(n) for any codebook size."""
    s = jnp.sort(indices)
    num_unique = 1 + jnp.sum(s[1:] != s[:-1])
    return num_unique.astype(jnp.float32) / float(codebook_size)


class LFQ(nnx.Module):
    """Lookup-free quantizer with the entropy penalty; has no parameters.

    ``__call__(z)`` returns ``(z_q, aux)``: ``z_q = sign(z)`` in {-1, +1} with a
    straight-through gradient, and ``aux`` with
      * ``indices`` int32 ``[...]``,
      * ``losses``: ``commitment``, the mean over ELEMENTS of ``(z - sg(q))^2``
        (independent of K), and ``entropy`` = ``per_sample_entropy -
        codebook_entropy`` (Eq. 5.5, nats),
      * ``metrics``: ``per_sample_entropy`` E[H(q(z))] and ``codebook_entropy``
        H[E(q(z))] (nats), ``codebook_usage`` (fraction of the 2^K codes used in
        this call) and ``bit_entropy`` ``[K]`` (bits; 1 = the bit is set half the time).
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
            "losses": {
                "commitment": jnp.mean(jnp.square(z - jax.lax.stop_gradient(q))),
                "entropy": sample_h - codebook_h,
            },
            "metrics": {
                "per_sample_entropy": sample_h,
                "codebook_entropy": codebook_h,
                "codebook_usage": _codebook_usage(indices.reshape(-1), self.codebook_size),
                "bit_entropy": _bit_entropy(positive.reshape(-1, self.num_bits)),
            },
        }
        return z_q, aux


class VectorQuantizer(nnx.Module):
    """VQ-VAE quantizer with a learned codebook (Eq. 5.1; MAGVIT 3D-VQ: 1024 x 256).

    Each vector ``z [..., dim]`` goes to its nearest code by squared L2 distance.
    ``__call__(z)`` returns ``(z_q, aux)``: ``z_q`` = that code in the forward pass
    with a straight-through gradient (identity to ``z``), and ``aux`` with
      * ``indices`` int32 ``[...]`` in ``[0, codebook_size)``,
      * ``losses``: ``commitment`` = mean over elements of ``(z - sg(e))^2``
        (gradient to the encoder only) and ``codebook`` = mean of
        ``(sg(z) - e)^2`` (gradient to the codebook only),
      * ``metrics``: ``codebook_usage`` (fraction of codes used in this call) and
        ``perplexity`` (exp of the entropy of the code histogram; codebook_size at most).

    The codebook is learned by the codebook loss, not by EMA updates: the thesis
    does not name the update rule for the 3D-VQ, and Sec. 5.3.1 lists the codebook
    loss among MAGVIT's losses ("excluding the inapplicable codebook loss" for LFQ).
    Initialisation (also not in the thesis, the public MAGVIT code's choice): uniform in
    ``+-sqrt(3 / codebook_size)``, i.e. variance ``1 / codebook_size`` per entry.
    Distances use ``-2 z.e + ||e||^2`` (``||z||^2`` is the same for every code,
    so it is left out of the argmin), never an ``[n, codebook_size, dim]`` array.
    """

    def __init__(
        self,
        codebook_size: int = 1024,
        embedding_dim: int = 256,
        *,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if codebook_size < 1 or embedding_dim < 1:
            raise ValueError(
                f"codebook_size={codebook_size} and embedding_dim={embedding_dim} must both "
                "be positive."
            )
        self.embedding_dim = embedding_dim
        limit = float(np.sqrt(3.0 / codebook_size))
        self.codebook = nnx.Param(
            jax.random.uniform(
                rngs.params(), (codebook_size, embedding_dim), param_dtype, -limit, limit
            ),
            out_sharding=CODEBOOK_AXES,
        )

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def codes_from_indices(self, indices: Int[Array, "..."]) -> Float[Array, "... d"]:
        """Token indices ``[...]`` -> codebook vectors ``[..., embedding_dim]`` (float32)."""
        return jnp.take(self.codebook[...].astype(jnp.float32), indices, axis=0)

    def nearest_indices(self, z: Float[Array, "... d"]) -> Int[Array, "..."]:
        """Index of the nearest code (squared L2) for each vector of ``z [..., dim]``."""
        codebook = self.codebook[...].astype(jnp.float32)
        flat = z.astype(jnp.float32).reshape(-1, self.embedding_dim)
        # HIGHEST: TPUs' default single bf16 pass (~3 significant digits) can mis-rank close codes.
        scores = jnp.sum(jnp.square(codebook), axis=-1) - 2.0 * jnp.matmul(
            flat, codebook.T, precision=_HIGHEST
        )
        return jnp.argmin(scores, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])

    def __call__(
        self, z: Float[Array, "... d"]
    ) -> tuple[Float[Array, "... d"], dict[str, jax.Array]]:
        """Quantize ``z [..., dim]``; returns ``(z_q [..., dim], aux)`` (see class docstring)."""
        if z.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"VectorQuantizer expects {self.embedding_dim} channels in the last axis, got "
                f"shape {z.shape}."
            )
        z = z.astype(jnp.float32)
        indices = self.nearest_indices(z)
        codes = self.codes_from_indices(indices)
        z_q = z + jax.lax.stop_gradient(codes - z)
        counts = jnp.bincount(indices.reshape(-1), length=self.codebook_size)
        aux = {
            "indices": indices,
            "losses": {
                "commitment": jnp.mean(jnp.square(z - jax.lax.stop_gradient(codes))),
                "codebook": jnp.mean(jnp.square(jax.lax.stop_gradient(z) - codes)),
            },
            "metrics": {
                "codebook_usage": _codebook_usage(indices.reshape(-1), self.codebook_size),
                "perplexity": jnp.exp(_entropy(counts / indices.size)),
            },
        }
        return z_q, aux


class CodebookState(nnx.Variable):
    """Quantizer state updated in the forward pass (EMA codebooks), never by gradients.

    A separate type from `nnx.Param`, so an optimizer over ``nnx.Param`` leaves it
    alone and ``nnx.split(model, nnx.Param, ...)`` keeps it with the other state.
    """


def flatten_audio_tokens(tokens: Int[Array, "b l f"], codebook_size: int) -> Int[Array, "b n"]:
    """Level-major flattening of RVQ tokens into one id sequence (thesis Sec. 8.3.1).

    ``[b, levels, frames] -> [b, levels * frames]``: all frames of level 0, then
    all of level 1, ...; level ``l`` owns the disjoint ids
    ``[l * codebook_size, (l + 1) * codebook_size)`` (4 x 1024 -> 4096 ids).
    """
    levels = tokens.shape[1]
    offsets = codebook_size * jnp.arange(levels, dtype=jnp.int32)[None, :, None]
    return (tokens.astype(jnp.int32) + offsets).reshape(tokens.shape[0], -1)


def unflatten_audio_tokens(
    ids: Int[Array, "b n"], num_levels: int, codebook_size: int
) -> Int[Array, "b l f"]:
    """Inverse of `flatten_audio_tokens`: ``[b, levels * frames] -> [b, levels, frames]``."""
    if ids.shape[1] % num_levels:
        raise ValueError(
            f"{ids.shape[1]} audio ids do not split into num_levels={num_levels} equal levels; "
            "pass the full level-major sequence from flatten_audio_tokens."
        )
    tokens = ids.astype(jnp.int32).reshape(ids.shape[0], num_levels, -1)
    offsets = codebook_size * jnp.arange(num_levels, dtype=jnp.int32)[None, :, None]
    return tokens - offsets


def _nearest_codes(flat: Float[Array, "n d"], codebook: Float[Array, "k d"]) -> Int[Array, " n"]:
    """Nearest code by squared L2 as ``||e||^2 - 2 z.e`` (no ``[n, k, d]`` array)."""
    scores = jnp.sum(jnp.square(codebook), axis=-1) - 2.0 * jnp.matmul(
        flat, codebook.T, precision=_HIGHEST
    )
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)


class ResidualVQ(nnx.Module):
    """Residual vector quantizer with EMA codebooks (SoundStream, thesis Sec. 8.3.1: 4 x 1024).

    Level ``l`` quantizes the residual ``r_l = z - sum_{j<l} e_j`` to its nearest
    code ``e_l`` in codebook ``l``; the quantized vector is the sum of the codes
    of the levels in use. ``__call__(z)`` returns ``(z_q, aux)`` like the other
    quantizers: ``z_q`` with a straight-through gradient (identity to ``z``), and
      * ``indices`` int32 ``[..., num_levels]`` (every level, used or not),
      * ``losses``: ``commitment`` = mean over elements of ``(z - sg(z_q))^2``,
      * ``metrics`` (per level, ``[num_levels]``): ``codebook_usage`` (fraction of
        codes used in this call), ``perplexity`` (exp entropy of the code
        histogram), ``residual_error`` (mean squared residual after the level),
        and ``levels_used`` (mean number of levels per example).

    Training (``deterministic=False``, what ``model.train()`` sets) also
      * updates each codebook by EMA (VQ-VAE-2 style): ``cluster_size`` and
        ``embedding_sum`` decay by ``decay`` towards this call's assignment counts
        and sums of assigned residuals; a code becomes ``embedding_sum /
        cluster_size``. They live in `CodebookState` variables, so under
        ``jax.jit`` the new values leave the function with the rest of the nnx
        state (``nnx.jit``, or ``nnx.split``/``nnx.merge`` and returning the state;
        inside ``jax.grad`` / ``jax.vjp`` merge with ``copy=True``, since variables
        made outside that trace may not be updated in it);
      * restarts dead codes: a code whose EMA cluster size falls below
        ``dead_code_threshold`` (assignments per call) becomes a random residual of
        the current batch at its level. Cluster sizes start at the threshold, so
        codes no vector picks in the first step are re-drawn from the data;
      * applies quantizer dropout (SoundStream): each example (leading axis) uses
        the first ``n`` levels, ``n`` uniform in ``[1, num_levels]``, so one model
        serves every bit rate. Only used levels update their codebooks.
    Evaluation (``deterministic=True``, ``model.eval()``) uses every level and
    changes nothing. Randomness comes from the ``dropout`` stream of ``rngs``.
    """

    def __init__(
        self,
        num_levels: int = 4,
        codebook_size: int = 1024,
        embedding_dim: int = 128,
        *,
        decay: float = 0.99,
        dead_code_threshold: float = 0.1,
        quantizer_dropout: bool = True,
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ):
        if num_levels < 1 or codebook_size < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_levels={num_levels}, codebook_size={codebook_size} and "
                f"embedding_dim={embedding_dim} must all be positive."
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay} must be in [0, 1), e.g. 0.99.")
        if dead_code_threshold < 0:
            raise ValueError(
                f"dead_code_threshold={dead_code_threshold} must be >= 0 (0 disables restarts)."
            )
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.quantizer_dropout = quantizer_dropout
        self.deterministic = deterministic
        shape = (num_levels, codebook_size, embedding_dim)
        # Same scale as `VectorQuantizer`; the first training steps replace unused codes.
        limit = float(np.sqrt(3.0 / codebook_size))
        codebooks = jax.random.uniform(rngs.params(), shape, jnp.float32, -limit, limit)
        axes = (None, *CODEBOOK_AXES)
        self.codebooks = CodebookState(codebooks, out_sharding=axes)
        size = jnp.full(shape[:2], dead_code_threshold, jnp.float32)
        self.cluster_size = CodebookState(size, out_sharding=axes[:2])
        self.embedding_sum = CodebookState(codebooks * size[..., None], out_sharding=axes)
        self.rngs = rngs.dropout.fork()

    def detokenize(self, tokens: Int[Array, "b l f"]) -> Float[Array, "b f d"]:
        """Sum of the codes of ``tokens [b, levels, frames]``; fewer levels = coarser."""
        levels = tokens.shape[1]
        if not 1 <= levels <= self.num_levels:
            raise ValueError(
                f"tokens have {levels} levels; this quantizer has 1 to {self.num_levels}."
            )
        codebooks = self.codebooks[...][:levels]
        codes = jax.vmap(lambda cb, idx: jnp.take(cb, idx, axis=0), in_axes=(0, 1))(
            codebooks, tokens
        )
        return jnp.sum(codes, axis=0)

    def tokenize(
        self, z: Float[Array, "b f d"], num_levels: int | None = None
    ) -> Int[Array, "b l f"]:
        """Tokens ``[b, levels, frames]`` of the first ``num_levels`` (default all) levels."""
        num_levels = self.num_levels if num_levels is None else num_levels
        indices, _, _ = self._quantize(z.astype(jnp.float32), num_levels)
        return jnp.moveaxis(indices, -1, 1)

    def _quantize(
        self, z: Float[Array, "... d"], num_levels: int
    ) -> tuple[Int[Array, "... l"], list[Float[Array, "n d"]], Float[Array, "l n d"]]:
        """Indices ``[..., l]``, the ``l + 1`` residuals (``r_0 = z``, then after each
        level) and the chosen codes ``[l, n, d]``."""
        residual = z.reshape(-1, self.embedding_dim)
        codebooks = self.codebooks[...]
        indices, residuals, codes = [], [residual], []
        for level in range(num_levels):
            idx = _nearest_codes(residual, codebooks[level])
            code = jnp.take(codebooks[level], idx, axis=0)
            residual = residual - code
            indices.append(idx)
            residuals.append(residual)
            codes.append(code)
        indices = jnp.stack(indices, -1).reshape(*z.shape[:-1], num_levels)
        return indices, residuals, jnp.stack(codes)

    def _update_codebooks(
        self,
        indices: Int[Array, "n l"],
        residuals: list[Float[Array, "n d"]],
        active: Float[Array, "n l"],
    ) -> None:
        """EMA step of every codebook on its used levels' residuals, then dead-code restarts."""
        one_hot = jax.nn.one_hot(indices, self.codebook_size, dtype=jnp.float32)
        one_hot = one_hot * active[..., None]  # [n, l, k]
        counts = jnp.sum(one_hot, axis=0)
        sums = jnp.einsum("nlk,lnd->lkd", one_hot, jnp.stack(residuals[:-1]), precision=_HIGHEST)
        d = self.decay
        size = d * self.cluster_size[...] + (1.0 - d) * counts
        embedding_sum = d * self.embedding_sum[...] + (1.0 - d) * sums
        # A code no vector picked keeps its vector exactly (both EMA terms only decayed);
        # a picked one has size >= (1 - decay) * count > 0.
        codebooks = jnp.where(
            counts[..., None] > 0,
            embedding_sum / jnp.maximum(size, 1e-30)[..., None],
            self.codebooks[...],
        )
        n = indices.shape[0]
        picks = jax.random.randint(self.rngs(), (self.num_levels, self.codebook_size), 0, n)
        samples = jax.vmap(lambda r, p: r[p])(jnp.stack(residuals[:-1]), picks)
        dead = size < self.dead_code_threshold
        codebooks = jnp.where(dead[..., None], samples, codebooks)
        size = jnp.where(dead, self.dead_code_threshold, size)
        self.codebooks[...] = codebooks
        self.cluster_size[...] = size
        self.embedding_sum[...] = codebooks * size[..., None]

    def __call__(
        self, z: Float[Array, "b ... d"]
    ) -> tuple[Float[Array, "b ... d"], dict[str, jax.Array]]:
        """Quantize ``z [b, ..., dim]``; returns ``(z_q, aux)`` (see class docstring)."""
        if z.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"ResidualVQ expects {self.embedding_dim} channels in the last axis, got "
                f"shape {z.shape}."
            )
        z = z.astype(jnp.float32)
        levels = self.num_levels
        indices, residuals, codes = self._quantize(jax.lax.stop_gradient(z), levels)
        flat_indices = indices.reshape(-1, levels)
        if self.deterministic or not self.quantizer_dropout:
            used = jnp.full((z.shape[0],), levels, jnp.int32)
        else:
            used = jax.random.randint(self.rngs(), (z.shape[0],), 1, levels + 1)
        per_example = (jnp.arange(levels) < used[:, None]).astype(jnp.float32)  # [b, l]
        active = jnp.broadcast_to(
            per_example.reshape(z.shape[0], *([1] * (z.ndim - 2)), levels),
            (*z.shape[:-1], levels),
        ).reshape(-1, levels)
        quantized = jnp.einsum("lnd,nl->nd", codes, active).reshape(z.shape)
        z_q = z + jax.lax.stop_gradient(quantized - z)
        counts = jax.vmap(lambda idx: jnp.bincount(idx, length=self.codebook_size), 1)(flat_indices)
        aux = {
            "indices": indices,
            "losses": {"commitment": jnp.mean(jnp.square(z - jax.lax.stop_gradient(quantized)))},
            "metrics": {
                "codebook_usage": jnp.mean(counts > 0, axis=-1, dtype=jnp.float32),
                "perplexity": jnp.exp(jax.vmap(_entropy)(counts / flat_indices.shape[0])),
                "residual_error": jnp.stack([jnp.mean(jnp.square(r)) for r in residuals[1:]]),
                "levels_used": jnp.mean(used.astype(jnp.float32)),
            },
        }
        if not self.deterministic:
            self._update_codebooks(flat_indices, residuals, active)
        return z_q, aux
