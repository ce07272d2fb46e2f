"""VideoPoet's unified vocabulary and sequence layouts: id ranges and code round trips
(single ids and factorized sub-tokens), the thesis' token counts, each task's special-token
order, where the loss falls, padding to one length, text slots, and the task mixture's
errors and two-stage schedule."""

import jax.numpy as jnp
import numpy as np
import pytest

from videogen.models import quantizers
from videogen.tasks import commit
from videogen.tasks.videopoet_layout import (
    COMMIT_TASKS,
    TASK_SPECS,
    SequenceLayout,
    TaskInputs,
    TaskMixture,
    concat_batches,
    drop_text,
)
from videogen.tasks.videopoet_vocab import TASKS, Vocabulary

# 4-bit LFQ codes as 2 sub-tokens of 2 bits, 2 RVQ levels of 8 codes: 256 + 8 + 16 ids.
VOCAB = Vocabulary(visual_codes=2**4, visual_factors=2, audio_levels=2, audio_codebook_size=8)
LATENT = (3, 2, 2)
B = 2


@pytest.fixture(scope="module")
def layout():
    return SequenceLayout(
        VOCAB,
        LATENT,
        TASKS,
        audio_frames=4,
        text_dim=5,
        max_text_tokens=4,
        condition_frames=2,
        avcont_audio_frames=1,
    )


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return TaskInputs(
        video=rng.integers(0, 16, (B, *LATENT)),
        audio=rng.integers(0, 8, (B, 2, 4)),
        text_embeddings=rng.normal(size=(B, 3, 5)).astype(np.float32),
        text_mask=np.array([[True, True, True], [True, True, False]]),
        condition=rng.integers(0, 16, (B, *LATENT)),
    )


# --- vocabulary ------------------------------------------------------------------------------


def test_thesis_vocabulary_has_256_special_then_2_18_visual_then_4_x_1024_audio_ids():
    vocab = Vocabulary()
    assert (vocab.visual_start, vocab.audio_start, vocab.size) == (256, 256 + 2**18, 266_496)
    assert [vocab.audio_level_range(level) for level in range(4)] == [
        (262_400 + 1024 * level, 262_400 + 1024 * (level + 1)) for level in range(4)
    ]
    codes = np.array([0, 5, 2**18 - 1])
    np.testing.assert_array_equal(vocab.visual_to_ids(codes)[:, 0], codes + 256)
    np.testing.assert_array_equal(vocab.visual_from_ids(vocab.visual_to_ids(codes)), codes)


@pytest.mark.parametrize("bits,factors,visual_ids", [(18, 2, 1024), (10, 2, 64), (18, 3, 192)])
def test_factorized_visual_ids_round_trip_and_match_the_lfq_factorization(
    bits, factors, visual_ids
):
    vocab = Vocabulary(visual_codes=2**bits, visual_factors=factors)
    assert vocab.visual_size == visual_ids
    codes = np.random.default_rng(1).integers(0, 2**bits, (3, 7))
    ids = vocab.visual_to_ids(codes)
    for j in range(factors):
        lo, hi = vocab.visual_factor_range(j)
        assert ((ids[..., j] >= lo) & (ids[..., j] < hi)).all()
    # The sub-tokens are quantizers.factorize_indices (commit_tokens.to_factors), shifted into
    # each factor's own range.
    offsets = 256 + vocab.visual_sub_codes * np.arange(factors)
    np.testing.assert_array_equal(
        ids - offsets, quantizers.factorize_indices(jnp.asarray(codes), bits, factors)
    )
    np.testing.assert_array_equal(vocab.visual_from_ids(ids), codes)
    np.testing.assert_array_equal(
        vocab.visual_from_ids(vocab.visual_to_ids(jnp.asarray(codes))), codes
    )


def test_audio_ids_are_level_major_with_a_disjoint_range_per_level():
    tokens = np.random.default_rng(2).integers(0, 8, (2, 2, 4))
    ids = VOCAB.audio_to_ids(tokens)
    expected = quantizers.flatten_audio_tokens(jnp.asarray(tokens), 8) + VOCAB.audio_start
    np.testing.assert_array_equal(ids, expected)
    assert (ids[:, :4] < VOCAB.audio_start + 8).all() and (
        ids[:, 4:] >= VOCAB.audio_start + 8
    ).all()
    np.testing.assert_array_equal(VOCAB.audio_from_ids(ids), tokens)


def test_tasks_with_the_same_output_share_a_task_token():
    video = {VOCAB.task_id(t) for t in ("unconditional", "t2v", "t2i", "fp", "i2v", "a2v")}
    assert len(video) == 1
    assert VOCAB.task_id("inpaint") == VOCAB.task_id("outpaint")
    others = {VOCAB.task_id(t) for t in ("inpaint", "avcont", "v2a")}
    assert len(others) == 3 and not others & video
    with pytest.raises(ValueError, match=r"unknown VideoPoet task 'x2y'.*'t2v'.*'v2a'"):
        VOCAB.task_id("x2y")


def test_bad_factorization_is_refused():
    with pytest.raises(ValueError, match="2\\^K with K divisible"):
        Vocabulary(visual_codes=2**10, visual_factors=3)
    with pytest.raises(ValueError, match="2\\^K"):
        Vocabulary(visual_codes=1000, visual_factors=2)


# --- layouts ---------------------------------------------------------------------------------

# The special tokens of each task's sequence in order (Fig. 8.2, Table 8.3).
SPECIALS = {
    "unconditional": "<bos> <task_video> <bov_o> <eov_o> <eos>",
    "t2v": "<bos> <task_video> <bot_i> <eot_i> <bov_o> <eov_o> <eos>",
    "t2i": "<bos> <task_video> <bot_i> <eot_i> <bov_o>",
    "fp": "<bos> <task_video> <bot_i> <eot_i> <bov_i> <eov_i> <bov_o> <eov_o> <eos>",
    "i2v": "<bos> <task_video> <bot_i> <eot_i> <bov_i> <eov_i> <bov_o> <eov_o> <eos>",
    "inpaint": "<bos> <task_paint> <bov_i> <eov_i> <bov_o> <eov_o> <eos>",
    "outpaint": "<bos> <task_paint> <bov_i> <eov_i> <bov_o> <eov_o> <eos>",
    "avcont": "<bos> <task_avcont> <bov_i> <eov_i> <boa_i> <eoa_i> <bov_o> <eov_o> <boa_o> "
    "<eoa_o> <eos>",
    "a2v": "<bos> <task_video> <boa_i> <eoa_i> <bov_o> <eov_o> <eos>",
    "v2a": "<bos> <task_v2a> <bov_i> <eov_i> <boa_o> <eoa_o> <eos>",
}
# Visual / audio payload tokens of each task: (input video frames, output video frames,
# input audio frames, output audio frames) with 3 latent frames of 2x2, 4 audio frames.
PAYLOAD = {
    "unconditional": (0, 3, 0, 0),
    "t2v": (0, 3, 0, 0),
    "t2i": (0, 1, 0, 0),
    "fp": (2, 1, 0, 0),
    "i2v": (1, 2, 0, 0),
    "inpaint": (3, 3, 0, 0),
    "outpaint": (3, 3, 0, 0),
    "avcont": (1, 2, 1, 3),
    "a2v": (0, 3, 4, 0),
    "v2a": (3, 0, 0, 4),
}


def _names(tokens):
    return [VOCAB.token_name(i) for i in tokens]


@pytest.mark.parametrize("task", TASKS)
def test_each_task_has_its_special_tokens_in_order_and_payload_counts(layout, inputs, task):
    batch = layout.build(task, inputs)
    n = layout.task_length(task)
    for row in batch.tokens:
        names = _names(row[:n])
        assert " ".join(x for x in names if x.startswith("<") and x != "<pad>") == SPECIALS[task]
        video_in, video_out, audio_in, audio_out = PAYLOAD[task]
        prefix = batch.prefix_length[0]
        in_prefix, outputs = names[:prefix], names[prefix:]
        per_frame = 2 * 2  # h * w: one position per code, whatever the factors
        assert sum(x.startswith("visual") for x in in_prefix) == video_in * per_frame
        assert sum(x.startswith("visual") for x in outputs) == video_out * per_frame
        assert sum(x.startswith("audio") for x in in_prefix) == audio_in * 2
        assert sum(x.startswith("audio") for x in outputs) == audio_out * 2
        # Everything after the task's sequence is padding.
        assert set(_names(row[n:])) <= {"<pad>"}


@pytest.mark.parametrize("task", TASKS)
def test_every_token_lies_in_the_range_the_previous_position_allows(layout, inputs, task):
    batch = layout.build(task, inputs)
    lo, hi = batch.next_range[:, :-1, 0], batch.next_range[:, :-1, 1]
    following = batch.tokens[:, 1:]
    assert ((following >= lo) & (following < hi)).all()
    # A video position holds factor 0 (its range) in tokens and factor 1 in factor_tokens;
    # audio levels come one after another.
    video = PAYLOAD[task][1]
    seg = layout.segment(task, "video_out" if video else "audio_out")
    ranges = batch.next_range[0, seg.start - 1 : seg.stop - 1]
    assert len(set(map(tuple, ranges.tolist()))) == (1 if video else 2)
    assert batch.factor_tokens.shape == (B, layout.length, 1)
    visual = (batch.tokens >= VOCAB.visual_start) & (batch.tokens < VOCAB.audio_start)
    lo1, hi1 = VOCAB.visual_factor_range(1)
    factor = batch.factor_tokens[..., 0]
    assert ((factor >= lo1) & (factor < hi1))[visual].all()
    assert (factor[~visual] == VOCAB.pad_id).all()


@pytest.mark.parametrize("task", TASKS)
def test_loss_falls_on_the_outputs_and_their_closing_tokens_only(layout, inputs, task):
    batch = layout.build(task, inputs)
    prefix, n = int(batch.prefix_length[0]), layout.task_length(task)
    expected = np.zeros(layout.length, bool)
    expected[prefix:n] = True
    assert (batch.loss_mask == expected).all()
    row = _names(batch.tokens[0])
    assert row[prefix - 1] == ("<boa_o>" if task == "v2a" else "<bov_o>")
    assert row[n - 1] == ("visual[0]:" + row[n - 1].split(":")[1] if task == "t2i" else "<eos>")


def test_all_layouts_pad_to_the_longest_task(layout, inputs):
    # Painting is the longest: <bos> <task> + (1 + 12 + 1) in + <bov_o> 12 <eov_o> <eos>.
    assert layout.length == 2 + 14 + 1 + 12 + 2 == max(layout.task_length(t) for t in TASKS)
    mixed = concat_batches([layout.build(t, inputs) for t in TASKS])
    assert mixed.tokens.shape == (2 * len(TASKS), layout.length)
    assert mixed.next_range.shape == (2 * len(TASKS), layout.length, 2)
    np.testing.assert_array_equal(mixed.task_index, np.repeat(np.arange(len(TASKS)), 2))
    pad = mixed.tokens == VOCAB.pad_id
    assert not (pad & mixed.loss_mask).any()


def test_thesis_token_counts():
    # 17 frames at 128x128 -> (5, 16, 16) = 1280 tokens; an image 256 tokens (Sec. 8.3.1, 8.4.6).
    layout = SequenceLayout(
        Vocabulary(),
        (5, 16, 16),
        ("t2v", "t2i", "avcont"),
        audio_frames=106,
        text_dim=4096,
        avcont_audio_frames=6,
    )
    assert layout.segment("t2v", "video_out").length == 1280
    assert layout.segment("t2i", "video_out").length == 256
    assert layout.segment("t2v", "text").length == 64
    assert layout.segment("avcont", "audio_out").length == 4 * 100
    # <bos> <task> <bot_i> 64 <eot_i> <bov_o> 1280 <eov_o> <eos>
    assert layout.task_length("t2v") == 1351 and layout.prefix_length("t2v") == 69


def test_video_and_audio_round_trip_through_the_sequence(layout, inputs):
    for task in TASKS:
        out = layout.outputs(task, layout.build(task, inputs))
        spec = TASK_SPECS[task]
        if spec.video_output == "first_frame":
            np.testing.assert_array_equal(out.video, inputs.video[:, :1])
        elif spec.video_output != "none":
            np.testing.assert_array_equal(out.video, inputs.video, err_msg=task)
        if spec.audio_output != "none":
            np.testing.assert_array_equal(out.audio, inputs.audio, err_msg=task)
        assert (out.video is None) == (spec.video_output == "none")


def test_painting_reads_the_commit_condition_tokens_and_outputs_the_target(layout, inputs):
    for task, name in COMMIT_TASKS.items():
        (commit_task,) = commit.make_tasks([name])
        assert commit_task.inverted == (task == "inpaint")
        batch = layout.build(task, inputs)
        seg = layout.segment(task, "video_in")
        ids = np.concatenate([batch.tokens[..., None], batch.factor_tokens], axis=-1)
        given = VOCAB.visual_from_ids(ids[:, seg.start : seg.stop].reshape(B, 3, 2, 2, 2))
        np.testing.assert_array_equal(given, inputs.condition)
        np.testing.assert_array_equal(layout.outputs(task, batch).video, inputs.video)
    with pytest.raises(ValueError, match="needs TaskInputs.condition"):
        layout.build("inpaint", inputs._replace(condition=None))


def test_text_goes_into_the_slots_right_after_bot_i(layout, inputs):
    batch = layout.build("t2v", inputs)
    bot = _names(batch.tokens[0]).index("<bot_i>")
    np.testing.assert_array_equal(batch.text_positions, np.tile(bot + 1 + np.arange(4), (B, 1)))
    np.testing.assert_array_equal(batch.text_mask, [[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(batch.text_embeddings[:, :3], inputs.text_embeddings)
    assert not batch.text_embeddings[:, 3].any()
    assert (batch.tokens[0, bot + 1 : bot + 5] == VOCAB.pad_id).all()
    assert not drop_text(batch).text_mask.any()
    assert not layout.build("inpaint", inputs).text_mask.any()
    # Optional text: i2v carries a slot even without a caption; empty, so no text.
    captionless = layout.build("i2v", inputs._replace(text_embeddings=None, text_mask=None))
    assert "<bot_i>" in _names(captionless.tokens[0]) and not captionless.text_mask.any()
    with pytest.raises(ValueError, match="needs TaskInputs.text_embeddings"):
        layout.build("t2v", inputs._replace(text_embeddings=None))


def test_a_layout_without_text_has_no_text_slots():
    layout = SequenceLayout(VOCAB, LATENT, ("i2v", "unconditional"))
    assert "<bot_i>" not in [s.name for s in layout.segments("i2v")]
    with pytest.raises(ValueError, match="'t2v' needs text but text_dim=0"):
        SequenceLayout(VOCAB, LATENT, ("t2v",))
    with pytest.raises(ValueError, match="'v2a' needs audio"):
        SequenceLayout(VOCAB, LATENT, ("v2a",))


def test_outputs_left_out_are_pad_for_the_sampler(layout, inputs):
    given = layout.build("fp", inputs)
    to_sample = layout.build("fp", inputs._replace(video=inputs.video[:, :2]))
    np.testing.assert_array_equal(given.loss_mask, to_sample.loss_mask)
    seg = layout.segment("fp", "video_out")
    assert (to_sample.tokens[:, seg.start : seg.stop] == VOCAB.pad_id).all()
    assert (to_sample.factor_tokens[:, seg.start : seg.stop] == VOCAB.pad_id).all()
    np.testing.assert_array_equal(given.tokens[:, : seg.start], to_sample.tokens[:, : seg.start])
    unconditional = layout.build("unconditional", batch_size=3)
    assert unconditional.tokens.shape == (3, layout.length)


def test_resolution_and_source_tokens():
    layout = SequenceLayout(
        VOCAB, LATENT, ("t2v", "t2i"), text_dim=5, resolution="128x224", with_source=True
    )
    text = np.zeros((1, 2, 5), np.float32)
    names = _names(layout.build("t2v", TaskInputs(text_embeddings=text, source=[3])).tokens[0])
    assert names[:3] == ["<bos>", "<task_video>", "<source_3>"]
    assert names[names.index("<bov_o>") - 1] == "<res_128x224>"
    image = _names(layout.build("t2i", TaskInputs(text_embeddings=text, source=[0])).tokens[0])
    assert "<res_128x224>" not in image  # images are 128x128
    with pytest.raises(ValueError, match="unknown resolution"):
        SequenceLayout(VOCAB, LATENT, ("unconditional",), resolution="64x64")


def test_bad_inputs_are_refused(layout, inputs):
    with pytest.raises(ValueError, match=r"codes in \[16, 16\]; the vocabulary expects \[0, 16\)"):
        layout.build("fp", inputs._replace(video=np.full((B, *LATENT), 16)))
    with pytest.raises(ValueError, match="token grid"):
        layout.build("fp", inputs._replace(video=np.zeros((B, 3, 4, 4), int)))
    small = SequenceLayout(VOCAB, LATENT, ("unconditional",))
    with pytest.raises(ValueError, match="not among this layout's tasks"):
        small.build("t2v", inputs)


# --- task mixture ----------------------------------------------------------------------------


def test_mixture_errors_name_the_task_the_modality_and_the_fix():
    with pytest.raises(ValueError, match=r"unknown VideoPoet task\(s\) \['t2x'\]; the tasks are"):
        TaskMixture.from_config({"t2v": 1.0, "t2x": 1.0}, modalities=("text",))
    with pytest.raises(ValueError, match=r"task 't2v' needs text.*remove 't2v'"):
        TaskMixture.from_config({"fp": 1.0, "t2v": 1.0}, modalities=("audio",))
    with pytest.raises(ValueError, match=r"task 'avcont' needs audio.*remove 'avcont'"):
        TaskMixture.from_config({"avcont": 1.0}, modalities=("text",))
    with pytest.raises(ValueError, match="two_stage needs an image task"):
        TaskMixture.from_config({"t2v": 1.0, "fp": 1.0}, modalities=("text",), two_stage=True)
    with pytest.raises(ValueError, match="non-negative"):
        TaskMixture.from_config({"t2v": -1.0}, modalities=("text",))
    # Tasks whose text is optional do not need captions.
    assert TaskMixture.from_config({"i2v": 1.0, "fp": 1.0}, modalities=()).names == ("i2v", "fp")


def test_two_stage_schedule_is_90_10_images_for_the_first_quarter_then_10_90():
    mixture = TaskMixture.from_config(
        {"t2i": 2.0, "t2v": 3.0, "fp": 1.0}, modalities=("text",), two_stage=True
    )
    np.testing.assert_allclose(mixture.probabilities(0, 100), [0.9, 0.075, 0.025])
    np.testing.assert_allclose(mixture.probabilities(24, 100), [0.9, 0.075, 0.025])
    np.testing.assert_allclose(mixture.probabilities(25, 100), [0.1, 0.675, 0.225])
    flat = TaskMixture.from_config({"t2i": 2.0, "t2v": 3.0, "fp": 1.0}, modalities=("text",))
    np.testing.assert_allclose(flat.probabilities(0, 100), [2 / 6, 3 / 6, 1 / 6])
    draws = mixture.sample(3, 100, 4000, seed=0)
    assert abs(draws.count("t2i") / 4000 - 0.9) < 0.02
    assert draws == mixture.sample(3, 100, 4000, seed=0)  # a function of (seed, step)
    assert draws != mixture.sample(4, 100, 4000, seed=0)
    late = mixture.sample(80, 100, 4000, seed=0)
    assert abs(late.count("t2i") / 4000 - 0.1) < 0.02
