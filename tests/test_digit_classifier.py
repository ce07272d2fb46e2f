"""Digit classifier: learns digits it never saw, scores clips of any length, caches in the workdir."""

import json
import logging

import numpy as np
import pytest

from videogen.data import moving_digits
from videogen.evaluation import digit_classifier as dc

RESOLUTION = 32
NUM_FRAMES = 8


@pytest.fixture(scope="module")
def trained():
    """(model, metrics) after 200 steps at 32x32 (20-30 s on 2 shared CPU cores)."""
    return dc.train_classifier(RESOLUTION, NUM_FRAMES, steps=200, seed=0)


@pytest.fixture(scope="module")
def clips():
    """Held-out clips drawn with a seed that training's own evaluation did not use."""
    return dc.heldout_clips(RESOLUTION, NUM_FRAMES, num_examples=256, seed=7)


def test_heldout_images_are_a_stratified_fifth_of_the_eval_split():
    held = dc.heldout_image_ids()
    eval_ids = moving_digits.split_image_ids("eval")
    assert len(eval_ids) == 360 and len(held) == 73
    assert np.all(np.isin(held, eval_ids))
    digits = moving_digits.digit_images()[1]
    # Every class keeps a fifth of its eval images (rounded) out of training.
    np.testing.assert_array_equal(
        np.bincount(digits[held], minlength=10),
        np.round(0.2 * np.bincount(digits[eval_ids], minlength=10)),
    )
    np.testing.assert_array_equal(held, dc.heldout_image_ids())  # fixed, whatever the seed


def test_heldout_clips_show_only_heldout_images():
    videos, labels = dc.heldout_clips(RESOLUTION, 2, num_examples=10, seed=3)
    assert videos.shape == (10, 2, RESOLUTION, RESOLUTION, 3) and videos.dtype == np.uint8
    # Find each clip's digit image by exact template match over all eval images.
    eval_ids = moving_digits.split_image_ids("eval")
    size = round(RESOLUTION * moving_digits.DIGIT_FRACTION)
    templates = np.rint(moving_digits.upscaled_digits(size)[eval_ids] * 255)
    held = set(dc.heldout_image_ids().tolist())
    for video, label in zip(videos, labels):
        windows = np.lib.stride_tricks.sliding_window_view(video[0, :, :, 0], (size, size))
        diff = np.abs(windows[None].astype(np.float32) - templates[:, None, None]).sum((-1, -2))
        (matches,) = np.nonzero((diff == 0).any(axis=(1, 2)))
        assert len(matches) == 1
        image_id = int(eval_ids[matches[0]])
        assert image_id in held and moving_digits.digit_images()[1][image_id] == label


def test_learns_digits_it_never_trained_on(trained):
    _, metrics = trained
    assert metrics["num_fit_images"] == 287 and metrics["num_heldout_images"] == 73
    # 10% is chance; 200 steps reach ~96% clip accuracy on the held-out images.
    assert metrics["heldout_accuracy"] >= 0.9, metrics
    assert metrics["heldout_frame_accuracy"] >= 0.9, metrics
    assert metrics["train_loss"] < 0.3, metrics


def test_class_accuracy_on_fresh_clips_and_shuffled_labels(trained, clips):
    model, _ = trained
    videos, labels = clips
    assert dc.class_accuracy(model, videos, labels) >= 0.9
    shuffled = np.random.default_rng(0).permutation(labels)
    # Expected sum_k p_k^2 ~ 0.1 for ~uniform classes; std ~0.02 at 256 clips.
    assert 0.02 <= dc.class_accuracy(model, videos, shuffled) <= 0.2
    # Labels that are always wrong score at most the error rate.
    assert dc.class_accuracy(model, videos, (labels + 1) % 10) <= 0.1


def test_clip_score_is_the_mean_of_frame_scores_for_any_length(trained, clips):
    model, _ = trained
    videos = clips[0][:5]
    clip = dc.log_probs(model, videos)
    frames = dc.log_probs(model, videos.reshape(-1, 1, RESOLUTION, RESOLUTION, 3))
    np.testing.assert_allclose(
        clip, frames.reshape(5, NUM_FRAMES, 10).mean(axis=1), rtol=1e-5, atol=1e-5
    )
    # Log-probabilities of each frame normalise; batching does not change the result.
    np.testing.assert_allclose(np.exp(frames).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(dc.log_probs(model, videos, batch_size=2), clip, atol=1e-5)
    assert dc.predict(model, videos[:, :3]).shape == (5,)


def test_classifies_64px_clips_with_a_32px_model(trained):
    # Frames are resized to the canvas and the digit is the same fraction of the frame at
    # every resolution, so a model trained at 32 px still reads 64 px clips.
    model, _ = trained
    videos, labels = dc.heldout_clips(64, 4, num_examples=128, seed=5)
    assert dc.class_accuracy(model, videos, labels) >= 0.8


def test_rejects_bad_inputs(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="to_uint8"):
        dc.predict(model, np.zeros((2, 3, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"labels must have shape \[B=2\]"):
        dc.class_accuracy(model, np.zeros((2, 3, 32, 32, 3), np.uint8), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dc.train_classifier(RESOLUTION, NUM_FRAMES, steps=0)


@pytest.fixture
def counted_training(monkeypatch, trained):
    """Replaces training by the module's trained classifier and counts the calls."""
    calls = []

    def fake_train(resolution, num_frames, *, steps, seed):
        calls.append((resolution, num_frames, steps, seed))
        return trained

    monkeypatch.setattr(dc, "train_classifier", fake_train)
    return calls


def test_save_reload_round_trip_does_not_retrain(tmp_path, trained, clips, counted_training):
    model, metrics = trained
    first = dc.load_or_train(tmp_path, RESOLUTION, NUM_FRAMES)
    assert len(counted_training) == 1
    params_path, meta_path = dc.classifier_paths(tmp_path, RESOLUTION)
    assert params_path.parent == tmp_path / "digit_classifier"
    meta = json.loads(meta_path.read_text())
    assert meta["version"] == dc.VERSION and meta["resolution"] == RESOLUTION
    assert meta["seed"] == 0 and meta["heldout_accuracy"] == metrics["heldout_accuracy"]

    again = dc.load_or_train(tmp_path, RESOLUTION, num_frames=17)  # any T reuses the file
    assert len(counted_training) == 1
    assert again is not first
    np.testing.assert_array_equal(dc.log_probs(again, clips[0]), dc.log_probs(model, clips[0]))


def _truncate(params_path, meta_path):
    params_path.write_bytes(params_path.read_bytes()[:100])


def _flip_a_weight(params_path, meta_path):
    data = bytearray(params_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    params_path.write_bytes(bytes(data))


def _garbage_json(params_path, meta_path):
    meta_path.write_text("{not json")


def _old_version(params_path, meta_path):
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": dc.VERSION - 1}))


def _other_resolution(params_path, meta_path):
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "resolution": 64}))


def _missing_params(params_path, meta_path):
    params_path.unlink()


def _foreign_params(params_path, meta_path):
    # Valid npz with the right digest recorded but the wrong variables.
    np.savez(params_path, w=np.zeros(3))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "params_sha256": dc.sha256_of(params_path)}))


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _flip_a_weight,
        _garbage_json,
        _old_version,
        _other_resolution,
        _missing_params,
        _foreign_params,
    ],
)
def test_corrupt_or_mismatched_file_is_retrained_with_a_warning(
    tmp_path, caplog, clips, damage, counted_training
):
    dc.load_or_train(tmp_path, RESOLUTION, NUM_FRAMES)
    params_path, meta_path = dc.classifier_paths(tmp_path, RESOLUTION)
    damage(params_path, meta_path)
    with caplog.at_level(logging.WARNING):
        retrained = dc.load_or_train(tmp_path, RESOLUTION, NUM_FRAMES)
    assert len(counted_training) == 2
    assert any("retraining" in r.getMessage() for r in caplog.records), caplog.text
    # The replacement file is whole again: the next call loads it without training.
    reloaded = dc.load_or_train(tmp_path, RESOLUTION, NUM_FRAMES)
    assert len(counted_training) == 2
    np.testing.assert_array_equal(
        dc.log_probs(reloaded, clips[0][:8]), dc.log_probs(retrained, clips[0][:8])
    )
