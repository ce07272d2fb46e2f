"""Shared transformer blocks and MAGVIT's masked video transformer: attention masks
(causal, prefix, bidirectional) checked through the outputs, KV-cache decoding equal to
the full pass, dropout, factorized embeddings and tied heads, gradients, remat, bf16,
Table 6.1 parameter counts and logical sharding names."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import sharding
from videogen.models.transformer import (
    MAGVIT_SIZES,
    MaskedVideoTransformer,
    Rotary,
    TransformerStack,
    apply_rotary,
    bidirectional_mask,
    causal_mask,
    prefix_mask,
    rotary_angles,
)

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64}
LENGTH = 16
# 16 visual tokens of 2 x 8 sub-tokens, prompt of 2 ids from 5 (task, class / no class).
MODEL = dict(
    **TINY, num_tokens=LENGTH, sub_vocab_size=8, num_factors=2, prefix_vocab_size=5, prefix_length=2
)


def _rngs(seed: int = 0) -> nnx.Rngs:
    # The 'rbg' PRNG compiles much faster on CPU than threefry.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _build(**kwargs) -> MaskedVideoTransformer:
    return MaskedVideoTransformer(**{**MODEL, **kwargs}, rngs=_rngs())


def _make(**kwargs) -> MaskedVideoTransformer:
    """`_build` with the initialisation compiled as one program (faster than eager)."""
    return nnx.jit(lambda: _build(**kwargs))()


def _with_state_of(model: MaskedVideoTransformer, **kwargs) -> MaskedVideoTransformer:
    """A variant (remat, dtype) with a copy of ``model``'s parameters and dropout RNG state."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _build(**kwargs)))
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, nnx.state(model)))


def _tokens(seed: int, batch: int = 2, mask_fraction: float = 0.5):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    codes = jax.random.randint(k1, (batch, LENGTH, 2), 0, MODEL["sub_vocab_size"])
    masked = jax.random.uniform(k2, (batch, LENGTH, 1)) < mask_fraction
    tokens = jnp.where(masked, MODEL["sub_vocab_size"], codes)
    prefix = jax.random.randint(k3, (batch, 2), 0, MODEL["prefix_vocab_size"])
    return tokens, prefix


@nnx.jit(static_argnums=3)
def _forward(model, tokens, prefix, deterministic):
    return model(tokens, prefix, deterministic=deterministic)


def _loss(model, tokens, prefix, targets, deterministic):
    logp = jax.nn.log_softmax(model(tokens, prefix, deterministic=deterministic))
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


_grad = nnx.jit(nnx.grad(_loss), static_argnums=4)


@pytest.fixture(scope="module")
def model():
    return _make()


@pytest.fixture(scope="module")
def batch(model):
    tokens, prefix = _tokens(0)
    return types.SimpleNamespace(
        tokens=tokens, prefix=prefix, logits=_forward(model, tokens, prefix, True)
    )


# --- masks and the shared stack ------------------------------------------------------------


def test_mask_helpers_match_their_definitions():
    lengths = np.array([0, 3, 16])
    pm = np.asarray(prefix_mask(jnp.asarray(lengths), LENGTH))
    cm = np.asarray(causal_mask(LENGTH))
    assert pm.shape == (3, 1, LENGTH, LENGTH) and cm.shape == (1, 1, LENGTH, LENGTH)
    q, k = np.meshgrid(np.arange(LENGTH), np.arange(LENGTH), indexing="ij")
    np.testing.assert_array_equal(cm[0, 0], k <= q)
    for b, p in enumerate(lengths):
        np.testing.assert_array_equal(pm[b, 0], (k <= q) | (k < p))
    np.testing.assert_array_equal(pm[0], cm[0])  # an empty prefix is causal
    assert np.asarray(bidirectional_mask(LENGTH)).all()
    np.testing.assert_array_equal(pm[2, 0], np.ones((LENGTH, LENGTH), bool))


@pytest.fixture(scope="module")
def stack():
    """A pre-LN (decoder-LM style) stack, an input batch and a jitted forward pass."""
    module = nnx.jit(lambda: TransformerStack(**TINY, norm_position="pre", rngs=_rngs(1)))()
    x = jax.random.normal(jax.random.key(2), (2, LENGTH, 32))
    noise = jax.random.normal(jax.random.key(3), (2, LENGTH, 32))
    forward = nnx.jit(lambda m, x, mask: m(x, mask))
    return types.SimpleNamespace(
        module=module, x=x, noise=noise, run=lambda x, m: forward(module, x, m)
    )


def _changed_positions(stack, mask, positions) -> np.ndarray:
    """[b, LENGTH] bool: which outputs change when the inputs at ``positions`` become noise."""
    x2 = stack.x.at[:, positions].set(stack.noise[:, positions])
    diff = jnp.max(jnp.abs(stack.run(x2, mask) - stack.run(stack.x, mask)), axis=-1)
    return np.asarray(diff > 1e-5)


@pytest.mark.parametrize("i", [0, 7, 14])
def test_causal_mask_outputs_ignore_later_inputs(stack, i):
    changed = _changed_positions(stack, causal_mask(LENGTH), np.arange(i + 1, LENGTH))
    assert not changed[:, : i + 1].any()
    assert changed[:, i + 1 :].all()


@pytest.mark.parametrize("j", [2, 6, 12])
def test_prefix_mask_is_bidirectional_in_the_prefix_and_causal_after(stack, j):
    lengths = jnp.array([4, 9])
    changed = _changed_positions(stack, prefix_mask(lengths, LENGTH), np.array([j]))
    for row, p in enumerate([4, 9]):
        expected = np.ones(LENGTH, bool) if j < p else np.arange(LENGTH) >= j
        np.testing.assert_array_equal(changed[row], expected, err_msg=f"row {row}, input {j}")


def test_bidirectional_mask_changes_propagate_everywhere(stack):
    assert _changed_positions(stack, bidirectional_mask(LENGTH), np.array([12])).all()


def test_per_head_mask_broadcasts_like_a_shared_one(stack):
    shared = causal_mask(LENGTH)
    per_head = jnp.broadcast_to(shared, (2, 2, LENGTH, LENGTH))
    np.testing.assert_allclose(stack.run(stack.x, per_head), stack.run(stack.x, shared), atol=1e-6)
    with pytest.raises(ValueError, match="1 or heads"):
        stack.module(stack.x, shared[0])


_decode = nnx.jit(lambda m, x, mask, cache: m.decode(x, mask, cache))


def _decode_all(stack, mask, prefill: int):
    """Outputs of prefilling ``prefill`` positions in one call, then one position per call."""
    cache = stack.module.init_cache(batch_size=2, max_length=LENGTH)
    out, cache = _decode(stack.module, stack.x[:, :prefill], mask, cache)
    outputs = [out]
    for t in range(prefill, LENGTH):
        out, cache = _decode(stack.module, stack.x[:, t : t + 1], mask, cache)
        outputs.append(out)
    assert int(cache.length) == LENGTH
    return jnp.concatenate(outputs, axis=1)


def test_kv_cache_decoding_equals_the_full_prefix_lm_pass(stack):
    mask = prefix_mask(jnp.array([3, 5]), LENGTH)
    # The longest prefix is prefilled in one call: its positions must see each other.
    decoded = _decode_all(stack, mask, prefill=5)
    np.testing.assert_allclose(decoded, stack.run(stack.x, mask), atol=2e-5, rtol=1e-5)


def test_kv_cache_never_attends_to_positions_not_yet_written(stack):
    # Under a bidirectional mask, step-by-step decoding can only see the past: a causal pass.
    mask = jnp.broadcast_to(bidirectional_mask(LENGTH), (2, 1, LENGTH, LENGTH))
    decoded = _decode_all(stack, mask, prefill=1)
    full = stack.run(stack.x, causal_mask(LENGTH))
    np.testing.assert_allclose(decoded, full, atol=2e-5, rtol=1e-5)


# --- rotary position encoding --------------------------------------------------------------


def _grid_positions(offset=(0, 0, 0)) -> jax.Array:
    """[LENGTH, 3] (t, h, w) raster positions of a 1x4x4 grid, shifted by ``offset``."""
    grid = np.stack(np.meshgrid(np.arange(1), np.arange(4), np.arange(4), indexing="ij"), -1)
    return jnp.asarray(grid.reshape(-1, 3) + np.asarray(offset))


def test_rotary_scores_depend_only_on_the_offset_between_positions():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 2, 1, 16))
    scores = []
    for pq, pk in (([3, 1, 2], [0, 5, 2]), ([7, 4, 9], [4, 8, 9]), ([0, 0, 0], [0, 0, 0])):
        rot_q = apply_rotary(q, rotary_angles(jnp.array([pq]), 2, 100.0))
        rot_k = apply_rotary(k, rotary_angles(jnp.array([pk]), 2, 100.0))
        scores.append(float(jnp.sum(rot_q * rot_k)))
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)  # same offset (3, -4, 0)
    assert abs(scores[0] - float(jnp.sum(q * k))) > 1e-3  # a nonzero offset changes the score
    assert scores[2] == pytest.approx(float(jnp.sum(q * k)), abs=1e-5)  # zero = identity
    # 3 axes x 2 pairs rotate the first 12 of 16 dimensions; the last 4 are untouched.
    rotated = apply_rotary(q, rotary_angles(jnp.array([[1, 2, 3]]), 2, 100.0))
    np.testing.assert_array_equal(rotated[..., 12:], q[..., 12:])
    with pytest.raises(ValueError, match="rotary pairs"):
        apply_rotary(q, rotary_angles(jnp.array([[1, 2, 3]]), 3, 100.0))


def test_rotary_stack_depends_on_relative_positions_only(stack):
    # Sharper attention than at initialisation (query and key weights x 10), so that
    # where each key sits visibly matters.
    module = nnx.clone(stack.module)
    for block in module.blocks:
        block.attention.query[...] = 10.0 * block.attention.query[...]
        block.attention.key[...] = 10.0 * block.attention.key[...]
    mask = bidirectional_mask(LENGTH)
    run = nnx.jit(lambda m, x, rotary: m(x, mask, rotary=rotary))
    base = run(module, stack.x, rotary_angles(_grid_positions(), 2, 100.0))
    shifted = run(module, stack.x, rotary_angles(_grid_positions((5, -3, 7)), 2, 100.0))
    np.testing.assert_allclose(shifted, base, atol=2e-5, rtol=1e-5)
    reversed_grid = rotary_angles(_grid_positions()[::-1], 2, 100.0)
    assert float(jnp.max(jnp.abs(run(module, stack.x, reversed_grid) - base))) > 1e-2


def test_kv_cache_decoding_with_rotary_equals_the_full_pass(stack):
    mask = prefix_mask(jnp.array([3, 5]), LENGTH)
    rotary = rotary_angles(jnp.arange(LENGTH)[:, None], 4, 100.0)
    decode = nnx.jit(lambda m, x, cache: m.decode(x, mask, cache, rotary=rotary))
    cache = stack.module.init_cache(batch_size=2, max_length=LENGTH)
    out, cache = decode(stack.module, stack.x[:, :5], cache)
    outputs = [out]
    for t in range(5, LENGTH):
        out, cache = decode(stack.module, stack.x[:, t : t + 1], cache)
        outputs.append(out)
    full = nnx.jit(lambda m, x: m(x, mask, rotary=rotary))(stack.module, stack.x)
    np.testing.assert_allclose(jnp.concatenate(outputs, 1), full, atol=2e-5, rtol=1e-5)


def test_rope_model_has_no_absolute_positions_and_rotates_the_grid_only():
    rope = _make(position_encoding="rope", token_grid=(1, 4, 4))
    assert rope.position_embedding is None and rope.rope_pairs_per_axis == 2  # head_dim 16
    rotary = rope.rotary()
    assert isinstance(rotary, Rotary) and rotary.cos.shape == (2 + LENGTH, 6)
    np.testing.assert_array_equal(rotary.cos[:2], 1.0)  # prompt tokens are not rotated
    # A constant input: every token has the same content, so without absolute positions
    # every visual position's logits are equal (attention mixes identical values).
    tokens = jnp.full((1, LENGTH, 2), 3)
    prefix = jnp.array([[0, 4]])
    logits = _forward(rope, tokens, prefix, True)
    np.testing.assert_allclose(logits, jnp.broadcast_to(logits[:, :1], logits.shape), atol=1e-5)
    learned = _forward(_make(), tokens, prefix, True)
    assert float(jnp.max(jnp.abs(learned - learned[:, :1]))) > 1e-3
    with pytest.raises(ValueError, match="token_grid"):
        _build(position_encoding="rope", token_grid=(2, 4, 4))
    with pytest.raises(ValueError, match="position_encoding"):
        _build(position_encoding="sinusoid")


# --- MaskedVideoTransformer -----------------------------------------------------------------


def test_logits_shape_dtype_and_mask_id(model, batch):
    assert batch.logits.shape == (2, LENGTH, 2, 8)
    assert batch.logits.dtype == jnp.float32
    assert np.isfinite(batch.logits).all()
    assert model.mask_token_id == 8


def test_model_is_bidirectional_and_conditions_on_the_prefix(model, batch):
    tokens = batch.tokens.at[:, 12].set(jnp.array([3, 5]))
    for t, p in ((tokens, batch.prefix), (batch.tokens, (batch.prefix + 1) % 5)):
        diff = jnp.max(jnp.abs(_forward(model, t, p, True) - batch.logits), axis=(2, 3))
        assert (diff > 1e-5).all()


def test_factorized_embedding_is_the_sum_of_sub_token_embeddings(model, batch):
    table = np.asarray(model.token_embedding[...])
    mask_rows = np.asarray(model.mask_embedding[...])
    tokens = np.asarray(batch.tokens)
    expected = np.zeros((2, LENGTH, 32), np.float32)
    for f in range(2):
        ids = tokens[..., f]
        expected += np.where((ids == 8)[..., None], mask_rows[f], table[f, np.minimum(ids, 7)])
    assert (tokens == 8).any() and (tokens < 8).any()
    np.testing.assert_allclose(model.embed_tokens(batch.tokens), expected, atol=1e-6)


def test_heads_are_tied_to_the_embedding_matrices(model):
    # One parameter with a vocabulary-by-hidden shape: no separate output matrix.
    with_vocab = {
        "/".join(map(str, path))
        for path, p in nnx.iter_graph(model)
        if isinstance(p, nnx.Param) and 8 in p.shape
    }
    assert with_vocab == {"token_embedding", "logits_bias"}
    hidden = jax.random.normal(jax.random.key(4), (1, 3, 32))
    tied = nnx.clone(model)
    base = tied.logits(hidden)
    delta = jax.random.normal(jax.random.key(5), (32,))
    table = model.token_embedding[...]
    diffs = []
    for scale in (1.0, 2.0):
        tied.token_embedding[...] = table.at[1, 6].add(scale * delta)
        diffs.append(np.array(tied.logits(hidden) - base))
    # Only factor 1's logit of code 6 moves, and linearly in the change of its embedding row.
    moved = diffs[0][:, :, 1, 6].copy()
    assert np.abs(moved).min() > 1e-4
    np.testing.assert_allclose(diffs[1][:, :, 1, 6], 2 * moved, rtol=1e-4)
    for d in diffs:
        d[:, :, 1, 6] = 0.0
        np.testing.assert_allclose(d, 0.0, atol=1e-6)
    tied.token_embedding[...] = jnp.zeros_like(table)
    bias = tied.logits_bias[...]
    np.testing.assert_allclose(tied.logits(hidden), jnp.broadcast_to(bias, (1, 3, 2, 8)), atol=1e-6)


def test_embedding_gets_gradient_from_the_heads_on_an_all_mask_input(model, batch):
    tokens = jnp.full_like(batch.tokens, model.mask_token_id)
    targets = jax.random.randint(jax.random.key(6), batch.tokens.shape, 0, 8)
    # Training mode: shares its compiled program with the `grads` fixture.
    grads = _grad(model, tokens, batch.prefix, targets, False)
    # No code is embedded at the input, so this gradient can only come through the tied heads.
    assert float(jnp.min(jnp.max(jnp.abs(grads["token_embedding"][...]), axis=-1))) > 0.0


def test_dropout_only_when_not_deterministic(batch):
    model = _make()
    again = _forward(model, batch.tokens, batch.prefix, True)
    np.testing.assert_array_equal(again, batch.logits)
    first = _forward(model, batch.tokens, batch.prefix, False)
    second = _forward(model, batch.tokens, batch.prefix, False)
    assert float(jnp.max(jnp.abs(first - batch.logits))) > 1e-3
    assert float(jnp.max(jnp.abs(second - first))) > 1e-3  # the RNG stream advances


@pytest.fixture(scope="module")
def grads(model, batch):
    """Training-mode (dropout on) gradients of the plain model and of a remat copy."""
    targets = jax.random.randint(jax.random.key(7), batch.tokens.shape, 0, 8)
    plain, remat = _with_state_of(model), _with_state_of(model, remat=True)
    args = (batch.tokens, batch.prefix, targets, False)
    jaxpr = str(jax.make_jaxpr(lambda t: remat(t, batch.prefix, deterministic=True))(batch.tokens))
    counts_before = jax.tree.map(np.array, nnx.state(plain, nnx.RngCount))
    return types.SimpleNamespace(
        plain=_grad(plain, *args),
        remat=_grad(remat, *args),
        remat_jaxpr=jaxpr,
        counts=[counts_before, *(nnx.state(m, nnx.RngCount) for m in (plain, remat))],
    )


def test_gradient_reaches_every_parameter(grads):
    leaves = jax.tree_util.tree_leaves_with_path(grads.plain)
    assert len(leaves) > 30
    for path, g in leaves:
        assert np.isfinite(g).all(), path
        assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)


def test_remat_keeps_gradients_with_dropout_on(grads):
    assert "remat" in grads.remat_jaxpr
    for a, b in zip(jax.tree.leaves(grads.remat), jax.tree.leaves(grads.plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Both advanced their dropout streams (the next step draws new masks), remat included.
    before, plain, remat = (np.array(jax.tree.leaves(c)) for c in grads.counts)
    # Draws per step: embedding dropout 1; per block attention dropout 1, hidden dropout 2.
    np.testing.assert_array_equal(plain - before, [1] + [1, 2] * MODEL["num_layers"])
    np.testing.assert_array_equal(remat, plain)


def test_bf16_activations_keep_float32_params_and_logits(model, batch):
    bf16 = _with_state_of(model, dtype=jnp.bfloat16)
    logits = _forward(bf16, batch.tokens, batch.prefix, True)
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    jaxpr = str(jax.make_jaxpr(lambda t: bf16(t, batch.prefix))(batch.tokens))
    assert "bf16" in jaxpr
    scale = float(jnp.max(jnp.abs(batch.logits)))
    assert float(jnp.max(jnp.abs(logits - batch.logits))) < 0.05 * scale


def test_bad_inputs_are_explained(model, batch):
    with pytest.raises(ValueError, match="num_tokens, num_factors"):
        model(batch.tokens[:, :8], batch.prefix)
    with pytest.raises(ValueError, match="prompt prefix"):
        model(batch.tokens)
    with pytest.raises(ValueError, match="num_heads"):
        _build(num_heads=3)


# --- sizes and sharding ---------------------------------------------------------------------


def _abstract(variant: str) -> MaskedVideoTransformer:
    # MAGVIT: 1024 codes (one factor), 4x16x16 tokens, task + class prefix over a small vocabulary.
    return nnx.eval_shape(
        lambda: MaskedVideoTransformer(
            **MAGVIT_SIZES[variant],
            num_tokens=1024,
            sub_vocab_size=1024,
            prefix_vocab_size=128,
            prefix_length=2,
            rngs=_rngs(),
        )
    )


@pytest.mark.parametrize("variant,reported", [("B", 87e6), ("L", 305e6), ("H", 634e6)])
def test_parameter_count_matches_table_6_1(variant, reported):
    params = jax.tree.leaves(nnx.state(_abstract(variant), nnx.Param))
    count = sum(math.prod(p.shape) for p in params)
    # B 87,322,624; L 305,595,392; H 634,113,024 with this vocabulary.
    assert abs(count - reported) / reported < 0.005, count


def test_parameters_carry_logical_axis_names_that_the_fsdp_tensor_preset_shards():
    model = _abstract("B")
    names = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = var.get_metadata()["out_sharding"]
            assert len(axes) == var.ndim, (path, axes)
            names["/".join(map(str, path))] = tuple(axes)
    # Exactly the transformer's names, every one a parameter axis the presets map.
    transformer_axes = {"embed", "mlp", "heads", "head_dim", "vocab", "factors", "positions"}
    transformer_axes |= {"prefix_vocab", "channels"}
    assert {a for axes in names.values() for a in axes} == transformer_axes
    assert transformer_axes <= set(sharding.PARAMETER_AXES)
    mesh = sharding.make_mesh((1, 2, 4))
    _, abstract_state = nnx.split(model)
    specs = {
        "/".join(map(str, path)): s.spec
        for path, s in nnx.to_flat_state(
            sharding.state_shardings(abstract_state, mesh, "fsdp_tensor")
        )
    }
    assert specs["token_embedding"] == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert specs["stack/blocks/0/attention/query"] == jax.sharding.PartitionSpec(
        "fsdp", "tensor", None
    )
    assert specs["stack/blocks/0/mlp/wo"] == jax.sharding.PartitionSpec("tensor", "fsdp")
