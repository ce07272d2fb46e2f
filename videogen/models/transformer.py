"""Transformer blocks shared by the MAGVIT masked transformer and the VideoPoet prefix LM.

MAGVIT (thesis Ch. 6) is a BERT over ``[task prompt, class, visual tokens]`` with
bidirectional attention; VideoPoet (Sec. 8.3.2) is a decoder-only prefix LM,
bidirectional over its prefix and causal over its outputs. Attention therefore
takes an explicit boolean mask ``[b, 1 or heads, q, k]`` (True = may attend),
built by `bidirectional_mask`, `causal_mask` or `prefix_mask`, and one block
type serves both models.

Layer-norm placement is a choice of the stack (``norm_position``):
``"post"`` is BERT's ``x = LN(x + f(x))`` with a layer norm on the input
embeddings; MAGVIT uses it (its transformer is "the BERT transformer adapted
from Flaxformer", Sec. 6.5.1, as in MaskGIT). ``"pre"`` is
``x = x + f(LN(x))`` with a final layer norm, the usual choice for deep
decoder-only LMs because the residual path stays un-normalised and trains
stably without warm-up tricks; the thesis does not say which VideoPoet uses.

KV cache (`TransformerStack.decode`): a functional cache of every layer's keys
and values; prefilling the prefix in one call and then decoding one position at
a time reproduces the full forward pass (tested).

Parameters are float32 by default (``param_dtype``); ``dtype`` sets the
activation/matmul dtype (bfloat16 on accelerators). Attention logits, softmax,
layer norms and output logits are always computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from videogen import sharding
from videogen.models.layers import NORM_AXES

# Logical axis names of the parameters below; the sharding presets (videogen/sharding.py)
# map them to mesh axes. "fsdp_tensor" is Megatron-style tensor parallelism over "heads",
# "mlp" and "vocab" with ZeRO-3 style fsdp over "embed".
QKV_KERNEL_AXES = ("embed", "heads", "head_dim")
QKV_BIAS_AXES = ("heads", "head_dim")
OUT_KERNEL_AXES = ("heads", "head_dim", "embed")
EMBED_AXES = ("embed",)
MLP_IN_AXES = ("embed", "mlp")
MLP_BIAS_AXES = ("mlp",)
MLP_OUT_AXES = ("mlp", "embed")
TOKEN_EMBEDDING_AXES = ("factors", "vocab", "embed")
MASK_EMBEDDING_AXES = ("factors", "embed")
PREFIX_EMBEDDING_AXES = ("prefix_vocab", "embed")
POSITION_EMBEDDING_AXES = ("positions", "embed")
HEAD_KERNEL_AXES = ("factors", "embed", "mlp")
HEAD_HIDDEN_AXES = ("factors", "mlp")
HEAD_NORM_AXES = ("factors", *NORM_AXES)
HEAD_BIAS_AXES = ("factors", "vocab")
# Logical axes of activations (`sharding.constrain`, a no-op outside a sharded train step).
# Under tensor parallelism a device keeps its share of the heads and MLP units from the
# projection that makes them to the one that consumes them, and the residual stream between
# blocks is split by batch only (each tensor device holds all of it, so the next block's
# projections need no gather).
HEADS_ACTIVATION_AXES = ("activation_batch", None, "activation_heads", None)
MLP_ACTIVATION_AXES = ("activation_batch", None, "activation_mlp")
RESIDUAL_ACTIVATION_AXES = ("activation_batch", None, None)

# Table 6.1 of the thesis (MAGVIT transformer variants; B and L follow ViT).
MAGVIT_SIZES = {
    "B": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072},
    "L": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "mlp_dim": 4096},
    "H": {"hidden_size": 1280, "num_layers": 32, "num_heads": 16, "mlp_dim": 5120},
}

# BERT's initialiser: truncated normal with standard deviation 0.02 for every matrix.
_INIT = nnx.initializers.truncated_normal(stddev=0.02)
# Masked attention logits; finite so that a fully masked row gives a uniform row, not NaN.
_MASKED = float(jnp.finfo(jnp.float32).min)

NormPosition = Literal["pre", "post"]


def bidirectional_mask(length: int) -> Bool[Array, "1 1 l l"]:
    """Every position may attend to every position."""
    return jnp.ones((1, 1, length, length), dtype=bool)


def causal_mask(length: int) -> Bool[Array, "1 1 l l"]:
    """Position ``q`` may attend to positions ``k <= q``."""
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


def prefix_mask(prefix_lengths: Int[Array, " b"], length: int) -> Bool[Array, "b 1 l l"]:
    """Prefix-LM mask: the first ``prefix_lengths[i]`` positions of row ``i`` see each other
    (bidirectional); every later position ``q`` sees the whole prefix and positions ``<= q``.
    """
    positions = jnp.arange(length)
    in_prefix = positions[None, :] < jnp.asarray(prefix_lengths)[:, None]  # [b, k]
    return (causal_mask(length)[:, 0] | in_prefix[:, None, :])[:, None]


class Rotary(NamedTuple):
    """Rotary position angles of a sequence: ``cos``/``sin`` of ``[l, p]`` (``p`` rotated
    pairs of each head's dimensions; the other ``head_dim - 2p`` are not rotated)."""

    cos: Float[Array, "l p"]
    sin: Float[Array, "l p"]


def rotary_angles(positions: Int[Array, "l a"], pairs_per_axis: int, base: float) -> Rotary:
    """Axial rotary embedding (RoPE) of ``a``-dimensional integer positions.

    Each axis gets ``pairs_per_axis`` frequencies ``base ** (-i / pairs_per_axis)``;
    so the dot product of a rotated query and key depends on the *difference* of
    their positions only, and attention that reads "the token two to my left" is one
    pattern for every position (translation equivariance). A small ``base`` (~100)
    suits short axes such as an 8x8 latent grid. A position of all zeros is the
    identity rotation (used for prompt tokens, which have no place in the grid).
    """
    positions = jnp.asarray(positions, jnp.float32)
    freqs = base ** (-jnp.arange(pairs_per_axis, dtype=jnp.float32) / pairs_per_axis)
    angles = (positions[:, :, None] * freqs).reshape(positions.shape[0], -1)  # [l, a * pairs]
    return Rotary(jnp.cos(angles), jnp.sin(angles))


def apply_rotary(x: Float[Array, "b l h k"], rotary: Rotary) -> Float[Array, "b l h k"]:
    """Rotates the first ``2p`` dimensions of every head as ``p`` pairs ``(x_i, x_{p+i})``."""
    p = rotary.cos.shape[-1]
    if 2 * p > x.shape[-1]:
        raise ValueError(
            f"rotary angles rotate {p} pairs but heads have {x.shape[-1]} dimensions; "
            "use fewer rotary pairs per axis or larger heads."
        )
    cos = rotary.cos[None, :, None, :].astype(jnp.float32)
    sin = rotary.sin[None, :, None, :].astype(jnp.float32)
    x1 = x[..., :p].astype(jnp.float32)
    x2 = x[..., p : 2 * p].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., 2 * p :]], axis=-1)


def dense(
    x: Float[Array, "... d"], kernel: Float[Array, "d n"], preferred_element_type=None
) -> Float[Array, "... n"]:
    """``x @ kernel`` over ``x``'s last axis, as one matmul of ``x`` flattened to 2-D.

    Same values as ``jnp.einsum("bld,dn->bln", x, kernel)``; XLA:CPU computes that einsum's
    kernel gradient (a contraction over two axes, b and l) 2-2.3x slower than the same
    contraction over their flattened product (BUILD_NOTES.md, "VideoPoet train step"). The
    reshapes are free on every backend.
    """
    y = jnp.matmul(
        x.reshape(-1, x.shape[-1]), kernel, preferred_element_type=preferred_element_type
    )
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(_INIT(rngs.params(), shape, dtype), out_sharding=axes)


def _constant(value: float, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype), out_sharding=axes)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """Layer norm over the last axis in float32 (``scale``/``bias`` broadcast against x)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + epsilon)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class LayerNorm(nnx.Module):
    """Layer norm over the last axis, computed in float32, returning ``dtype``."""

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = _constant(1.0, (num_features,), NORM_AXES, param_dtype)
        self.bias = _constant(0.0, (num_features,), NORM_AXES, param_dtype)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return _layer_norm(x, self.scale[...], self.bias[...], self.epsilon).astype(self.dtype)


class MultiHeadAttention(nnx.Module):
    """Multi-head dot-product self-attention with an explicit boolean mask.

    Projections carry biases (BERT). Attention dropout acts on the attention
    probabilities. Logits and softmax are float32 whatever ``dtype`` is.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        attention_dropout_rate: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; "
                "choose a head count that divides the hidden size."
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dtype = dtype
        qkv_shape = (hidden_size, num_heads, self.head_dim)
        self.query = _param(rngs, qkv_shape, QKV_KERNEL_AXES, param_dtype)
        self.key = _param(rngs, qkv_shape, QKV_KERNEL_AXES, param_dtype)
        self.value = _param(rngs, qkv_shape, QKV_KERNEL_AXES, param_dtype)
        bias_shape = (num_heads, self.head_dim)
        self.query_bias = _constant(0.0, bias_shape, QKV_BIAS_AXES, param_dtype)
        self.key_bias = _constant(0.0, bias_shape, QKV_BIAS_AXES, param_dtype)
        self.value_bias = _constant(0.0, bias_shape, QKV_BIAS_AXES, param_dtype)
        self.out = _param(
            rngs, (num_heads, self.head_dim, hidden_size), OUT_KERNEL_AXES, param_dtype
        )
        self.out_bias = _constant(0.0, (hidden_size,), EMBED_AXES, param_dtype)
        self.dropout = nnx.Dropout(attention_dropout_rate, rngs=rngs)

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param) -> jax.Array:
        y = jnp.einsum("bsd,dhk->bshk", x.astype(self.dtype), kernel[...].astype(self.dtype))
        return sharding.constrain(y + bias[...].astype(self.dtype), HEADS_ACTIVATION_AXES)

    def _attend(
        self,
        q: Float[Array, "b q h k"],
        k: Float[Array, "b s h k"],
        v: Float[Array, "b s h k"],
        mask: Bool[Array, "#b #h q s"],
        deterministic: bool,
    ) -> Float[Array, "b q d"]:
        if mask.ndim != 4:
            raise ValueError(
                f"attention mask has shape {mask.shape}; expected [batch, 1 or heads, "
                "queries, keys], e.g. from causal_mask(length) or prefix_mask(lengths, length)."
            )
        logits = jnp.einsum("bqhd,bshd->bhqs", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask, logits * self.head_dim**-0.5, _MASKED)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = self.dropout(probs, deterministic=deterministic).astype(self.dtype)
        y = sharding.constrain(jnp.einsum("bhqs,bshd->bqhd", probs, v), HEADS_ACTIVATION_AXES)
        out = jnp.einsum("bqhd,hde->bqe", y, self.out[...].astype(self.dtype))
        return out + self.out_bias[...].astype(self.dtype)

    def __call__(
        self,
        x: Float[Array, "b l d"],
        mask: Bool[Array, "#b #h l l"],
        *,
        rotary: Rotary | None = None,
        deterministic: bool = True,
    ) -> Float[Array, "b l d"]:
        """Self-attention over ``[b, l, d]``; ``mask[b, h, q, k]`` True where q may see k.

        ``rotary`` (angles of the ``l`` positions) rotates queries and keys (RoPE).
        """
        q = self._project(x, self.query, self.query_bias)
        k = self._project(x, self.key, self.key_bias)
        v = self._project(x, self.value, self.value_bias)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        return self._attend(q, k, v, mask, deterministic)

    def decode(
        self,
        x: Float[Array, "b s d"],
        mask: Bool[Array, "#b #h s m"],
        keys: Float[Array, "b m h k"],
        values: Float[Array, "b m h k"],
        length: Int[Array, ""],
        rotary: Rotary | None = None,
    ) -> tuple[Float[Array, "b s d"], Float[Array, "b m h k"], Float[Array, "b m h k"]]:
        """Attention of ``s`` new positions ``length .. length+s-1`` over a cache of ``m``.

        Writes the new keys/values at ``length`` and returns them with the output;
        ``mask`` holds the query rows of the full-sequence mask (keys at or beyond
        ``length + s`` must be masked out by the caller). ``rotary`` holds the angles
        of the ``s`` new positions; cached keys were rotated when they were written.
        """
        q = self._project(x, self.query, self.query_bias)
        k = self._project(x, self.key, self.key_bias)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        k = k.astype(keys.dtype)
        v = self._project(x, self.value, self.value_bias).astype(values.dtype)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k, length, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v, length, axis=1)
        y = self._attend(q, keys.astype(self.dtype), values.astype(self.dtype), mask, True)
        return y, keys, values


class Mlp(nnx.Module):
    """Dense -> GELU -> dense (BERT's intermediate and output layers)."""

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        *,
        approximate_gelu: bool = True,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.approximate_gelu = approximate_gelu
        self.dtype = dtype
        self.wi = _param(rngs, (hidden_size, mlp_dim), MLP_IN_AXES, param_dtype)
        self.bi = _constant(0.0, (mlp_dim,), MLP_BIAS_AXES, param_dtype)
        self.wo = _param(rngs, (mlp_dim, hidden_size), MLP_OUT_AXES, param_dtype)
        self.bo = _constant(0.0, (hidden_size,), EMBED_AXES, param_dtype)

    def __call__(self, x: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        dt = self.dtype
        h = dense(x.astype(dt), self.wi[...].astype(dt)) + self.bi[...].astype(dt)
        # The tanh approximation of GELU by default, as MAGVIT's BERT (jax.nn.gelu's default);
        # the erf form for checkpoints trained with it (Hugging Face BERT's "gelu").
        h = jax.nn.gelu(h, approximate=self.approximate_gelu)
        h = sharding.constrain(h, MLP_ACTIVATION_AXES)
        return dense(h, self.wo[...].astype(dt)) + self.bo[...].astype(dt)


class TransformerBlock(nnx.Module):
    """Attention and MLP sub-layers, each with hidden dropout, residual and layer norm.

    ``norm_position="post"``: ``x = LN(x + drop(f(x)))`` (BERT / MAGVIT);
    ``"pre"``: ``x = x + drop(f(LN(x)))``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.1,
        norm_position: NormPosition = "pre",
        layer_norm_epsilon: float = 1e-6,
        approximate_gelu: bool = True,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position={norm_position!r}; expected 'pre' or 'post'.")
        self.norm_position = norm_position
        norm = {"epsilon": layer_norm_epsilon, "dtype": dtype, "param_dtype": param_dtype}
        self.attention_norm = LayerNorm(hidden_size, **norm)
        self.attention = MultiHeadAttention(
            hidden_size,
            num_heads,
            attention_dropout_rate=attention_dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.mlp_norm = LayerNorm(hidden_size, **norm)
        self.mlp = Mlp(
            hidden_size,
            mlp_dim,
            approximate_gelu=approximate_gelu,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def _residuals(
        self, x: jax.Array, attend: Callable[[jax.Array], jax.Array], deterministic: bool
    ) -> jax.Array:
        for norm, layer in ((self.attention_norm, attend), (self.mlp_norm, self.mlp)):
            if self.norm_position == "pre":
                x = x + self.dropout(layer(norm(x)), deterministic=deterministic)
            else:
                x = norm(x + self.dropout(layer(x), deterministic=deterministic))
        return sharding.constrain(x, RESIDUAL_ACTIVATION_AXES)

    def __call__(
        self,
        x: Float[Array, "b l d"],
        mask: Bool[Array, "#b #h l l"],
        *,
        rotary: Rotary | None = None,
        deterministic: bool = True,
    ) -> Float[Array, "b l d"]:
        def attend(h):
            return self.attention(h, mask, rotary=rotary, deterministic=deterministic)

        return self._residuals(x, attend, deterministic)

    def decode(
        self,
        x: Float[Array, "b s d"],
        mask: Bool[Array, "#b #h s m"],
        keys: Float[Array, "b m h k"],
        values: Float[Array, "b m h k"],
        length: Int[Array, ""],
        rotary: Rotary | None = None,
    ) -> tuple[Float[Array, "b s d"], Float[Array, "b m h k"], Float[Array, "b m h k"]]:
        """`__call__` for new positions against cached keys/values (no dropout)."""
        cache = []

        def attend(h):
            y, k, v = self.attention.decode(h, mask, keys, values, length, rotary)
            cache.append((k, v))
            return y

        y = self._residuals(x, attend, deterministic=True)
        return y, *cache[0]


class KVCache(NamedTuple):
    """Keys and values of every layer for positions ``[0, max_length)``; ``length`` are filled."""

    keys: tuple[Float[Array, "b m h k"], ...]
    values: tuple[Float[Array, "b m h k"], ...]
    length: Int[Array, ""]


def _call_block(
    block: TransformerBlock,
    x: jax.Array,
    mask: jax.Array,
    rotary: Rotary | None,
    deterministic: bool,
) -> jax.Array:
    return block(x, mask, rotary=rotary, deterministic=deterministic)


class TransformerStack(nnx.Module):
    """``num_layers`` transformer blocks; ``remat`` recomputes each block in the backward pass.

    With ``norm_position="pre"`` a final layer norm closes the stack; with
    ``"post"`` the caller normalises the input (BERT's embedding layer norm).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        mlp_dim: int,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.1,
        norm_position: NormPosition = "pre",
        layer_norm_epsilon: float = 1e-6,
        approximate_gelu: bool = True,
        remat: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.remat = remat
        self.dtype = dtype
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.blocks = nnx.List(
            TransformerBlock(
                hidden_size,
                num_heads,
                mlp_dim,
                dropout_rate=dropout_rate,
                attention_dropout_rate=attention_dropout_rate,
                norm_position=norm_position,
                layer_norm_epsilon=layer_norm_epsilon,
                approximate_gelu=approximate_gelu,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            for _ in range(num_layers)
        )
        self.final_norm = (
            LayerNorm(hidden_size, epsilon=layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
            if norm_position == "pre"
            else None
        )

    def __call__(
        self,
        x: Float[Array, "b l d"],
        mask: Bool[Array, "#b #h l l"],
        *,
        rotary: Rotary | None = None,
        deterministic: bool = True,
    ) -> Float[Array, "b l d"]:
        """Apply every block to ``[b, l, d]`` under ``mask`` (``[b or 1, heads or 1, l, l]``),
        with queries and keys rotated by ``rotary`` (the ``l`` positions' angles) if given."""
        # Tree mode, as in layers.apply_blocks: works on modules captured from an outer trace;
        # the dropout RNG counters are still advanced.
        call = (
            nnx.remat(_call_block, graph=False, static_argnums=(4,)) if self.remat else _call_block
        )
        x = x.astype(self.dtype)
        for block in self.blocks:
            x = call(block, x, mask, rotary, deterministic)
        return x if self.final_norm is None else self.final_norm(x)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty cache for sequences of up to ``max_length`` positions."""
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        zeros = tuple(jnp.zeros(shape, self.dtype) for _ in self.blocks)
        return KVCache(keys=zeros, values=zeros, length=jnp.zeros((), jnp.int32))

    def decode(
        self,
        x: Float[Array, "b s d"],
        mask: Bool[Array, "#b #h m m"],
        cache: KVCache,
        rotary: Rotary | None = None,
    ) -> tuple[Float[Array, "b s d"], KVCache]:
        """Run positions ``cache.length .. cache.length + s - 1`` against the cache.

        ``mask`` is the full-sequence mask over the cache's ``m`` positions (the same
        one `__call__` takes); its rows for the new positions are used, with keys
        not yet written masked out. ``rotary``, like ``mask``, covers all ``m``
        positions; the new positions' angles are taken from it. A prefix must be prefilled in one call so that
        its positions see each other. Positions past ``m`` are silently dropped
        (under jit the length cannot be checked); size the cache for the sequence.
        """
        s, m = x.shape[1], cache.keys[0].shape[1]
        if mask.shape[-2:] != (m, m):
            raise ValueError(
                f"decode mask has shape {mask.shape}; expected [batch, 1 or heads, {m}, {m}], "
                "the full-sequence mask over the cache's positions."
            )
        rows = jax.lax.dynamic_slice_in_dim(mask, cache.length, s, axis=2)
        rows = rows & (jnp.arange(m) < cache.length + s)
        if rotary is not None:
            rotary = Rotary(
                *(jax.lax.dynamic_slice_in_dim(a, cache.length, s, axis=0) for a in rotary)
            )
        x = x.astype(self.dtype)
        keys, values = [], []
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            x, k, v = block.decode(x, rows, k, v, cache.length, rotary)
            keys.append(k)
            values.append(v)
        y = x if self.final_norm is None else self.final_norm(x)
        return y, KVCache(keys=tuple(keys), values=tuple(values), length=cache.length + s)


class MaskedVideoTransformer(nnx.Module):
    """MAGVIT's bidirectional transformer over factorized visual tokens (thesis 6.4, 5.3.2).

    Sequence: ``prefix_length`` prompt tokens (task id, class id or a "no class" id
    for classifier-free guidance; a small vocabulary of ``prefix_vocab_size``),
    then ``num_tokens`` visual tokens. Each visual token is ``num_factors``
    sub-tokens; sub-token ``f`` takes values in ``[0, sub_vocab_size)`` or the
    [MASK] id ``sub_vocab_size`` (`mask_token_id`). The input embedding of a
    token is the sum of its sub-tokens' embeddings (``E_f[z_f]``, or a learned
    [MASK] vector per factor); learned position embeddings are added, then
    BERT's layer norm and dropout, then a post-LN stack with bidirectional
    attention. Each factor has its own head (dense -> GELU -> layer norm, as
    BERT's MLM layer) tied to that factor's embedding matrix:
    ``logits_f = t_f @ E_f^T + bias_f`` over the ``sub_vocab_size`` codes.
    Out-of-range ids are clipped by the gather (no check under jit).

    ``position_encoding="learned"`` is MAGVIT's (BERT's absolute embeddings).
    ``"rope"`` instead rotates queries and keys by the visual tokens' ``(t, h, w)``
    in ``token_grid`` (axial RoPE, `rotary_angles`, ``rope_pairs_per_axis`` pairs
    per axis, default ``head_dim // 8``, the remaining head dimensions unrotated so
    that attention can also match content regardless of place); prompt tokens are
    not rotated. Attention then depends on relative offsets only, so a shape learnt
    at one place of the grid is known at every place: far fewer examples are needed
    when objects appear anywhere in the frame (not in the thesis; see BUILD_NOTES.md).
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        sub_vocab_size: int,
        num_factors: int = 1,
        prefix_vocab_size: int = 0,
        prefix_length: int = 0,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.1,
        layer_norm_epsilon: float = 1e-12,
        position_encoding: Literal["learned", "rope"] = "learned",
        token_grid: tuple[int, int, int] | None = None,
        rope_pairs_per_axis: int = 0,
        rope_base: float = 100.0,
        remat: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if position_encoding not in ("learned", "rope"):
            raise ValueError(
                f"position_encoding={position_encoding!r}; expected 'learned' (MAGVIT's "
                "absolute embeddings) or 'rope' (axial rotary over the token grid)."
            )
        if position_encoding == "rope" and (
            token_grid is None or int(np.prod(token_grid)) != num_tokens
        ):
            raise ValueError(
                f"position_encoding='rope' needs token_grid=(t, h, w) with t*h*w = "
                f"num_tokens={num_tokens}; got token_grid={token_grid}."
            )
        if prefix_length and not prefix_vocab_size:
            raise ValueError(
                f"prefix_length={prefix_length} needs prefix_vocab_size > 0 (the number of "
                "task, class and no-class ids)."
            )
        self.num_tokens = num_tokens
        self.sub_vocab_size = sub_vocab_size
        self.num_factors = num_factors
        self.prefix_length = prefix_length
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dtype = dtype
        d, f, v = hidden_size, num_factors, sub_vocab_size
        self.token_embedding = _param(rngs, (f, v, d), TOKEN_EMBEDDING_AXES, param_dtype)
        self.mask_embedding = _param(rngs, (f, d), MASK_EMBEDDING_AXES, param_dtype)
        self.prefix_embedding = (
            _param(rngs, (prefix_vocab_size, d), PREFIX_EMBEDDING_AXES, param_dtype)
            if prefix_length
            else None
        )
        self.position_encoding = position_encoding
        self.token_grid = tuple(token_grid) if token_grid is not None else None
        head_dim = hidden_size // num_heads
        self.rope_pairs_per_axis = rope_pairs_per_axis or max(1, head_dim // 8)
        self.rope_base = rope_base
        if position_encoding == "rope" and 3 * self.rope_pairs_per_axis > head_dim // 2:
            raise ValueError(
                f"rope_pairs_per_axis={self.rope_pairs_per_axis} rotates "
                f"{6 * self.rope_pairs_per_axis} of the heads' {head_dim} dimensions over "
                f"3 axes; use at most {head_dim // 6} pairs per axis."
            )
        self.position_embedding = (
            _param(rngs, (prefix_length + num_tokens, d), POSITION_EMBEDDING_AXES, param_dtype)
            if position_encoding == "learned"
            else None
        )
        self.embedding_norm = LayerNorm(
            d, epsilon=layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )
        self.embedding_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.stack = TransformerStack(
            num_layers=num_layers,
            hidden_size=d,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            norm_position="post",
            layer_norm_epsilon=layer_norm_epsilon,
            remat=remat,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.head_kernel = _param(rngs, (f, d, d), HEAD_KERNEL_AXES, param_dtype)
        self.head_bias = _constant(0.0, (f, d), HEAD_HIDDEN_AXES, param_dtype)
        self.head_norm_scale = _constant(1.0, (f, d), HEAD_NORM_AXES, param_dtype)
        self.head_norm_bias = _constant(0.0, (f, d), HEAD_NORM_AXES, param_dtype)
        self.logits_bias = _constant(0.0, (f, v), HEAD_BIAS_AXES, param_dtype)

    @property
    def mask_token_id(self) -> int:
        return self.sub_vocab_size

    def embed_tokens(self, tokens: Int[Array, "b n f"]) -> Float[Array, "b n d"]:
        """Sum over factors of the sub-token embeddings (float32), [MASK] ids included."""
        table = self.token_embedding[...].astype(jnp.float32)
        factor = jnp.arange(self.num_factors)
        codes = jnp.clip(tokens, 0, self.sub_vocab_size - 1)
        per_factor = table[factor, codes]  # [b, n, f, d]
        masked = (tokens == self.mask_token_id)[..., None]
        per_factor = jnp.where(masked, self.mask_embedding[...].astype(jnp.float32), per_factor)
        return jnp.sum(per_factor, axis=-2)

    def logits(self, hidden: Float[Array, "b n d"]) -> Float[Array, "b n f v"]:
        """Per-factor MLM heads tied to the embeddings: float32 ``[b, n, factors, sub_vocab]``."""
        dt = self.dtype
        t = jnp.einsum("bnd,fde->bnfe", hidden.astype(dt), self.head_kernel[...].astype(dt))
        t = jax.nn.gelu(t + self.head_bias[...].astype(dt))
        t = _layer_norm(
            t, self.head_norm_scale[...], self.head_norm_bias[...], self.layer_norm_epsilon
        )
        logits = jnp.einsum(
            "bnfe,fve->bnfv",
            t.astype(dt),
            self.token_embedding[...].astype(dt),
            preferred_element_type=jnp.float32,
        )
        return logits + self.logits_bias[...].astype(jnp.float32)

    def __call__(
        self,
        tokens: Int[Array, "b n f"],
        prefix_tokens: Int[Array, "b p"] | None = None,
        *,
        deterministic: bool = True,
    ) -> Float[Array, "b n f v"]:
        """Logits of every visual position's sub-tokens given the (partly masked) sequence."""
        b, n, f = tokens.shape
        if (n, f) != (self.num_tokens, self.num_factors):
            raise ValueError(
                f"tokens have shape {tokens.shape}; expected [batch, {self.num_tokens}, "
                f"{self.num_factors}] (num_tokens, num_factors of this model)."
            )
        x = self.embed_tokens(tokens)
        if self.prefix_length:
            if prefix_tokens is None or prefix_tokens.shape != (b, self.prefix_length):
                got = None if prefix_tokens is None else prefix_tokens.shape
                raise ValueError(
                    f"prefix_tokens have shape {got}; expected [{b}, {self.prefix_length}] "
                    "(task / class / no-class ids; this model has a prompt prefix)."
                )
            prefix = self.prefix_embedding[...].astype(jnp.float32)[prefix_tokens]
            x = jnp.concatenate([prefix, x], axis=1)
        elif prefix_tokens is not None:
            raise ValueError(
                f"prefix_tokens of shape {prefix_tokens.shape} given to a model built with "
                "prefix_length=0; build it with prefix_length and prefix_vocab_size."
            )
        rotary = None
        if self.position_encoding == "learned":
            x = x + self.position_embedding[...].astype(jnp.float32)
        else:
            rotary = self.rotary()
        x = self.embedding_dropout(self.embedding_norm(x), deterministic=deterministic)
        x = self.stack(
            x, bidirectional_mask(x.shape[1]), rotary=rotary, deterministic=deterministic
        )
        return self.logits(x[:, self.prefix_length :])

    def rotary(self) -> Rotary:
        """RoPE angles of the sequence: prompt tokens at the identity, then the grid in
        ``(t, h, w)`` raster order (the order of the visual tokens)."""
        grid = np.stack(np.meshgrid(*map(np.arange, self.token_grid), indexing="ij"), -1)
        positions = np.concatenate(
            [np.zeros((self.prefix_length, 3), np.int32), grid.reshape(-1, 3)]
        )
        return rotary_angles(jnp.asarray(positions), self.rope_pairs_per_axis, self.rope_base)
