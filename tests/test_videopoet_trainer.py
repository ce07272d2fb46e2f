"""The VideoPoet trainer on tiny configs over tiny frozen video and audio tokenizers: sequences
assembled in the step equal the layout's, start-up errors, every experiment runs two steps,
resume, the held-out evaluation of every task, and the motion-direction check."""

import json
import wave

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_states import leaves
from tiny_configs import load_experiment, tiny_audio, tiny_videopoet

from videogen import main as videogen_main
from videogen.data import moving_digits
from videogen.tasks.videopoet_layout import SequenceLayout, TaskInputs
from videogen.tasks.videopoet_vocab import TASKS, Vocabulary
from videogen.trainers import audio_tokenizer, videopoet
from videogen.trainers.videopoet_generation import direction_correct
from videogen.trainers.videopoet_sequences import SequenceTemplates, assemble, example_ids


@pytest.fixture(scope="module")
def audio_workdir(tmp_path_factory):
    """A 2-step audio tokenizer run, the frozen codec of these tests."""
    workdir = str(tmp_path_factory.mktemp("audio_tokenizer"))
    config = tiny_audio("quickstart_audio", **{"checkpoint.every_steps": 2, "eval.at_end": False})
    assert audio_tokenizer.train_and_evaluate(config, workdir).step == 2
    return workdir


# --- sequences assembled in the step ----------------------------------------------------------


def test_sequences_assembled_in_the_step_equal_the_layouts():
    """For every task, `assemble` on an example's codes gives `SequenceLayout.build`'s tokens,
    factor tokens, loss mask, prefix length, text mask and text positions."""
    vocab = Vocabulary(visual_codes=2**6, visual_factors=2, audio_levels=2, audio_codebook_size=8)
    layout = SequenceLayout(
        vocab,
        (3, 2, 2),
        TASKS,
        audio_frames=7,
        text_dim=5,
        max_text_tokens=4,
        condition_frames=2,
        avcont_audio_frames=2,
    )
    templates = SequenceTemplates.from_layout(layout)
    assert templates.paint_tasks == ("inpaint", "outpaint")
    rng = np.random.default_rng(0)
    b = 3
    video = rng.integers(0, 2**6, (b, 3, 2, 2))
    audio = rng.integers(0, 8, (b, 2, 7))
    conditions = rng.integers(0, 2**6, (b, 2, 3, 2, 2))
    text = rng.normal(size=(b, 4, 5)).astype(np.float32)
    text_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    ids = example_ids(templates, jnp.asarray(video), jnp.asarray(audio), jnp.asarray(conditions))
    assert ids.shape == (b, templates.example_length, 2)  # one slot per code, 2 factor ids
    for task in TASKS:
        condition = None
        if task in templates.paint_tasks:
            condition = conditions[:, templates.paint_tasks.index(task)]
        inputs = TaskInputs(video, audio, text, text_mask, condition)
        expected = layout.build(
            task,
            inputs
            if layout.has_text(task)
            else inputs._replace(text_embeddings=None, text_mask=None),
        )
        rows = jnp.asarray(templates.task_rows([task] * b))
        got = jax.device_get(
            assemble(templates, rows, ids, jnp.asarray(text), jnp.asarray(text_mask))
        )
        np.testing.assert_array_equal(got["tokens"], expected.tokens, err_msg=task)
        np.testing.assert_array_equal(got["factor_tokens"], expected.factor_tokens, err_msg=task)
        np.testing.assert_array_equal(got["loss_mask"], expected.loss_mask, err_msg=task)
        np.testing.assert_array_equal(got["prefix_length"], expected.prefix_length, err_msg=task)
        np.testing.assert_array_equal(got["text_mask"], expected.text_mask, err_msg=task)
        np.testing.assert_array_equal(got["task_index"], expected.task_index, err_msg=task)
        if layout.has_text(task):
            np.testing.assert_array_equal(
                got["text_positions"], expected.text_positions, err_msg=task
            )
    # A batch mixing tasks takes each example's row.
    rows = jnp.asarray(templates.task_rows(["t2v", "v2a", "inpaint"]))
    mixed = jax.device_get(
        assemble(templates, rows, ids, jnp.asarray(text), jnp.asarray(text_mask))
    )
    for i, task in enumerate(["t2v", "v2a", "inpaint"]):
        condition = conditions[:, 0] if task == "inpaint" else None
        expected = layout.build(task, TaskInputs(video, audio, text, text_mask, condition))
        np.testing.assert_array_equal(mixed["tokens"][i], expected.tokens[i], err_msg=task)
        np.testing.assert_array_equal(
            mixed["factor_tokens"][i], expected.factor_tokens[i], err_msg=task
        )


# --- start-up errors --------------------------------------------------------------------------


def test_unknown_task_fails_at_start(tmp_path):
    config = load_experiment("quickstart_videopoet").get_config()
    config.tasks.weights = {"t2v": 1.0, "text_to_3d": 1.0}
    config.eval.tasks = ("t2v",)
    # No tokenizer exists there: the mixture must fail before anything is loaded.
    config.tokenizer_workdir = str(tmp_path / "none")
    with pytest.raises(ValueError, match="unknown VideoPoet task.*text_to_3d"):
        videogen_main.run(config, str(tmp_path / "work"))


def test_task_whose_modality_the_data_lacks_fails_at_start(tmp_path):
    config = load_experiment("quickstart_videopoet").get_config()
    config.data.name = "real_clips"  # captions, no soundtrack
    config.tokenizer_workdir = str(tmp_path / "none")
    with pytest.raises(ValueError, match=r"task '(a2v|avcont|v2a)' needs audio, which the data"):
        videogen_main.run(config, str(tmp_path / "work"))


def test_missing_audio_tokenizer_names_the_command(tmp_path, tokenizer_workdir):
    config = tiny_videopoet(
        "quickstart_videopoet", None, tokenizer_workdir, str(tmp_path / "no_codec")
    )
    with pytest.raises(FileNotFoundError, match="experiments/quickstart_audio.py"):
        videogen_main.run(config, str(tmp_path / "work"))


def test_portrait_resolution_needs_portrait_clips(tmp_path):
    config = load_experiment("videopoet").get_config("res=128x224")
    assert config.tasks.resolution == "128x224"
    config.data.update(name="moving_digits", path="")
    with pytest.raises(ValueError, match="224x128 portrait clips"):
        videogen_main.run(config, str(tmp_path / "work"))


# --- configs ----------------------------------------------------------------------------------


def test_configs_have_the_thesis_shapes():
    one = load_experiment("videopoet").get_config()
    assert (one.model.size, one.model.visual_factors, one.data.num_frames) == ("1B", 1, 17)
    assert (one.text.max_tokens, one.audio.levels, one.data.resolution) == (64, 4, 128)
    assert (one.optimizer.peak_lr, one.batch_size, one.num_train_steps) == (1e-3, 1024, 300_000)
    assert one.tasks.two_stage and set(one.tasks.weights) == set(TASKS)
    eight = load_experiment("videopoet").get_config("size=8B,frames=41")
    assert (eight.model.size, eight.data.num_frames) == ("8B", 41)
    with pytest.raises(ValueError, match="17 or 41"):
        load_experiment("videopoet").get_config("frames=9")


def check_training_log(config, result):
    """Two logged steps with finite losses; every example drew one task of the mixture, and a
    task absent from a batch logs no loss."""
    assert result.step == 2 and len(result.history) == 2
    names = tuple(config.tasks.weights)
    for logged in result.history:
        assert np.isfinite(logged["loss"]) and 0.0 <= logged["output_accuracy"] <= 1.0
        counts = [logged[f"tasks/{t}/examples"] for t in names]
        assert sum(counts) == config.batch_size
        for task, count in zip(names, counts):
            assert (f"tasks/{task}/loss" in logged) == (count > 0)


@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_videopoet_experiment_builds_and_runs_two_steps(
    tmp_path, tokenizer_workdir, audio_workdir, arg
):
    config = tiny_videopoet("videopoet", arg, tokenizer_workdir, audio_workdir)
    result = videogen_main.run(config, str(tmp_path))
    check_training_log(config, result)
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    assert meta["count"] == 16 and len(meta["captions"]) >= 1
    # The thesis mixture has painting: the rows carry the COMMIT condition codes.
    assert meta["paint_tasks"] == ["inpaint", "outpaint"]
    assert meta["row_parts"]["conditions"] == [2, 3, 4, 4]


def test_quickstart_trains_two_steps_then_samples_and_scores_every_task(
    tmp_path, tokenizer_workdir, audio_workdir
):
    config = tiny_videopoet(
        "quickstart_videopoet", None, tokenizer_workdir, audio_workdir, **{"eval.at_end": True}
    )
    result = videogen_main.run(config, str(tmp_path))
    check_training_log(config, result)
    metrics = json.loads((tmp_path / "eval_step0000002.json").read_text())
    assert metrics == result.eval_metrics
    for task in ("t2v", "i2v", "fp", "avcont", "a2v"):
        assert 0.0 <= metrics[f"eval/{task}/digit_accuracy"] <= 1.0, task
    for task in ("avcont", "v2a"):
        assert 0.0 <= metrics[f"eval/{task}/pitch_accuracy"] <= 1.0, task
    # The direction measure reads the real clips' motion (its ceiling; bounces cost some).
    assert metrics["eval/t2v/direction_accuracy_real"] >= 0.5
    samples = tmp_path / "samples"
    for task in config.eval.tasks:  # one grid per task (V2A: the clips it heard)
        assert (samples / f"{task}_step0000002.gif").exists(), task
    for task in ("avcont", "v2a"):
        assert len(list(samples.glob(f"{task}_audio_step0000002_*.wav"))) >= 2, task
    # Tasks with sound (A2V: the audio it was given) also play their grid with it; the
    # MP4's soundtrack lasts as long as the WAV beside it (AAC: within one frame).
    for task in ("avcont", "v2a", "a2v"):
        with wave.open(str(samples / f"{task}_sound_step0000002.wav")) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        with av.open(str(samples / f"{task}_sound_step0000002.mp4")) as container:
            stream = container.streams.audio[0]
            duration = float(stream.duration * stream.time_base)
        assert abs(duration - seconds) <= 1024 / stream.sample_rate, (task, duration, seconds)
        assert seconds >= config.eval.grid_examples * config.data.num_frames / config.eval.fps
    assert not list(samples.glob("t2v_sound_*"))
    # --mode=sample: the same samplers on the latest checkpoint, grids and WAV files.
    paths = videogen_main.run(config, str(tmp_path), "sample")
    assert set(paths) == set(config.eval.tasks)
    assert (samples / "t2v_sample_step0000002.gif").exists()
    assert len(list(samples.glob("v2a_sample_step0000002_*.wav"))) >= 2


def test_resume_equals_uninterrupted(tmp_path, tokenizer_workdir, audio_workdir):
    """A run stopped after step 1 and resumed ends where the uninterrupted run ends: LM,
    optimizer, dropout and caption-dropout RNG, data position and the step's task draw."""
    config = tiny_videopoet(
        "quickstart_videopoet",
        None,
        tokenizer_workdir,
        audio_workdir,
        **{"checkpoint.every_steps": 1, "model.dropout_rate": 0.1},
    )
    # One set of token files for the three runs.
    config.data.token_dir = str(tmp_path / "tokens")
    straight = videopoet.train_and_evaluate(config, str(tmp_path / "straight"))
    videopoet.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=1)
    resumed = videopoet.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed.step == straight.step == 2
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert straight.history[1:] == resumed.history


def test_direction_check_reads_real_motion_and_rejects_mirrored_or_still_clips():
    source = moving_digits.MovingDigits("eval", num_frames=9, resolution=32, num_examples=64)
    clips = [source[i] for i in range(64)]
    videos = np.stack([c["video"] for c in clips])
    captions = [c["caption"] for c in clips]
    real = direction_correct(videos, captions).mean()
    # Mirrored in both axes, every named direction is the opposite one.
    mirrored = direction_correct(videos[:, :, ::-1, ::-1], captions).mean()
    still = direction_correct(np.repeat(videos[:, :1], 9, axis=1), captions).mean()
    assert real >= 0.8 and mirrored <= 0.15 and still == 0.0, (real, mirrored, still)
