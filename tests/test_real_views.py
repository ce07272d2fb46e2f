"""Real statistics with a protocol's views (MAGVIT 6.5.6, K600: 2 temporal windows x 3 spatial
crops of each eval video): which frames and crops the views are, how many distinct videos
they come from, the warning when files repeat, and the refusals. No feature network runs."""

import logging

import av
import numpy as np
import pytest

from videogen import config as config_lib
from videogen.data import sources
from videogen.data.video_decode import read_video
from videogen.evaluation import evaluator

FRAMES, HEIGHT, WIDTH = 12, 16, 48


def _write_video(path, shade: int) -> None:
    """Frames brighter by 12 per step over a left-to-right ramp, so every window and crop differs."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ramp = np.linspace(0, 90, WIDTH, dtype=np.float32)
    for t in range(FRAMES):
        value = np.broadcast_to(shade + 12 * t + ramp[None, :, None], (HEIGHT, WIDTH, 3))
        frame = av.VideoFrame.from_ndarray(value.astype(np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.fixture
def k600(tmp_path):
    """`maskgit_config`'s K600 protocol on a folder of two 12-frame 16x48 videos, 9-frame clips."""
    folder = tmp_path / "eval"
    folder.mkdir()
    _write_video(folder / "a.mp4", shade=0)
    _write_video(folder / "b.mp4", shade=100)
    config = config_lib.maskgit_config()
    config.eval.update(path=str(folder), batch_size=6)
    config.data.resolution = HEIGHT  # the short side: decoding resizes nothing
    config.eval.frechet.num_frames = 9
    return config


def _evaluator(config, workdir) -> evaluator.FrechetEvaluator:
    return evaluator.make_frechet(
        config.eval.frechet, config.eval.num_examples, str(workdir), None, multi_view_real=True
    )


def test_views_are_two_windows_by_three_crops_of_each_video(k600, tmp_path):
    assert (k600.eval.frechet.real_temporal_windows, k600.eval.frechet.real_spatial_crops) == (2, 3)
    source = _evaluator(k600, tmp_path).real_source(k600, "video_folder")
    # Unset real_num_examples with several views: every view of every video once.
    assert len(source) == 12 and sources.distinct_videos(source) == 2
    # 12 frames, 9-frame clips: windows start at frames 0 and 3; square crops of side 16
    # at columns 0, 16 and 32 of 48. View i is video i // 6, window (i % 6) // 3, crop i % 3.
    for v, name in enumerate(("a.mp4", "b.mp4")):
        decoded = read_video(tmp_path / "eval" / name)
        assert decoded.shape == (FRAMES, HEIGHT, WIDTH, 3)
        for w, start in enumerate((0, 3)):
            for c, left in enumerate((0, 16, 32)):
                np.testing.assert_array_equal(
                    source[6 * v + 3 * w + c]["video"],
                    decoded[start : start + 9, :, left : left + 16],
                )
    assert len({source[i]["video"].tobytes() for i in range(12)}) == 12


def test_clips_beyond_the_folder_warn_that_files_repeat(k600, tmp_path, caplog):
    k600.eval.frechet.real_num_examples = 18
    with caplog.at_level(logging.WARNING):
        source = _evaluator(k600, tmp_path).real_source(k600, "video_folder")
    assert len(source) == 18 and sources.distinct_videos(source) == 2
    assert "asks for 18 real clips (6 view(s) of each video)" in caplog.text
    assert "holds 2 distinct videos, 12 clips; files repeat" in caplog.text
    assert "real_num_examples=12" in caplog.text
    np.testing.assert_array_equal(source[12]["video"], source[0]["video"])

    caplog.clear()
    k600.eval.frechet.real_num_examples = 6  # the first video's views only
    with caplog.at_level(logging.WARNING):
        source = _evaluator(k600, tmp_path).real_source(k600, "video_folder")
    assert len(source) == 6 and sources.distinct_videos(source) == 1
    assert "files repeat" not in caplog.text

    # One view per video: 18 clips of 2 videos repeat too.
    k600.eval.frechet.update(real_temporal_windows=1, real_spatial_crops=1, real_num_examples=18)
    with caplog.at_level(logging.WARNING):
        source = _evaluator(k600, tmp_path).real_source(k600, "video_folder")
    assert sources.distinct_videos(source) == 2
    assert "holds 2 distinct videos, 2 clips; files repeat" in caplog.text


def test_statistics_report_the_distinct_videos_and_key_the_views(k600, tmp_path):
    fe = _evaluator(k600, tmp_path)
    key = fe.real_key("video_folder", frame_stride=1, source_resolution=HEIGHT, num_examples=12)
    features = np.random.default_rng(0).normal(size=(12, 4))
    fe.cache.get_or_compute(key, lambda: features)  # as an earlier evaluation left it
    stats = fe.real_statistics(
        "video_folder",
        lambda: pytest.fail("cached statistics recomputed"),
        frame_stride=1,
        source_resolution=HEIGHT,
        num_examples=12,
        num_videos=2,
    )
    assert (stats.count, stats.num_videos) == (12, 2) and not fe.real_recomputed
    np.testing.assert_allclose(stats.mu, features.mean(0))
    assert stats.report("fvd") == {"fvd_num_real": 12.0, "fvd_num_real_videos": 2.0}
    assert evaluator.RealStats(stats.mu, stats.sigma, 12, None).report("fvd") == {
        "fvd_num_real": 12.0
    }
    one_view = k600.eval.frechet.copy_and_resolve_references()
    one_view.update(real_temporal_windows=1, real_spatial_crops=1)
    other = evaluator.FrechetEvaluator(one_view, str(tmp_path), None)
    other_key = other.real_key("video_folder", 1, HEIGHT, 12)
    assert fe.cache.path(other_key) != fe.cache.path(key)
    with pytest.raises(ValueError, match="real_num_examples is unset with 6 views"):
        fe.real_statistics("video_folder", lambda: [], frame_stride=1, source_resolution=HEIGHT)


def test_sources_and_trainers_without_views_are_refused(k600, tmp_path):
    protocol = k600.eval.frechet
    with pytest.raises(ValueError, match="2 x 3 views of each real video, but this trainer"):
        evaluator.make_frechet(protocol, k600.eval.num_examples, str(tmp_path), None)
    fe = _evaluator(k600, tmp_path)
    with pytest.raises(ValueError, match="'moving_digits' has no multi-view.*real_spatial_crops=1"):
        fe.real_source(k600, "moving_digits")
    k600.eval.batch_size = 5
    with pytest.raises(ValueError, match=r"gives 12 clips \(6 view\(s\) per video\).*batch_size=5"):
        fe.real_source(k600, "video_folder")
