"""The shared training loop's host-side pieces: honest progress, reports, the trainer table."""

import json

import numpy as np
import pytest

from videogen import trainers
from videogen.trainers import loop


class _Writer:
    """Records what the loop writes (a clu MetricWriter's scalar and image calls)."""

    def __init__(self):
        self.scalars, self.images = [], []

    def write_scalars(self, step, values):
        self.scalars.append((step, dict(values)))

    def write_images(self, step, images):
        self.images.append((step, {k: np.asarray(v) for k, v in images.items()}))


def test_progress_rate_is_over_synchronised_intervals_without_evaluation(monkeypatch):
    """Steps/s counts only the time between two fetched steps, minus evaluation: 50 steps in
    30 s of which 5 s were evaluation is 2 steps/s, not 50 steps 'done' at dispatch."""
    clock = iter([100.0, 130.0, 140.0])
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    writer = _Writer()
    progress = loop.Progress(total_steps=151, writer=writer)
    progress.start(1)  # after the first (compiling) step finished
    progress.exclude(5.0)
    assert progress.sync(51) == pytest.approx(2.0)
    assert writer.scalars == [(51, {"steps_per_sec": pytest.approx(2.0)})]
    # The next interval starts at the last synchronised point, with nothing excluded.
    assert progress.sync(101) == pytest.approx(5.0)


def test_progress_without_a_start_point_reports_nothing(monkeypatch):
    monkeypatch.setattr(loop.time, "perf_counter", lambda: 1.0)
    writer = _Writer()
    assert loop.Progress(total_steps=10, writer=writer).sync(5) is None
    assert writer.scalars == []


def test_format_seconds():
    assert [loop.format_seconds(s) for s in (12.4, 185, 3725)] == ["12s", "3m05s", "1h02m"]


def test_report_writes_json_scalars_and_grids(tmp_path):
    grid = np.zeros((3, 8, 12, 3), np.uint8)
    grid[-1] = 255
    output = loop.EvalOutput({"eval/a/psnr": 21.5}, {"a": grid})
    writer = _Writer()
    loop.write_report(str(tmp_path), 7, output, writer, fps=4)
    assert json.loads((tmp_path / "eval_step0000007.json").read_text()) == {"eval/a/psnr": 21.5}
    assert writer.scalars == [(7, {"eval/a/psnr": 21.5})]
    ((step, images),) = writer.images
    assert step == 7 and images["eval/a/grid"].shape == (2, 8, 12, 3)
    np.testing.assert_array_equal(images["eval/a/grid"][1], grid[-1])  # first and last frame
    assert (tmp_path / "samples" / "a_step0000007.gif").exists()


def test_trainer_table_names_every_trainer_and_refuses_others():
    for name in trainers.TRAINERS:
        module = trainers.trainer_module(name)
        assert callable(module.train_and_evaluate) and callable(module.evaluate_checkpoint)
    with pytest.raises(
        ValueError,
        match=r"'tokeniser'.*available: \['audio_tokenizer', 'maskgit', 'stages', 'tokenizer', 'videopoet'\]",
    ):
        trainers.trainer_module("tokeniser")


def test_clip_means_average_per_clip_sums_and_name_an_empty_dataset():
    assert loop.clip_means("digits", {"psnr": 60.0, "ssim": 2.4}, 3, 8) == {
        "eval/digits/psnr": 20.0,
        "eval/digits/ssim": pytest.approx(0.8),
    }
    with pytest.raises(ValueError, match=r"'digits' yielded no full batch of 8; lower"):
        loop.clip_means("digits", {"psnr": 0.0}, 0, 8)
