"""VideoPoet's prefix LM: bidirectional attention over the prefix and causal after (checked
through the logits), text written into its slots, the loss on output tokens only, KV-cache
decoding equal to the full pass (teacher-forced and greedy), per-row prefixes in a mixed
batch, parameter counts of the named sizes and logical sharding names."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import sharding
from videogen.models.prefix_lm import PREFIX_LM_SIZES, PrefixLM, prefix_lm_loss
from videogen.tasks.videopoet_layout import SequenceLayout, TaskInputs, concat_batches
from videogen.tasks.videopoet_vocab import Vocabulary

VOCAB = Vocabulary(visual_codes=2**4, visual_factors=2, audio_levels=0)
# fp: <bos> <task> <bot_i> 4 <eot_i> <bov_i> 8 <eov_i> <bov_o> | 8 <eov_o> <eos> (prefix 19, 29)
LAYOUT = SequenceLayout(
    VOCAB, (2, 2, 2), ("t2v", "fp"), text_dim=6, max_text_tokens=4, condition_frames=1
)
FP_PREFIX = 19


def _model() -> PrefixLM:
    return PrefixLM(
        vocab_size=VOCAB.size,
        pad_id=VOCAB.pad_id,
        text_dim=6,
        **PREFIX_LM_SIZES["tiny"],
        # The 'rbg' PRNG compiles much faster on CPU than threefry.
        rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
    )


def _inputs(seed: int) -> TaskInputs:
    rng = np.random.default_rng(seed)
    return TaskInputs(
        video=rng.integers(0, 16, (2, 2, 2, 2)),
        text_embeddings=rng.normal(size=(2, 3, 6)).astype(np.float32),
        text_mask=np.array([[True, True, True], [True, True, False]]),
    )


@pytest.fixture(scope="module")
def lm():
    model = nnx.jit(_model)()
    forward = nnx.jit(
        lambda m, b: m(b.tokens, b.prefix_length, b.text_embeddings, b.text_mask, b.text_positions)
    )
    prefill = nnx.jit(
        lambda m, b, mask, cache: m.prefill(
            b.tokens[:, :FP_PREFIX], mask, cache, b.text_embeddings, b.text_mask, b.text_positions
        )
    )
    decode = nnx.jit(lambda m, token, mask, cache: m.decode_step(token, mask, cache))
    mask_fn = nnx.jit(
        lambda m, b: m.attention_mask(b.tokens, b.prefix_length, b.text_mask, b.text_positions)
    )
    return types.SimpleNamespace(
        model=model,
        fp=LAYOUT.build("fp", _inputs(0)),
        run=lambda b: np.asarray(forward(model, b)),
        prefill=lambda b, mask, cache: prefill(model, b, mask, cache),
        decode=lambda token, mask, cache: decode(model, token, mask, cache),
        mask=lambda b: mask_fn(model, b),
    )


def _changed(lm, batch, changed_batch) -> np.ndarray:
    """[b, L] bool: which positions' logits differ between the two batches."""
    diff = np.abs(lm.run(changed_batch) - lm.run(batch)).max(-1)
    return diff > 1e-6


@pytest.mark.parametrize("j", [FP_PREFIX, FP_PREFIX + 4, 27])
def test_an_output_token_changes_only_its_own_and_later_logits(lm, j):
    tokens = lm.fp.tokens.copy()
    tokens[:, j] = VOCAB.visual_factor_range(0)[0] + (tokens[:, j] + 1) % 4
    changed = _changed(lm, lm.fp, lm.fp._replace(tokens=tokens))
    assert not changed[:, :j].any()
    assert changed[:, j:].all()


@pytest.mark.parametrize("k", [0, 10, FP_PREFIX - 1])
def test_a_prefix_token_changes_every_position_before_and_after_it(lm, k):
    tokens = lm.fp.tokens.copy()
    tokens[:, k] = VOCAB.visual_factor_range(1)[0] + 2
    assert _changed(lm, lm.fp, lm.fp._replace(tokens=tokens)).all()


def test_text_embeddings_reach_every_position_through_their_slots_only(lm):
    text = lm.fp.text_embeddings.copy()
    text[1, 2] += 1.0  # example 1's third slot is empty (text_mask False)
    unchanged = _changed(lm, lm.fp, lm.fp._replace(text_embeddings=text))
    assert not unchanged.any()
    text[:, 0] += 1.0
    assert _changed(lm, lm.fp, lm.fp._replace(text_embeddings=text)).all()
    # Empty text slots are no attention key for any query; filled ones are for all of them.
    mask = np.asarray(lm.mask(lm.fp))[:, 0]
    slots = lm.fp.text_positions[0]
    assert not mask[1, :, slots[2:]].any() and mask[1, :, slots[:2]].all()
    assert mask[0, :, slots[:3]].all() and not mask[0, :, slots[3]].any()
    with pytest.raises(ValueError, match="width 5 given to a PrefixLM built with text_dim=6"):
        lm.model(lm.fp.tokens, lm.fp.prefix_length, text[..., :5], lm.fp.text_mask)


def test_each_row_keeps_its_own_prefix_in_a_mixed_batch(lm):
    t2v = LAYOUT.build("t2v", _inputs(1))
    mixed = concat_batches([t2v, lm.fp])
    mixed = type(mixed)(*(a[[0, 2]] for a in mixed))  # one t2v row, one fp row
    assert list(mixed.prefix_length) == [9, FP_PREFIX]
    logits = lm.run(mixed)
    np.testing.assert_allclose(logits[0], lm.run(t2v)[0], atol=1e-5)
    np.testing.assert_allclose(logits[1], lm.run(lm.fp)[0], atol=1e-5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_the_mean_next_token_cross_entropy_over_output_tokens(lm):
    batch = lm.fp
    logits = lm.run(batch)
    loss = float(prefix_lm_loss(jnp.asarray(logits), batch.tokens, batch.loss_mask))
    log_probs = _log_softmax(logits.astype(np.float64))
    terms = [
        -log_probs[i, p - 1, batch.tokens[i, p]]
        for i in range(2)
        for p in range(1, LAYOUT.length)
        if batch.loss_mask[i, p]
    ]
    assert len(terms) == 2 * (8 + 2)  # 8 sub-tokens, <eov_o>, <eos> per row
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    # At initialisation the predictions are close to uniform over the vocabulary.
    assert abs(loss - math.log(VOCAB.size)) < 0.1
    # Logits that predict prefix or padding tokens do not count; those predicting outputs do.
    noise = np.random.default_rng(3).normal(size=logits.shape).astype(np.float32)
    targets_output = np.zeros_like(batch.loss_mask)
    targets_output[:, :-1] = batch.loss_mask[:, 1:]
    elsewhere = np.where(targets_output[..., None], logits, logits + noise)
    same = float(prefix_lm_loss(jnp.asarray(elsewhere), batch.tokens, batch.loss_mask))
    np.testing.assert_allclose(same, loss, rtol=1e-6)
    there = np.where(targets_output[..., None], logits + noise, logits)
    assert (
        abs(float(prefix_lm_loss(jnp.asarray(there), batch.tokens, batch.loss_mask)) - loss) > 1e-3
    )


def test_kv_cache_decoding_reproduces_the_full_pass(lm):
    batch = lm.fp
    full = lm.run(batch)
    mask = lm.mask(batch)
    cache = lm.model.init_cache(2, LAYOUT.length)
    logits, cache = lm.prefill(batch, mask, cache)
    np.testing.assert_allclose(logits, full[:, FP_PREFIX - 1], atol=2e-5, rtol=1e-5)
    for position in range(FP_PREFIX, LAYOUT.length - 1):
        logits, cache = lm.decode(jnp.asarray(batch.tokens[:, position]), mask, cache)
        np.testing.assert_allclose(logits, full[:, position], atol=2e-5, rtol=1e-5)
    assert int(cache.length) == LAYOUT.length - 1


def _argmax_in(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    ids = np.arange(logits.shape[-1])
    inside = (ids >= allowed[:, :1]) & (ids < allowed[:, 1:])
    return np.where(inside, logits, -np.inf).argmax(-1)


def test_greedy_kv_cache_decoding_equals_full_recomputation_token_for_token(lm):
    batch = LAYOUT.build("fp", _inputs(0)._replace(video=_inputs(0).video[:, :1]))
    end = LAYOUT.task_length("fp")
    tokens = batch.tokens.copy()
    mask = lm.mask(batch)  # outputs are not yet sampled: the mask depends on the prefix only
    cache = lm.model.init_cache(2, LAYOUT.length)
    logits, cache = lm.prefill(batch, mask, cache)
    for position in range(FP_PREFIX, end):
        token = _argmax_in(np.asarray(logits), batch.next_range[:, position - 1])
        tokens[:, position] = token
        logits, cache = lm.decode(jnp.asarray(token, jnp.int32), mask, cache)
    full = lm.run(batch._replace(tokens=tokens))
    for position in range(FP_PREFIX, end):
        expected = _argmax_in(full[:, position - 1], batch.next_range[:, position - 1])
        np.testing.assert_array_equal(tokens[:, position], expected, err_msg=f"position {position}")
    assert [VOCAB.token_name(t) for t in tokens[0, end - 2 : end]] == ["<eov_o>", "<eos>"]


# --- sizes and sharding ---------------------------------------------------------------------


def _abstract(size: str, vocab_size: int, text_dim: int) -> PrefixLM:
    return nnx.eval_shape(
        lambda: PrefixLM(
            vocab_size=vocab_size,
            pad_id=0,
            text_dim=text_dim,
            **PREFIX_LM_SIZES[size],
            rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
        )
    )


@pytest.mark.parametrize("size,nominal", [("300M", 300e6), ("1B", 1e9), ("8B", 8e9)])
def test_named_sizes_have_the_thesis_parameter_counts(size, nominal):
    vocab, text_dim = Vocabulary().size, 2048  # T5 XL's width
    model = _abstract(size, vocab, text_dim)
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    d = PREFIX_LM_SIZES[size]["hidden_size"]
    non_embedding = count - vocab * d - vocab - text_dim * d - d
    assert abs(non_embedding - nominal) / nominal < 0.01, non_embedding


def test_parameters_carry_logical_axis_names_that_the_fsdp_tensor_preset_shards():
    model = _abstract("tiny", VOCAB.size, 6)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = var.get_metadata()["out_sharding"]
            assert len(axes) == var.ndim, (path, axes)
            assert {a for a in axes if a is not None} <= set(sharding.PARAMETER_AXES), (path, axes)
    mesh = sharding.make_mesh((1, 2, 4))
    _, abstract_state = nnx.split(model)
    specs = {
        "/".join(map(str, path)): s.spec
        for path, s in nnx.to_flat_state(
            sharding.state_shardings(abstract_state, mesh, "fsdp_tensor")
        )
    }
    assert specs["token_embedding"] == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert specs["text_projection"] == jax.sharding.PartitionSpec(None, "fsdp")
    assert specs["stack/blocks/0/mlp/wi"] == jax.sharding.PartitionSpec("fsdp", "tensor")
