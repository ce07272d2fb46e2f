"""VideoPoet's backbone: a decoder-only prefix language model (thesis Sec. 8.3.2).

Input: a `videogen.tasks.videopoet_layout.LayoutBatch`-shaped sequence of ids over the
unified vocabulary (`videogen.tasks.videopoet_vocab`), plus the text encoder's
per-token embeddings, "projected into the transformer's embedding space with a linear
layer" (Sec. 8.3.1) and written into the reserved text positions after ``<bot_i>``
(Sec. 8.4.6) in place of those positions' ``<pad>`` embeddings.

Attention (`attention_mask`): bidirectional over each row's prefix, causal after
(`transformer.prefix_mask`); ``<pad>`` positions inside the prefix (text slots with no
embedding: a shorter caption, or text dropped for classifier-free guidance) are no
attention key, so an empty caption is no text at all, not 64 pad tokens.

Backbone: `transformer.TransformerStack` with pre-LN blocks (the usual choice for deep
decoder LMs; the thesis does not say) and 1-D rotary position embeddings over the
sequence index (RoPE, every head dimension rotated, base 10,000 as in most LLMs), so no
position table bounds the length. The output logits reuse the token embedding table
(tied, as PaLM), plus a bias over the vocabulary: at 2^18 visual codes an untied head
would add another vocabulary x width matrix.

Factorized visual codes (``factor_ranges``, `videopoet_vocab`): a code's ``f``
sub-token ids share one position. Its input embedding is the sum of their embeddings
(as MAGVIT's transformer, Sec. 5.3.2); the position before it predicts factor 0 with
the ordinary logits and factor ``j >= 1`` with `factor_logits`: the output plus a
learned linear map of the embeddings of factors ``< j``, scored against factor ``j``'s
rows of the tied table. So ``p(code) = p(f_0) p(f_1 | f_0) ...``, exact, not the
independent factors of a masked model, at one position per code instead of ``f``.

Generation: `init_cache`, then `prefill` (the whole prefix in one call, so that its
positions see each other), then `decode_step` per output position; each call returns the
output of the last position (`logits` and `factor_logits` read it).
`videogen.sampling.autoregressive` runs this in one jit.

Sizes (`PREFIX_LM_SIZES`): the thesis trains 300M, 1B and 8B models (Sec. 8.4.2, 8.4.3)
but gives no shapes; ours are standard GPT shapes (head dimension 64 or 128, MLP 4x)
whose non-embedding parameters (12 x width^2 per layer, Kaplan et al.'s convention)
come to those counts: 302M, 1.007B, 8.05B. The embedding table adds vocabulary x width
(0.27B at width 1024 with the thesis' 266,496 ids).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from videogen.models.text_encoders import VOCAB_EMBEDDING_AXES
from videogen.models.transformer import (
    EMBED_AXES,
    KVCache,
    Rotary,
    TransformerStack,
    dense,
    prefix_mask,
    rotary_angles,
)

# Logical axis names of the parameters (mapped by videogen/sharding.py PRESETS); the stack's
# follow transformer.py and the token embedding is laid out like the text encoder's
# (VOCAB_EMBEDDING_AXES). The text projection's input axis is the text encoder's width,
# small and never sharded.
TEXT_PROJECTION_AXES = (None, "embed")
FACTOR_CONDITIONING_AXES = (None, None, "embed")
LOGITS_BIAS_AXES = ("vocab",)

PREFIX_LM_SIZES = {
    # CPU sizes: tests, and the quickstart on a laptop.
    "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 128},
    "small": {"hidden_size": 256, "num_layers": 6, "num_heads": 4, "mlp_dim": 1024},
    # The thesis' parameter counts (see the module docstring).
    "300M": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "mlp_dim": 4096},
    "1B": {"hidden_size": 2048, "num_layers": 20, "num_heads": 16, "mlp_dim": 8192},
    "8B": {"hidden_size": 4096, "num_layers": 40, "num_heads": 32, "mlp_dim": 16384},
}

# GPT-2 / BERT initialiser for the embeddings and the text projection.
_INIT = nnx.initializers.truncated_normal(stddev=0.02)


class PrefixLM(nnx.Module):
    """Decoder-only prefix LM over a unified vocabulary of ``vocab_size`` ids.

    ``pad_id``: the ``<pad>`` id (`Vocabulary.pad_id`); ``text_dim``: the text encoder's
    width (0: a model without text input); ``factor_ranges``: ``[lo, hi)`` of visual
    factors ``1 .. f-1`` (`Vocabulary.visual_factor_range`; empty for one id per code).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        pad_id: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        text_dim: int = 0,
        factor_ranges: tuple[tuple[int, int], ...] = (),
        dropout_rate: float = 0.0,
        attention_dropout_rate: float = 0.0,
        rope_base: float = 10_000.0,
        layer_norm_epsilon: float = 1e-6,
        remat: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(
                f"hidden_size={hidden_size} must split into num_heads={num_heads} heads of an "
                "even dimension (rotary embeddings rotate pairs of dimensions)."
            )
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.text_dim = text_dim
        self.factor_ranges = tuple((int(lo), int(hi)) for lo, hi in factor_ranges)
        if len({hi - lo for lo, hi in self.factor_ranges}) > 1:
            raise ValueError(f"factor_ranges={factor_ranges} must all hold the same number of ids.")
        self.rope_base = rope_base
        self.dtype = dtype
        d = hidden_size
        self.token_embedding = nnx.Param(
            _INIT(rngs.params(), (vocab_size, d), param_dtype), out_sharding=VOCAB_EMBEDDING_AXES
        )
        self.text_projection = (
            nnx.Param(
                _INIT(rngs.params(), (text_dim, d), param_dtype), out_sharding=TEXT_PROJECTION_AXES
            )
            if text_dim
            else None
        )
        self.text_projection_bias = (
            nnx.Param(jnp.zeros((d,), param_dtype), out_sharding=EMBED_AXES) if text_dim else None
        )
        # Factor j's output is hidden + (embeddings of factors < j) @ factor_conditioning[j - 1].
        self.factor_conditioning = (
            nnx.Param(
                _INIT(rngs.params(), (len(self.factor_ranges), d, d), param_dtype),
                out_sharding=FACTOR_CONDITIONING_AXES,
            )
            if self.factor_ranges
            else None
        )
        self.embedding_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.stack = TransformerStack(
            num_layers=num_layers,
            hidden_size=d,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            norm_position="pre",
            layer_norm_epsilon=layer_norm_epsilon,
            remat=remat,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.logits_bias = nnx.Param(
            jnp.zeros((vocab_size,), param_dtype), out_sharding=LOGITS_BIAS_AXES
        )

    # --- pieces ------------------------------------------------------------------------------

    def text_placement(
        self,
        length: int,
        text_mask: Bool[Array, "b n"] | None,
        text_positions: Int[Array, "b n"] | None,
    ) -> Float[Array, "b l n"] | None:
        """One-hot ``[b, length, n]``: 1 where sequence position ``l`` holds text slot ``n``
        (slots with a False mask, or at or past ``length``, place nothing)."""
        if text_mask is None or not self.text_dim:
            return None
        if text_positions is None:
            raise ValueError("text_mask needs text_positions (LayoutBatch.text_positions).")
        hit = text_positions[:, None, :] == jnp.arange(length)[None, :, None]
        return (hit & text_mask[:, None, :]).astype(jnp.float32)

    def _check_factors(self, factor_tokens: Int[Array, "b s g"]) -> None:
        if factor_tokens.shape[-1] != len(self.factor_ranges):
            raise ValueError(
                f"factor_tokens carry {factor_tokens.shape[-1]} visual factors per position; "
                f"this PrefixLM predicts {len(self.factor_ranges)} besides factor 0 (build it "
                "with the layout's Vocabulary.visual_factors)."
            )

    def embed(
        self,
        tokens: Int[Array, "b s"],
        factor_tokens: Int[Array, "b s f-1"],
        text_embeddings: Float[Array, "b n e"] | None = None,
        text_mask: Bool[Array, "b n"] | None = None,
        text_positions: Int[Array, "b n"] | None = None,
    ) -> Float[Array, "b s d"]:
        """Embeddings of the positions ``0 .. s-1``: tokens plus their visual factors 1..
        (``<pad>`` factors add nothing), with projected text in the text positions
        (float32)."""
        if text_embeddings is not None and text_embeddings.shape[-1] != self.text_dim:
            raise ValueError(
                f"text embeddings of width {text_embeddings.shape[-1]} given to a PrefixLM built "
                f"with text_dim={self.text_dim}; build it with the text encoder's width."
            )
        self._check_factors(factor_tokens)
        table = self.token_embedding[...].astype(jnp.float32)
        x = table[tokens]
        if self.factor_ranges:
            present = (factor_tokens != self.pad_id)[..., None]
            x = x + jnp.sum(jnp.where(present, table[factor_tokens], 0.0), axis=-2)
        placement = self.text_placement(tokens.shape[1], text_mask, text_positions)
        if placement is None:
            return x
        if text_embeddings is None:
            raise ValueError("text_mask was given without text_embeddings.")
        text = jnp.einsum(
            "bne,ed->bnd",
            text_embeddings.astype(jnp.float32),
            self.text_projection[...].astype(jnp.float32),
        ) + self.text_projection_bias[...].astype(jnp.float32)
        covered = jnp.sum(placement, axis=-1, keepdims=True)
        return x * (1.0 - covered) + jnp.einsum("bln,bnd->bld", placement, text)

    def attention_mask(
        self,
        tokens: Int[Array, "b l"],
        prefix_length: Int[Array, " b"],
        text_mask: Bool[Array, "b n"] | None = None,
        text_positions: Int[Array, "b n"] | None = None,
    ) -> Bool[Array, "b 1 l l"]:
        """Prefix-LM mask without the prefix's empty (``<pad>``, no text) positions as keys.

        Output positions are judged by the prefix alone, so the mask of a sequence whose
        outputs are not sampled yet is the mask of the finished one.
        """
        length = tokens.shape[1]
        in_prefix = jnp.arange(length)[None, :] < jnp.asarray(prefix_length)[:, None]
        empty = in_prefix & (tokens == self.pad_id)
        placement = self.text_placement(length, text_mask, text_positions)
        if placement is not None:
            empty = empty & ~jnp.any(placement > 0, axis=-1)
        return prefix_mask(prefix_length, length) & ~empty[:, None, None, :]

    def rotary(self, length: int) -> Rotary:
        """RoPE angles of sequence positions ``0 .. length-1``."""
        pairs = self.stack.head_dim // 2
        positions = jnp.arange(length, dtype=jnp.int32)[:, None]
        return rotary_angles(positions, pairs, self.rope_base)

    def logits(self, hidden: Float[Array, "b s d"]) -> Float[Array, "b s v"]:
        """Next-token logits (float32) from the stack's output, tied to the embeddings."""
        dt = self.dtype
        logits = dense(
            hidden.astype(dt),
            self.token_embedding[...].astype(dt).T,
            preferred_element_type=jnp.float32,
        )
        return logits + self.logits_bias[...].astype(jnp.float32)

    def factor_logits(
        self, hidden: Float[Array, "b s d"], previous: Int[Array, "b s j"]
    ) -> Float[Array, "b s c"]:
        """Logits (float32) over the ``c`` ids of visual factor ``j`` (its range in
        `factor_ranges`) of the code after each position, given that code's factors
        ``0 .. j-1`` (``previous``, ids; ``1 <= j < f``)."""
        j = previous.shape[-1]
        if not 1 <= j <= len(self.factor_ranges):
            raise ValueError(
                f"previous holds {j} factors; factor_logits predicts factors 1 .. "
                f"{len(self.factor_ranges)} of this PrefixLM from the ones before."
            )
        dt = self.dtype
        table = self.token_embedding[...]
        given = jnp.sum(table.astype(jnp.float32)[previous], axis=-2)
        conditioning = self.factor_conditioning[...][j - 1].astype(dt)
        h = hidden.astype(jnp.float32) + dense(
            given.astype(dt), conditioning, preferred_element_type=jnp.float32
        )
        lo, hi = self.factor_ranges[j - 1]
        logits = dense(h.astype(dt), table[lo:hi].astype(dt).T, preferred_element_type=jnp.float32)
        return logits + self.logits_bias[...][lo:hi].astype(jnp.float32)

    def all_factor_logits(
        self,
        hidden: Float[Array, "b l d"],
        tokens: Int[Array, "b l"],
        factor_tokens: Int[Array, "b l f-1"],
    ) -> Float[Array, "b l f-1 c"]:
        """`factor_logits` of every factor 1.. at every position, given the true earlier
        factors of the next position's code (teacher forcing; the last position's are
        meaningless). ``[b, l, 0, 0]`` without factors."""
        b, length = tokens.shape
        if not self.factor_ranges:
            return jnp.zeros((b, length, 0, 0), jnp.float32)
        ids = jnp.concatenate([tokens[:, :, None], factor_tokens], axis=-1)
        following = jnp.concatenate([ids[:, 1:], ids[:, -1:]], axis=1)  # position p+1's ids
        return jnp.stack(
            [self.factor_logits(hidden, following[..., :j]) for j in range(1, ids.shape[-1])],
            axis=2,
        )

    # --- training / scoring ------------------------------------------------------------------

    def __call__(
        self,
        tokens: Int[Array, "b l"],
        factor_tokens: Int[Array, "b l f-1"],
        prefix_length: Int[Array, " b"],
        text_embeddings: Float[Array, "b n e"] | None = None,
        text_mask: Bool[Array, "b n"] | None = None,
        text_positions: Int[Array, "b n"] | None = None,
        *,
        deterministic: bool = True,
    ) -> Predictions:
        """Position ``p``'s predictions of the token at ``p + 1`` (`Predictions`)."""
        length = tokens.shape[1]
        x = self.embed(tokens, factor_tokens, text_embeddings, text_mask, text_positions)
        x = self.embedding_dropout(x, deterministic=deterministic)
        mask = self.attention_mask(tokens, prefix_length, text_mask, text_positions)
        hidden = self.stack(x, mask, rotary=self.rotary(length), deterministic=deterministic)
        return Predictions(
            self.logits(hidden), self.all_factor_logits(hidden, tokens, factor_tokens)
        )

    # --- generation --------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for sequences of ``max_length`` positions."""
        return self.stack.init_cache(batch_size, max_length)

    def prefill(
        self,
        tokens: Int[Array, "b p"],
        factor_tokens: Int[Array, "b p f-1"],
        attention_mask: Bool[Array, "b 1 m m"],
        cache: KVCache,
        text_embeddings: Float[Array, "b n e"] | None = None,
        text_mask: Bool[Array, "b n"] | None = None,
        text_positions: Int[Array, "b n"] | None = None,
    ) -> tuple[Float[Array, "b d"], KVCache]:
        """Writes the prefix (positions ``0 .. p-1``, every row's prefix length ``p``) into
        an empty cache; returns the output of position ``p - 1``, which predicts the token
        at ``p`` (`logits`, `factor_logits`).

        ``attention_mask`` is `attention_mask` of the full sequence (``m`` = cache length).
        """
        x = self.embed(tokens, factor_tokens, text_embeddings, text_mask, text_positions)
        rotary = self.rotary(cache.keys[0].shape[1])
        hidden, cache = self.stack.decode(x, attention_mask, cache, rotary)
        return hidden[:, -1], cache

    def decode_step(
        self,
        tokens: Int[Array, " b"],
        factor_tokens: Int[Array, "b f-1"],
        attention_mask: Bool[Array, "b 1 m m"],
        cache: KVCache,
    ) -> tuple[Float[Array, "b d"], KVCache]:
        """Appends one position per row at ``cache.length``; returns its output, which
        predicts the next token."""
        x = self.embed(tokens[:, None], factor_tokens[:, None])
        rotary = self.rotary(cache.keys[0].shape[1])
        hidden, cache = self.stack.decode(x, attention_mask, cache, rotary)
        return hidden[:, 0], cache


class Predictions(NamedTuple):
    """The prefix LM's predictions of each next position: ``logits`` over the vocabulary
    (factor 0 at a visual code) and ``factor_logits[:, p, j - 1]`` over factor ``j``'s ids
    given the true factors ``< j`` (`PrefixLM.all_factor_logits`)."""

    logits: Float[Array, "b l v"]
    factor_logits: Float[Array, "b l f-1 c"]


def _nll(logits: Float[Array, "... v"], targets: Int[Array, "..."]) -> Float[Array, "..."]:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def next_token_nll(
    predictions: Predictions,
    tokens: Int[Array, "b l"],
    factor_tokens: Int[Array, "b l f-1"],
    factor_starts: Int[Array, " f-1"],
) -> tuple[Float[Array, "b l-1"], Float[Array, "b l-1 f-1"]]:
    """Cross entropy (nats) of each token ``p + 1`` and of its visual factors 1.. under
    position ``p``'s predictions. ``factor_starts``: each factor's first id (the
    ``lo`` of `PrefixLM.factor_ranges`); a ``<pad>`` factor's entry is meaningless."""
    nll = _nll(predictions.logits[:, :-1], tokens[:, 1:])
    following = factor_tokens[:, 1:] - jnp.asarray(factor_starts, jnp.int32)
    sub = predictions.factor_logits.shape[-1]
    factor_nll = _nll(predictions.factor_logits[:, :-1], jnp.clip(following, 0, max(sub - 1, 0)))
    return nll, factor_nll


def target_weights(
    factor_tokens: Int[Array, "b l f-1"], loss_mask: Bool[Array, "b l"], pad_id: int
) -> tuple[Float[Array, "b l-1"], Float[Array, "b l-1 f-1"]]:
    """Which ids `next_token_nll` scores: every output token, and the visual factors 1.. of
    output positions that hold a visual code."""
    weights = loss_mask[:, 1:]
    factors = weights[..., None] & (factor_tokens[:, 1:] != pad_id)
    return weights.astype(jnp.float32), factors.astype(jnp.float32)


def prefix_lm_loss(
    predictions: Predictions,
    tokens: Int[Array, "b l"],
    factor_tokens: Int[Array, "b l f-1"],
    loss_mask: Bool[Array, "b l"],
    *,
    factor_starts: Int[Array, " f-1"],
    pad_id: int,
) -> Float[Array, ""]:
    """Next-token cross entropy (nats) averaged over the predicted ids of the outputs
    (``loss_mask``): each output token, and each visual factor 1.. of a visual code, counts
    once, so the loss is per sub-token whatever the layout packs into a position.

    Position ``p``'s predictions are scored against position ``p + 1`` where
    ``loss_mask[p + 1]``; prefix and padding positions contribute nothing.
    """
    nll, factor_nll = next_token_nll(predictions, tokens, factor_tokens, factor_starts)
    weights, factor_weights = target_weights(factor_tokens, loss_mask, pad_id)
    total = jnp.sum(nll * weights) + jnp.sum(factor_nll * factor_weights)
    count = jnp.sum(weights) + jnp.sum(factor_weights)
    return total / jnp.maximum(count, 1.0)
