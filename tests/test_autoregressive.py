"""KV-cache autoregressive sampling of the prefix LM: logits filtering (segment range,
temperature, top-k, top-p, per-row settings), samples that never leave their segment's id
range, greedy decoding equal to the full pass, top-k = 1 and a tiny top-p equal to greedy,
audio segments at their own temperature, classifier-free guidance (scale 1 = conditional,
0 = unconditional, 3 = the guided argmax), a factorized code's factors drawn at one
position, long-video extension and task chaining."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models.prefix_lm import PREFIX_LM_SIZES, PrefixLM
from videogen.sampling.autoregressive import (
    ChainStage,
    chain_tasks,
    filter_logits,
    generate_long_video,
    sample,
    sample_token,
)
from videogen.tasks.videopoet_layout import SequenceLayout, TaskInputs, drop_text
from videogen.tasks.videopoet_vocab import Vocabulary

# 4-bit codes as 2 x 2-bit sub-tokens: each visual position draws one of 4 factor-0 ids, then
# one of 4 factor-1 ids; one audio level of 8 codes, 8 frames per clip (AVCont is given the
# first 2).
VOCAB = Vocabulary(visual_codes=2**4, visual_factors=2, audio_levels=1, audio_codebook_size=8)
FACTOR_1 = VOCAB.visual_factor_range(1)
LAYOUT = SequenceLayout(
    VOCAB,
    (3, 2, 2),
    ("t2v", "fp", "i2v", "outpaint", "avcont"),
    audio_frames=8,
    text_dim=6,
    max_text_tokens=4,
    avcont_audio_frames=2,
)
B = 3


@pytest.fixture(scope="module")
def setup():
    model = nnx.jit(
        lambda: PrefixLM(
            vocab_size=VOCAB.size,
            pad_id=VOCAB.pad_id,
            text_dim=6,
            factor_ranges=(FACTOR_1,),
            **PREFIX_LM_SIZES["tiny"],
            # Seed 1: at seed 0 this tiny model's greedy T2V samples ignore the text.
            rngs=nnx.Rngs(jax.random.key(1, impl="rbg")),
        )
    )()
    # Larger weights than the initialisation's, as after training: peaked next-token
    # distributions (argmax and sampling differ) that depend on the context, text included
    # (at initialisation attention is near uniform and each prediction follows its token).
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and var.ndim >= 2:
            var[...] = var[...] * 5.0
    model.token_embedding[...] = model.token_embedding[...] * 4.0
    forward = nnx.jit(lambda m, b: m(*b.model_args))
    text = np.random.default_rng(0).normal(size=(B, 4, 6)).astype(np.float32)
    return types.SimpleNamespace(
        model=model,
        batch=LAYOUT.build("t2v", TaskInputs(text_embeddings=text)),
        run=lambda b: tuple(map(np.asarray, forward(model, b))),
    )


# --- logits filtering ------------------------------------------------------------------------

LOGITS = jnp.log(jnp.array([[0.05, 0.5, 0.3, 0.15, 0.0001, 0.9]]))
FIRST_FIVE = jnp.array([[0, 5]])


def _kept(**kwargs) -> list[int]:
    settings = dict(temperature=1.0, top_k=0, top_p=1.0) | kwargs
    filtered = filter_logits(LOGITS, FIRST_FIVE, **settings)
    return np.flatnonzero(np.isfinite(np.asarray(filtered[0]))).tolist()


def test_filter_keeps_the_allowed_range_then_top_k_then_the_nucleus():
    assert _kept() == [0, 1, 2, 3, 4]  # id 5 is outside the range, however likely
    assert _kept(top_k=2) == [1, 2]
    assert _kept(top_k=1) == [1]
    # Probabilities within the range: 0.5, 0.3, 0.15, 0.05, 0.0001 (normalised).
    assert _kept(top_p=0.49) == [1]
    assert _kept(top_p=0.5) == [1, 2]  # 0.5 / 1.0001 falls short of 0.5
    assert _kept(top_p=0.6) == [1, 2]
    assert _kept(top_p=0.81) == [1, 2, 3]
    assert _kept(top_k=2, top_p=0.99) == [1, 2]
    scaled = filter_logits(LOGITS, FIRST_FIVE, temperature=2.0, top_k=0, top_p=1.0)
    np.testing.assert_allclose(scaled[0, :5], LOGITS[0, :5] / 2.0, rtol=1e-6)
    # One setting per row filters each row as that setting alone would.
    rows = filter_logits(
        jnp.repeat(LOGITS, 2, axis=0),
        jnp.repeat(FIRST_FIVE, 2, axis=0),
        temperature=jnp.array([1.0, 2.0]),
        top_k=jnp.array([2, 0]),
        top_p=jnp.array([1.0, 0.6]),
    )
    alone = filter_logits(LOGITS, FIRST_FIVE, temperature=2.0, top_k=0, top_p=0.6)
    assert np.flatnonzero(np.isfinite(np.asarray(rows[0]))).tolist() == [1, 2]
    np.testing.assert_array_equal(rows[1], alone[0])


def test_temperature_zero_is_the_argmax_within_the_range():
    key = jax.random.key(0)
    greedy = sample_token(key, LOGITS, FIRST_FIVE, temperature=0.0, top_k=0, top_p=1.0)
    assert int(greedy[0]) == 1
    draws = jax.vmap(
        lambda k: sample_token(k, LOGITS, FIRST_FIVE, temperature=1.0, top_k=0, top_p=0.81)
    )(jax.random.split(key, 2000))
    counts = np.bincount(np.asarray(draws)[:, 0], minlength=6)
    assert counts[0] == counts[4] == counts[5] == 0
    np.testing.assert_allclose(counts[1:4] / 2000, np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.04)


# --- sampling the model ----------------------------------------------------------------------


def _ids(batch) -> np.ndarray:
    """[b, l, 2]: each position's token and its visual factor 1 (<pad> off visual codes)."""
    return np.concatenate([batch.tokens[..., None], batch.factor_tokens], axis=-1)


def _in_range(sampled, batch) -> bool:
    lo, hi = batch.next_range[:, :-1, 0], batch.next_range[:, :-1, 1]
    following, factor = sampled.tokens[:, 1:], sampled.factor_tokens[:, 1:, 0]
    outputs = batch.loss_mask[:, 1:]
    visual = lo == VOCAB.visual_start
    factor_ok = np.where(
        visual, (factor >= FACTOR_1[0]) & (factor < FACTOR_1[1]), factor == VOCAB.pad_id
    )
    return bool((((following >= lo) & (following < hi) & factor_ok) | ~outputs).all())


def test_hot_samples_never_leave_their_segment_range(setup):
    batch = setup.batch
    sampled = sample(setup.model, batch, jax.random.key(1), temperature=100.0)
    tokens = sampled.tokens
    assert _in_range(sampled, batch)
    given = ~batch.loss_mask
    np.testing.assert_array_equal(_ids(sampled)[given], _ids(batch)[given])
    end = LAYOUT.task_length("t2v")
    assert [VOCAB.token_name(t) for t in tokens[0, end - 2 : end]] == ["<eov_o>", "<eos>"]
    # At a high temperature the draws spread over the 16 codes (4 x 4 factor ids).
    video = LAYOUT.outputs("t2v", sampled).video
    assert len(np.unique(video)) >= 10
    other = sample(setup.model, batch, jax.random.key(2), temperature=100.0)
    assert (_ids(other) != _ids(sampled)).any()
    again = sample(setup.model, batch, jax.random.key(1), temperature=100.0)
    np.testing.assert_array_equal(_ids(again), _ids(sampled))


def _greedy_from_full_pass(setup, batch, sampled, guidance: float | None = None) -> np.ndarray:
    """`_ids` of each output position's argmax within its range (token, then factor 1 given
    that token), from full passes over ``sampled``'s ids."""
    filled = batch._replace(tokens=sampled.tokens, factor_tokens=sampled.factor_tokens)
    logits, factor_logits = setup.run(filled)
    if guidance is not None:
        uncond, uncond_factor = setup.run(drop_text(batch)._replace(**filled._asdict()))
        logits = uncond + guidance * (logits - uncond)
        factor_logits = uncond_factor + guidance * (factor_logits - uncond_factor)
    ids = np.arange(logits.shape[-1])
    allowed = batch.next_range
    inside = (ids >= allowed[..., :1]) & (ids < allowed[..., 1:])
    best = np.where(inside, logits, -np.inf).argmax(-1)
    visual = allowed[..., 0] == VOCAB.visual_start
    best_factor = np.where(visual, factor_logits[..., 0, :].argmax(-1) + FACTOR_1[0], VOCAB.pad_id)
    expected = _ids(sampled).copy()
    outputs = batch.loss_mask[:, 1:, None]
    best_ids = np.stack([best, best_factor], axis=-1)
    expected[:, 1:] = np.where(outputs, best_ids[:, :-1], expected[:, 1:])
    return expected


def test_greedy_sampling_equals_the_argmax_of_the_full_pass(setup):
    sampled = sample(setup.model, setup.batch, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(
        _ids(sampled), _greedy_from_full_pass(setup, setup.batch, sampled)
    )
    hot = dict(temperature=100.0)
    for filtering in (dict(top_k=1), dict(top_p=1e-6)):
        filtered = sample(setup.model, setup.batch, jax.random.key(5), **hot, **filtering)
        np.testing.assert_array_equal(_ids(filtered), _ids(sampled), err_msg=str(filtering))
    hot_sample = sample(setup.model, setup.batch, jax.random.key(5), **hot)
    assert (_ids(hot_sample) != _ids(sampled)).any()


def test_audio_segments_sample_at_their_own_temperature(setup):
    """AVCont with video at temperature 1 and audio at 0: every audio token is the argmax
    of the full pass over the sampled sequence, some video token is not; with the audio
    left at the video's temperature some audio token is not either (the same compiled
    program: the settings are traced)."""
    rng = np.random.default_rng(7)
    inputs = TaskInputs(
        video=rng.integers(0, 16, (B, 3, 2, 2)), audio=rng.integers(0, 8, (B, 1, 8))
    )
    batch = LAYOUT.build("avcont", inputs)
    # Position p's token was drawn from the range of p - 1's next_range.
    lowest = np.zeros_like(batch.next_range[..., 0])
    lowest[:, 1:] = batch.next_range[:, :-1, 0]
    audio = batch.loss_mask & (lowest >= VOCAB.audio_start)
    video = batch.loss_mask & (lowest >= VOCAB.visual_start) & (lowest < VOCAB.audio_start)
    assert audio.sum() == B * 6 and video.sum() == B * 2 * 2 * 2

    def greedy_where(seed, **audio_settings):
        sampled = sample(
            setup.model,
            batch,
            jax.random.key(seed),
            temperature=1.0,
            audio_start=VOCAB.audio_start,
            **audio_settings,
        )
        return (_ids(sampled) == _greedy_from_full_pass(setup, batch, sampled)).all(-1)

    video_sampled = audio_sampled = False
    for seed in range(4):
        greedy = greedy_where(seed, audio_temperature=0.0)
        assert greedy[audio].all(), seed
        video_sampled |= not greedy[video].all()
        audio_sampled |= not greedy_where(seed)[audio].all()
    assert video_sampled and audio_sampled
    with pytest.raises(ValueError, match="need audio_start"):
        sample(setup.model, batch, jax.random.key(0), audio_temperature=0.0)


def test_guidance_scale_one_is_conditional_zero_unconditional(setup):
    batch, key = setup.batch, jax.random.key(0)
    unconditional = drop_text(batch)
    cond = _ids(sample(setup.model, batch, key, temperature=0.0))
    uncond = _ids(sample(setup.model, unconditional, key, temperature=0.0))
    assert (cond != uncond).any()  # the text matters, so the scales below are distinguishable

    def guided(scale):
        return sample(
            setup.model,
            batch,
            key,
            temperature=0.0,
            guidance_scale=scale,
            unconditional=unconditional,
        )

    np.testing.assert_array_equal(_ids(guided(1.0)), cond)
    np.testing.assert_array_equal(_ids(guided(0.0))[:, 9:], uncond[:, 9:])  # text differs
    strong = guided(3.0)
    np.testing.assert_array_equal(_ids(strong), _greedy_from_full_pass(setup, batch, strong, 3.0))
    with pytest.raises(ValueError, match="needs the unconditional sequences"):
        sample(setup.model, batch, key, guidance_scale=3.0)


def test_a_batch_mixing_tasks_is_refused(setup):
    from videogen.tasks.videopoet_layout import concat_batches

    fp = LAYOUT.build("fp", TaskInputs(video=np.zeros((B, 1, 2, 2), int)))
    with pytest.raises(ValueError, match="sample one task per call"):
        sample(setup.model, concat_batches([setup.batch, fp]), jax.random.key(0))


# --- long videos and task chains -------------------------------------------------------------


def test_long_video_clips_continue_from_the_last_latent_frames(setup):
    first = np.random.default_rng(4).integers(0, 16, (B, 3, 2, 2))
    clips = generate_long_video(
        setup.model, LAYOUT, first, jax.random.key(3), num_clips=2, temperature=1.0
    )
    assert len(clips) == 3 and all(c.shape == (B, 3, 2, 2) for c in clips)
    np.testing.assert_array_equal(clips[0], first)
    for previous, clip in zip(clips, clips[1:]):
        np.testing.assert_array_equal(clip[:, :1], previous[:, -1:])  # condition_frames = 1
        assert ((clip >= 0) & (clip < 16)).all()
    assert (clips[1][:, 1:] != clips[2][:, 1:]).any()


def test_chained_tasks_feed_each_output_to_the_next_stage(setup):
    image = np.random.default_rng(5).integers(0, 16, (B, 1, 2, 2))
    seen = []

    def outpaint_inputs(previous):
        seen.append(previous.video)
        # Stands in for decoding, padding the condition region and tokenizing again.
        return TaskInputs(condition=previous.video)

    stages = [
        ChainStage("i2v", lambda _: TaskInputs(video=image)),
        ChainStage("outpaint", outpaint_inputs),
    ]
    animated, painted = chain_tasks(setup.model, LAYOUT, stages, jax.random.key(6), temperature=0.0)
    assert animated.video.shape == painted.video.shape == (B, 3, 2, 2)
    np.testing.assert_array_equal(animated.video[:, :1], image)
    np.testing.assert_array_equal(seen[0], animated.video)
    batch = LAYOUT.build("outpaint", TaskInputs(condition=animated.video))
    direct = sample(setup.model, batch, jax.random.fold_in(jax.random.key(6), 1), temperature=0.0)
    assert direct.factor_tokens.shape == (B, LAYOUT.length, 1)
    np.testing.assert_array_equal(LAYOUT.outputs("outpaint", direct).video, painted.video)
