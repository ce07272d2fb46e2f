"""VideoPoet's prefix LM: bidirectional attention over the prefix and causal after (checked
through the logits), text written into its slots, the loss on output tokens only, KV-cache
decoding equal to the full pass (teacher-forced and greedy), a factorized code's factors
predicted one after another from one position, per-row prefixes in a mixed batch,
parameter counts of the named sizes and logical sharding names."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import sharding
from videogen.models.prefix_lm import PREFIX_LM_SIZES, Predictions, PrefixLM, prefix_lm_loss
from videogen.tasks.videopoet_layout import SequenceLayout, TaskInputs, concat_batches
from videogen.tasks.videopoet_vocab import Vocabulary

# 4-bit codes as 2 sub-tokens of 4 ids: one position per code, factor 1 in factor_tokens.
VOCAB = Vocabulary(visual_codes=2**4, visual_factors=2, audio_levels=0)
FACTOR_1 = VOCAB.visual_factor_range(1)
# fp: <bos> <task> <bot_i> 4 <eot_i> <bov_i> 4 <eov_i> <bov_o> | 4 <eov_o> <eos> (prefix 15, 21)
LAYOUT = SequenceLayout(
    VOCAB, (2, 2, 2), ("t2v", "fp"), text_dim=6, max_text_tokens=4, condition_frames=1
)
FP_PREFIX = 15


def _model() -> PrefixLM:
    return PrefixLM(
        vocab_size=VOCAB.size,
        pad_id=VOCAB.pad_id,
        text_dim=6,
        factor_ranges=(FACTOR_1,),
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
    forward = nnx.jit(lambda m, b: m(*b.model_args))
    prefill = nnx.jit(
        lambda m, b, mask, cache: m.prefill(
            b.tokens[:, :FP_PREFIX],
            b.factor_tokens[:, :FP_PREFIX],
            mask,
            cache,
            b.text_embeddings,
            b.text_mask,
            b.text_positions,
        )
    )
    decode = nnx.jit(
        lambda m, token, factors, mask, cache: m.decode_step(token, factors, mask, cache)
    )
    heads = nnx.jit(lambda m, hidden, token: (m.logits(hidden), m.factor_logits(hidden, token)))
    mask_fn = nnx.jit(
        lambda m, b: m.attention_mask(b.tokens, b.prefix_length, b.text_mask, b.text_positions)
    )
    return types.SimpleNamespace(
        model=model,
        fp=LAYOUT.build("fp", _inputs(0)),
        run=lambda b: Predictions(*map(np.asarray, forward(model, b))),
        prefill=lambda b, mask, cache: prefill(model, b, mask, cache),
        decode=lambda token, factors, mask, cache: decode(model, token, factors, mask, cache),
        heads=lambda hidden, token: tuple(map(np.asarray, heads(model, hidden, token[:, None]))),
        mask=lambda b: mask_fn(model, b),
    )


def _changed(lm, batch, changed_batch) -> tuple[np.ndarray, np.ndarray]:
    """[b, L] bool each: which positions' logits, and factor-1 logits, differ between the
    two batches."""
    new, old = lm.run(changed_batch), lm.run(batch)
    logits = np.abs(new.logits - old.logits).max(-1) > 1e-6
    factor = np.abs(new.factor_logits - old.factor_logits).max((-2, -1)) > 1e-6
    return logits, factor


@pytest.mark.parametrize("j", [FP_PREFIX, FP_PREFIX + 2, 19])
def test_an_output_code_changes_only_its_own_and_later_predictions(lm, j):
    # Factor 0 of the code at j: the logits from j on, and the factor head of position j - 1,
    # which predicts factor 1 of that code given its factor 0.
    tokens = lm.fp.tokens.copy()
    tokens[:, j] = VOCAB.visual_factor_range(0)[0] + (tokens[:, j] + 1) % 4
    logits, factor = _changed(lm, lm.fp, lm.fp._replace(tokens=tokens))
    assert not logits[:, :j].any() and logits[:, j:].all()
    assert not factor[:, : j - 1].any() and factor[:, j - 1 :].all()
    # Factor 1 of that code: from j on only (no head predicts a factor from itself).
    factors = lm.fp.factor_tokens.copy()
    factors[:, j] = FACTOR_1[0] + (factors[:, j] + 1) % 4
    logits, factor = _changed(lm, lm.fp, lm.fp._replace(factor_tokens=factors))
    assert not logits[:, :j].any() and logits[:, j:].all()
    assert not factor[:, :j].any() and factor[:, j:].all()


@pytest.mark.parametrize("k", [0, 8, FP_PREFIX - 1])
def test_a_prefix_token_changes_every_position_before_and_after_it(lm, k):
    tokens = lm.fp.tokens.copy()
    tokens[:, k] = VOCAB.visual_factor_range(0)[0] + 2
    logits, factor = _changed(lm, lm.fp, lm.fp._replace(tokens=tokens))
    assert logits.all() and factor.all()


def test_text_embeddings_reach_every_position_through_their_slots_only(lm):
    text = lm.fp.text_embeddings.copy()
    text[1, 2] += 1.0  # example 1's third slot is empty (text_mask False)
    unchanged = _changed(lm, lm.fp, lm.fp._replace(text_embeddings=text))[0]
    assert not unchanged.any()
    text[:, 0] += 1.0
    assert _changed(lm, lm.fp, lm.fp._replace(text_embeddings=text))[0].all()
    # Empty text slots are no attention key for any query; filled ones are for all of them.
    mask = np.asarray(lm.mask(lm.fp))[:, 0]
    slots = lm.fp.text_positions[0]
    assert not mask[1, :, slots[2:]].any() and mask[1, :, slots[:2]].all()
    assert mask[0, :, slots[:3]].all() and not mask[0, :, slots[3]].any()
    with pytest.raises(ValueError, match="width 5 given to a PrefixLM built with text_dim=6"):
        lm.model(
            lm.fp.tokens, lm.fp.factor_tokens, lm.fp.prefix_length, text[..., :5], lm.fp.text_mask
        )


def test_each_row_keeps_its_own_prefix_in_a_mixed_batch(lm):
    t2v = LAYOUT.build("t2v", _inputs(1))
    mixed = concat_batches([t2v, lm.fp])
    mixed = type(mixed)(*(a[[0, 2]] for a in mixed))  # one t2v row, one fp row
    assert list(mixed.prefix_length) == [9, FP_PREFIX]
    for field in Predictions._fields:
        got = getattr(lm.run(mixed), field)
        np.testing.assert_allclose(got[0], getattr(lm.run(t2v), field)[0], atol=1e-5)
        np.testing.assert_allclose(got[1], getattr(lm.run(lm.fp), field)[0], atol=1e-5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _loss(predictions: Predictions, batch) -> float:
    starts = np.asarray([FACTOR_1[0]], np.int32)
    targets = (batch.tokens, batch.factor_tokens, batch.loss_mask)
    predictions = Predictions(*map(jnp.asarray, predictions))
    return float(prefix_lm_loss(predictions, *targets, factor_starts=starts, pad_id=VOCAB.pad_id))


def test_loss_is_the_mean_cross_entropy_over_every_output_id_factors_included(lm):
    batch = lm.fp
    predictions = lm.run(batch)
    loss = _loss(predictions, batch)
    log_probs = _log_softmax(predictions.logits.astype(np.float64))
    factor_log_probs = _log_softmax(predictions.factor_logits[:, :, 0].astype(np.float64))
    terms, factor_terms = [], []
    for i in range(2):
        for p in range(1, LAYOUT.length):
            if batch.loss_mask[i, p]:
                terms.append(-log_probs[i, p - 1, batch.tokens[i, p]])
                if batch.factor_tokens[i, p, 0] != VOCAB.pad_id:
                    factor_id = batch.factor_tokens[i, p, 0] - FACTOR_1[0]
                    factor_terms.append(-factor_log_probs[i, p - 1, factor_id])
    # Per row: 4 codes (factor 0), <eov_o>, <eos>; and the 4 codes' factor 1.
    assert (len(terms), len(factor_terms)) == (2 * 6, 2 * 4)
    np.testing.assert_allclose(loss, np.mean(terms + factor_terms), rtol=1e-5)
    # At initialisation the predictions are close to uniform: over the vocabulary for
    # tokens, over factor 1's 4 ids for factors.
    uniform = (len(terms) * math.log(VOCAB.size) + len(factor_terms) * math.log(4)) / 20
    assert abs(loss - uniform) < 0.1
    # Predictions of prefix or padding positions do not count; those of outputs do.
    rng = np.random.default_rng(3)
    targets_output = np.zeros_like(batch.loss_mask)
    targets_output[:, :-1] = batch.loss_mask[:, 1:]
    for field in Predictions._fields:
        value = getattr(predictions, field)
        noise = rng.normal(size=value.shape).astype(np.float32)
        where = targets_output.reshape(*targets_output.shape, *[1] * (value.ndim - 2))
        elsewhere = predictions._replace(**{field: np.where(where, value, value + noise)})
        np.testing.assert_allclose(_loss(elsewhere, batch), loss, rtol=1e-6)
        there = predictions._replace(**{field: np.where(where, value + noise, value)})
        assert abs(_loss(there, batch) - loss) > 1e-3, field


def test_kv_cache_decoding_reproduces_the_full_pass(lm):
    batch = lm.fp
    full = lm.run(batch)
    mask = lm.mask(batch)
    cache = lm.model.init_cache(2, LAYOUT.length)
    hidden, cache = lm.prefill(batch, mask, cache)
    for position in range(FP_PREFIX - 1, LAYOUT.length - 1):
        if position >= FP_PREFIX:
            token, factors = (jnp.asarray(a[:, position]) for a in batch[:2])
            hidden, cache = lm.decode(token, factors, mask, cache)
        # The factor head given the next code's true factor 0, as the full pass is.
        logits, factor_logits = lm.heads(hidden, jnp.asarray(batch.tokens[:, position + 1]))
        np.testing.assert_allclose(logits, full.logits[:, position], atol=2e-5, rtol=1e-5)
        expected = full.factor_logits[:, position, 0]
        np.testing.assert_allclose(factor_logits, expected, atol=2e-5, rtol=1e-5)
    assert int(cache.length) == LAYOUT.length - 1


def _argmax_in(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    ids = np.arange(logits.shape[-1])
    inside = (ids >= allowed[:, :1]) & (ids < allowed[:, 1:])
    return np.where(inside, logits, -np.inf).argmax(-1)


def test_greedy_kv_cache_decoding_equals_full_recomputation_token_for_token(lm):
    batch = LAYOUT.build("fp", _inputs(0)._replace(video=_inputs(0).video[:, :1]))
    end = LAYOUT.task_length("fp")
    tokens, factors = batch.tokens.copy(), batch.factor_tokens.copy()
    mask = lm.mask(batch)  # outputs are not yet sampled: the mask depends on the prefix only
    cache = lm.model.init_cache(2, LAYOUT.length)
    hidden, cache = lm.prefill(batch, mask, cache)
    for position in range(FP_PREFIX, end):
        logits, _ = lm.heads(hidden, jnp.zeros(2, jnp.int32))
        token = _argmax_in(logits, batch.next_range[:, position - 1])
        _, factor_logits = lm.heads(hidden, jnp.asarray(token, jnp.int32))
        visual = batch.next_range[:, position - 1, 0] == VOCAB.visual_start
        factor = np.where(visual, factor_logits.argmax(-1) + FACTOR_1[0], VOCAB.pad_id)
        tokens[:, position], factors[:, position, 0] = token, factor
        step = (jnp.asarray(token, jnp.int32), jnp.asarray(factors[:, position]))
        hidden, cache = lm.decode(*step, mask, cache)
    full = lm.run(batch._replace(tokens=tokens, factor_tokens=factors))
    for position in range(FP_PREFIX, end):
        expected = _argmax_in(full.logits[:, position - 1], batch.next_range[:, position - 1])
        np.testing.assert_array_equal(tokens[:, position], expected, err_msg=f"position {position}")
    video = LAYOUT.segment("fp", "video_out")
    expected = full.factor_logits[:, video.start - 1 : video.stop - 1, 0].argmax(-1) + FACTOR_1[0]
    np.testing.assert_array_equal(factors[:, video.start : video.stop, 0], expected)
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
