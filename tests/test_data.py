"""Input pipeline: sources (embedded, folder, TFDS) and the grain iterator."""

import hashlib
import logging
import os

import av
from etils import epath
from grain import checkpoint as grain_checkpoint
import ml_collections
import numpy as np
from PIL import Image
import pytest

from videogen import config as config_lib
from videogen.data import colour_shapes, moving_digits, pipeline, real_clips, sources, transforms
from videogen.data.mixture import MixtureSource
from videogen.data.video_decode import (
    VideoDecodeError,
    probe_video,
    read_audio,
    read_frames,
    read_video,
)
from videogen.data.video_folder import VideoFolder


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _write_video(path, num_frames: int, *, height: int = 48, width: int = 64, shade: int = 40):
    """Writes an mpeg4 video of a white square sliding right over a grey ramp."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    ramp = np.linspace(shade, shade + 60, width, dtype=np.float32)
    for t in range(num_frames):
        frame = np.broadcast_to(ramp[None, :, None], (height, width, 3)).astype(np.uint8).copy()
        frame[16:32, 4 * t : 4 * t + 16] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


# ---------------------------------------------------------------- decoding


def test_read_video_decodes_written_frames(tmp_path):
    _write_video(tmp_path / "a.mp4", 10)
    video = read_video(tmp_path / "a.mp4")
    assert video.shape == (10, 48, 64, 3) and video.dtype == np.uint8
    assert probe_video(tmp_path / "a.mp4") == probe_video(tmp_path / "a.mp4", exact=True) == 10
    assert read_video(tmp_path / "a.mp4", max_frames=4).shape[0] == 4
    # The square is at columns 4t..4t+16 of rows 16..32: white there, ramp elsewhere.
    assert video[5, 20:28, 24:32].mean() > 230
    assert video[5, 20:28, 48:56].mean() < 130
    # Only the asked-for frames, in the asked order; past the end, the last frame.
    small = read_video(tmp_path / "a.mp4", short_side=24)
    assert small.shape == (10, 24, 32, 3)
    picked = read_frames(tmp_path / "a.mp4", [3, 1, 3, 50], short_side=24)
    np.testing.assert_array_equal(picked, small[[3, 1, 3, 9]])
    (tmp_path / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        probe_video(tmp_path / "bad.mp4")


def test_transforms_shapes_and_padding():
    video = np.arange(5 * 30 * 50 * 3, dtype=np.uint32).reshape(5, 30, 50, 3).astype(np.uint8)
    assert transforms.resize_short_side(video, 15).shape == (5, 15, 25, 3)
    assert transforms.center_crop(video, 20).shape == (5, 20, 20, 3)
    np.testing.assert_array_equal(transforms.center_crop(video, (30, 30)), video[:, :, 10:40])
    crop = transforms.random_crop(video, 30, np.random.default_rng(0))
    assert crop.shape == (5, 30, 30, 3)
    assert transforms.crop_and_resize(video, 12).shape == (5, 12, 12, 3)
    # Past the end of a short video the last frame repeats.
    np.testing.assert_array_equal(transforms.clip_frame_indices(1, 4, 2, 5), [1, 3, 4, 4])
    assert transforms.sample_clip_start(20, 5) == 7
    starts = {transforms.sample_clip_start(20, 5, np.random.default_rng(i)) for i in range(200)}
    assert starts == set(range(16))
    # Bilinear resize of a constant image stays exactly constant.
    flat = np.full((2, 40, 60, 3), 77, np.uint8)
    assert np.all(transforms.resize_video(flat, (9, 13)) == 77)


def test_augment_zooms_mirrors_and_permutes_colours_as_drawn():
    # Column index as brightness in red, 10 in green, 200 in blue: a window's columns,
    # a mirror image and a channel order are each visible.
    video = np.zeros((2, 64, 64, 3), np.uint8)
    video[..., 0] = np.arange(64, dtype=np.uint8)[None, None, :]
    video[..., 1], video[..., 2] = 10, 200
    outs = [
        transforms.augment(
            video, np.random.default_rng(i), flip=True, max_zoom=2.0, permute_channels=True
        )
        for i in range(60)
    ]
    spans, blue_channels = [], set()
    for out, mirrored in outs:
        assert out.shape == video.shape
        (red,) = [c for c in range(3) if out[0, 0, :, c].std() > 1]
        blue_channels.add(int(np.argmax(out[0, 0, 5] == 200)))
        row = out[0, 0, :, red].astype(int)
        # Windows of 32..64 columns shown at 64: first-to-last differences of ~31..63.
        spans.append(abs(row[-1] - row[0]))
        assert (row[-1] < row[0]) == mirrored
    assert 28 <= min(spans) < 40 and max(spans) > 55
    assert 15 < sum(m for _, m in outs) < 45
    assert blue_channels == {0, 1, 2}
    again, _ = transforms.augment(
        video, np.random.default_rng(7), flip=True, max_zoom=2.0, permute_channels=True
    )
    np.testing.assert_array_equal(again, outs[7][0])
    plain, mirrored = transforms.augment(video, np.random.default_rng(0))
    assert not mirrored and np.array_equal(plain, video)
    with pytest.raises(ValueError, match=r"max_zoom=0.5 \(config.data.augment.max_zoom\)"):
        transforms.augment(video, np.random.default_rng(0), max_zoom=0.5)


def test_colour_jitter_changes_white_balance_and_saturation_within_its_bounds():
    # Saturation keeps each pixel's grey level (its channel mean): on a grey clip that level
    # moves by the mean gain only, and the channels by their own gains (then saturation).
    grey = np.full((1, 4, 4, 3), 100, np.uint8)
    levels = np.stack(
        [
            transforms.augment(grey, np.random.default_rng(i), colour_jitter=0.5)[0][0, 0, 0]
            for i in range(200)
        ]
    ).astype(float)
    means = levels.mean(axis=1)
    assert means.min() >= 100 / 1.5 - 1 and means.max() <= 100 * 1.5 + 1
    assert levels.min() < 75 and levels.max() > 135  # the range is used
    assert abs(np.corrcoef(levels[:, 0], levels[:, 1])[0, 1]) < 0.3  # gains per channel
    # Saturation: a blue-grey pixel moves away from or towards its grey level, both ways.
    blue = np.zeros((1, 2, 2, 3), np.uint8)
    blue[..., :] = (60, 70, 110)
    spreads = [
        np.ptp(transforms.augment(blue, np.random.default_rng(i), colour_jitter=0.5)[0][0, 0, 0])
        for i in range(200)
    ]
    assert min(spreads) < 50 * 0.8 and max(spreads) > 50 * 1.5
    again, _ = transforms.augment(blue, np.random.default_rng(3), colour_jitter=0.5)
    np.testing.assert_array_equal(
        again, transforms.augment(blue, np.random.default_rng(3), colour_jitter=0.5)[0]
    )
    np.testing.assert_array_equal(
        transforms.augment(blue, np.random.default_rng(3), colour_jitter=0.0)[0], blue
    )
    with pytest.raises(ValueError, match=r"colour_jitter=-0.1 \(config.data.augment"):
        transforms.augment(blue, np.random.default_rng(0), colour_jitter=-0.1)


def test_train_source_augments_train_clips_only_and_mirrors_captions():
    config = ml_collections.ConfigDict(
        {"data": config_lib.data_config(), "eval": {"path": ""}, "seed": 0}
    )
    config.data.update(name="real_clips", num_frames=3, resolution=16)
    plain = sources.train_source(config)
    assert isinstance(plain, real_clips.RealClips)  # nothing asked, nothing wrapped
    config.data.augment.update(flip=True, permute_channels=True)
    augmented = sources.train_source(config)
    assert augmented.keys == plain.keys and len(augmented) == len(plain)
    changed = 0
    for i in range(12):
        a, b = augmented[i], plain[i]
        assert a["video"].shape == b["video"].shape
        assert a["caption"] in (b["caption"], sources.mirror_caption(b["caption"]))
        assert _digest(augmented[i]["video"]) == _digest(a["video"])  # a function of i
        changed += _digest(a["video"]) != _digest(b["video"])
    assert changed >= 8
    assert sources.mirror_caption("a camera pans up and to the left and rolls") == (
        "a camera pans up and to the right and rolls"
    )
    assert sources.mirror_caption("a bright leftover") == "a bright leftover"


def test_train_source_augments_only_the_named_parts_of_a_mixture():
    config = ml_collections.ConfigDict(
        {"data": config_lib.data_config(), "eval": {"path": ""}, "seed": 0}
    )
    config.data.update(name="moving_digits+real_clips", num_frames=3, resolution=16)
    plain = sources.train_source(config)
    config.data.augment.update(colour_jitter=0.5, datasets=("real_clips",))
    augmented = sources.train_source(config)
    changed = {"moving_digits": 0, "real_clips": 0}
    for i in range(16):
        a, b = augmented[i], plain[i]
        part = "real_clips" if "source" in b else "moving_digits"
        changed[part] += _digest(a["video"]) != _digest(b["video"])
    # Mixed 1:1 in alternation: 8 clips of each part, only the real ones jittered.
    assert changed == {"moving_digits": 0, "real_clips": 8}
    config.data.augment.datasets = ("real_clip",)
    with pytest.raises(ValueError, match=r"augment.datasets names \['real_clip'\].*'moving_digits"):
        sources.train_source(config)


# ---------------------------------------------------------------- moving digits


@pytest.fixture(scope="module")
def digits_train():
    return moving_digits.MovingDigits("train")


def test_moving_digits_deterministic_shapes(digits_train):
    a, b = digits_train[5], digits_train[5]
    assert a["video"].shape == (17, 64, 64, 3) and a["video"].dtype == np.uint8
    assert a["audio"].dtype == np.float32 and a["label"].dtype == np.int32
    assert _digest(a["video"]) == _digest(b["video"]) and _digest(a["audio"]) == _digest(b["audio"])
    assert a["caption"] == b["caption"]
    other_seed = moving_digits.MovingDigits("train", seed=1)[5]
    assert _digest(other_seed["video"]) != _digest(a["video"])
    assert len(digits_train) == 100_000 and len(moving_digits.MovingDigits("eval")) == 512


def test_moving_digits_splits_use_disjoint_images():
    train = moving_digits.MovingDigits("train", num_examples=300)
    evaluation = moving_digits.MovingDigits("eval", num_examples=300)
    assert len(train.image_ids) + len(evaluation.image_ids) == 1797
    assert not set(train.image_ids) & set(evaluation.image_ids)
    # The partition does not move with the seed.
    np.testing.assert_array_equal(
        moving_digits.MovingDigits("eval", seed=9).image_ids, evaluation.image_ids
    )
    train_used = {int(train[i]["image_id"]) for i in range(300)}
    eval_used = {int(evaluation[i]["image_id"]) for i in range(300)}
    assert train_used <= set(train.image_ids) and eval_used <= set(evaluation.image_ids)
    assert len(train_used) > 200 and len(eval_used) > 150  # Many distinct digits are drawn.


def test_moving_digits_visible_moving_and_where_the_motion_says(digits_train):
    size = digits_train.digit_size
    for i in range(20):
        example, motion = digits_train[i], digits_train.motion(i)
        gray = example["video"][..., 0].astype(np.float32) / 255
        mass = gray.sum(axis=(1, 2))
        assert mass[0] > 40  # At least 40 white-pixel equivalents of ink.
        np.testing.assert_allclose(mass, mass[0], rtol=1e-6)  # Never clipped by a wall.
        # Every frame moves, unless a bounce turned the digit back to where it was.
        moved = np.abs(np.diff(gray, axis=0)).sum(axis=(1, 2)) > 1
        bounced = np.isin(np.arange(1, len(gray)), [frame for frame, _ in motion.bounces])
        assert np.all(moved | bounced)
        for frame, (y, x) in zip(gray, np.rint(motion.positions).astype(int)):
            outside = frame.copy()
            outside[y : y + size, x : x + size] = 0
            assert outside.max() == 0
        assert example["label"] == motion.label


def test_moving_digits_frame_stride_shows_every_kth_step():
    dense = moving_digits.MovingDigits("train", num_frames=17, resolution=32)
    strided = moving_digits.MovingDigits("train", num_frames=9, resolution=32, frame_stride=2)
    for i in range(10):
        np.testing.assert_array_equal(strided[i]["video"], dense[i]["video"][::2])
        shown = sorted({(-(-frame // 2)) for frame, _ in dense.motion(i).bounces})
        assert sorted({frame for frame, _ in strided.motion(i).bounces}) == shown
        assert strided[i]["audio"].shape == (18000,)


def test_moving_digits_caption_names_digit_direction_and_walls():
    # Short clips: at 17 frames every digit reaches a wall, at 9 some do not.
    digits = moving_digits.MovingDigits("train", num_frames=9, resolution=32)
    seen_bounce = seen_free = False
    for i in range(300):
        motion = digits.motion(i)
        caption = digits[i]["caption"]
        assert caption.startswith(f"a {motion.label} moves ")
        dy, dx = motion.velocity
        assert ("down" in caption) <= (dy > 0) and ("up" in caption) <= (dy < 0)
        assert ("right" in caption.split(",")[0]) <= (dx > 0)
        walls = {wall for _, wall in motion.bounces}
        for wall in ("top", "bottom", "left", "right"):
            assert (wall in caption.split(",", 1)[1]) == (wall in walls), caption
        if walls:
            seen_bounce = True
        else:
            seen_free = True
            assert caption.endswith("without touching a wall")
    assert seen_bounce and seen_free


def test_moving_digits_audio_pitch_names_digit_and_clicks_at_bounces(digits_train):
    rate, fps = digits_train.sample_rate, digits_train.fps
    labels_seen = set()
    for i in range(40):
        example, motion = digits_train[i], digits_train.motion(i)
        audio = example["audio"]
        assert audio.shape == (round(17 / fps * rate),) == (34000,)
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)]
        assert abs(peak_hz - moving_digits.DIGIT_PITCHES_HZ[motion.label]) < 1.0
        labels_seen.add(motion.label)
        # The tone changes by < 0.1 per sample; a click by ~0.7.
        slope = np.abs(np.diff(audio))
        click_starts = sorted({round(frame / fps * rate) for frame, _ in motion.bounces})
        quiet = np.ones(len(slope), bool)
        for start in click_starts:
            assert slope[start : start + 40].max() > 0.4
            quiet[max(start - 5, 0) : start + 200] = False
        assert slope[quiet].max() < 0.1
    assert len(labels_seen) >= 8
    assert len(set(np.round(moving_digits.DIGIT_PITCHES_HZ))) == 10


# ---------------------------------------------------------------- video folder


def test_colour_shapes_deterministic_moving_and_spanning_the_colour_cube():
    train = pipeline.make_source("colour_shapes", "train", num_frames=5, resolution=16, seed=3)
    again = colour_shapes.ColourShapes("train", num_frames=5, resolution=16, seed=3)
    other_split = colour_shapes.ColourShapes("eval", num_frames=5, resolution=16, seed=3)
    other_seed = colour_shapes.ColourShapes("train", num_frames=5, resolution=16, seed=4)
    clips = np.stack([train[i]["video"] for i in range(64)])
    assert clips.shape == (64, 5, 16, 16, 3) and clips.dtype == np.uint8
    assert all((again[i]["video"] == clips[i]).all() for i in range(4))
    assert not (other_split[0]["video"] == clips[0]).all()
    assert not (other_seed[0]["video"] == clips[0]).all()
    example = train[0]
    assert set(example) == set(train.keys) and example["label"] == -1
    assert "colour gradient" in example["caption"]
    # Shapes or background move in most clips: frames differ.
    moving = [np.abs(c[-1].astype(int) - c[0]).max() > 0 for c in clips]
    assert np.mean(moving) > 0.8
    # Colours everywhere in the cube: each channel's clip means reach both ends, and the
    # channels are not tied together (not grey).
    means = clips.reshape(64, -1, 3).mean(1)
    assert (means.min(0) < 70).all() and (means.max(0) > 185).all()
    assert np.abs(np.corrcoef(means.T)[np.triu_indices(3, 1)]).max() < 0.6
    with pytest.raises(IndexError, match="out of range"):
        train[len(train)]
    with pytest.raises(ValueError, match="split must be one of"):
        colour_shapes.ColourShapes("validation")


def test_colour_shapes_stride_moves_further_per_frame():
    kw = dict(num_frames=3, resolution=16, seed=0)
    one = colour_shapes.ColourShapes("train", frame_stride=1, **kw)
    two = colour_shapes.ColourShapes("train", frame_stride=2, **kw)
    five = colour_shapes.ColourShapes("train", num_frames=5, resolution=16, seed=0)
    for i in range(4):
        assert (two[i]["video"] == five[i]["video"][::2]).all()
        assert (one[i]["video"] == five[i]["video"][:3]).all()


def test_video_folder_skips_corrupt_file_labels_by_directory(tmp_path, caplog):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    _write_video(tmp_path / "cat" / "a.mp4", 12)
    _write_video(tmp_path / "dog" / "b.avi", 12, shade=120)
    (tmp_path / "cat" / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "notes.txt").write_text("not a video")
    with caplog.at_level(logging.WARNING):
        source = VideoFolder(tmp_path, "eval", num_frames=6, resolution=24, frame_stride=2)
    assert source.skipped_files == 1
    assert any("broken.mp4" in r.getMessage() for r in caplog.records)
    assert source.files == [os.path.join("cat", "a.mp4"), os.path.join("dog", "b.avi")]
    assert len(source) == 2 and source.labels == [0, 1]
    example = source[1]
    assert example["video"].shape == (6, 24, 24, 3) and example["label"] == 1
    assert example["video"].std() > 20


def test_video_folder_labels_csv_and_short_video_padding(tmp_path):
    _write_video(tmp_path / "long.mp4", 12)
    _write_video(tmp_path / "short.mp4", 4)
    _write_video(tmp_path / "unlisted.mp4", 12)
    (tmp_path / "labels.csv").write_text(
        "relative_path,label,caption\nlong.mp4,3,a square, sliding right\nshort.mp4,5\n"
    )
    source = VideoFolder(tmp_path, "train", num_frames=6, resolution=32, seed=4)
    assert source.files == ["long.mp4", "short.mp4"]
    assert [source[i]["label"] for i in range(2)] == [3, 5]
    assert [source[i]["caption"] for i in range(2)] == ["a square, sliding right", ""]
    # The 4-frame video fills a 6-frame clip by repeating its last frame.
    video = source[1]["video"].astype(np.int32)
    assert np.all(np.abs(np.diff(video[:4], axis=0)).sum(axis=(1, 2, 3)) > 1000)
    np.testing.assert_array_equal(video[4], video[3])
    np.testing.assert_array_equal(video[5], video[3])
    assert _digest(source[0]["video"]) == _digest(source[0]["video"])


def _short_folder(root):
    """long.mp4 (12 frames), short.mp4 (4 frames) and a JPEG renamed still.mp4."""
    _write_video(root / "long.mp4", 12)
    _write_video(root / "short.mp4", 4)
    ramp = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)
    Image.fromarray(ramp).save(root / "still.mp4", format="JPEG")


def test_video_folder_counts_warns_and_pads_short_files_and_stills(tmp_path, caplog):
    _short_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        source = VideoFolder(tmp_path, "eval", num_frames=6, resolution=16)
    # A 6-frame clip spans 6 frames: the 4-frame video and the 1-frame still are short.
    assert source.files == ["long.mp4", "short.mp4", "still.mp4"]
    assert source.short_files == 2 and source.skipped_files == 0
    warned = [r.getMessage() for r in caplog.records if "fewer than the 6" in r.getMessage()]
    assert len(warned) == 2
    assert sum("short.mp4 has 4 frame" in m for m in warned) == 1
    assert sum("still.mp4 has 1 frame" in m for m in warned) == 1
    still = source[2]["video"]
    assert still.std() > 20  # The picture, not a blank frame...
    np.testing.assert_array_equal(still, np.broadcast_to(still[0], still.shape))  # ...repeated.
    # Stride 2 spans 11 frames, so the 12-frame video is long enough; stride 3 spans 16.
    assert (
        VideoFolder(tmp_path, "eval", num_frames=6, frame_stride=2, resolution=16).short_files == 2
    )
    assert (
        VideoFolder(tmp_path, "eval", num_frames=6, frame_stride=3, resolution=16).short_files == 3
    )


def test_video_folder_short_files_skip_and_its_errors(tmp_path, caplog):
    _short_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        source = VideoFolder(tmp_path, "train", num_frames=6, resolution=16, short_files="skip")
    assert source.files == ["long.mp4"] and len(source) == 1
    assert source.short_files == 2 and source.skipped_files == 0
    assert sum("left out (short_files='skip')" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(
        ValueError, match=r"short_files must be one of \('pad', 'skip'\), got 'drop'"
    ):
        VideoFolder(tmp_path, "eval", num_frames=6, resolution=16, short_files="drop")
    with pytest.raises(
        ValueError, match="no video of at least 16 frames.*3 of 3.*short_files='pad'"
    ):
        VideoFolder(tmp_path, "eval", num_frames=16, resolution=16, short_files="skip")


def test_config_short_files_reaches_the_folder_and_mixtures_sum_the_counts(tmp_path):
    _short_folder(tmp_path)
    config = ml_collections.ConfigDict(
        {"data": config_lib.data_config(), "eval": {"path": ""}, "seed": 0}
    )
    config.data.update(path=str(tmp_path), num_frames=6, resolution=16)
    # Generated data has no files to be short; a mixture counts its parts' short files.
    assert (
        pipeline.make_source("moving_digits", "train", num_frames=6, resolution=16).short_files == 0
    )
    padded = sources.make_source(config, "moving_digits+video_folder", "train")
    assert padded.short_files == 2 and len(padded.sources[1].files) == 3
    config.data.short_files = "skip"
    skipped = sources.make_source(config, "moving_digits+video_folder", "train")
    assert skipped.short_files == 2 and skipped.sources[1].files == ["long.mp4"]
    # A typo is caught whatever the data, not first on the day it is a folder.
    config.data.short_files = "drop"
    with pytest.raises(
        ValueError,
        match=r"short_files='drop' \(config.data.short_files\); use one of \('pad', 'skip'\)",
    ):
        sources.make_source(config, "moving_digits", "train")


class _Numbered:
    """A source whose example i is (name, i): shows which item a mixture reads."""

    keys = ("video",)
    skipped_files = short_files = 0

    def __init__(self, name, length):
        self.name, self.length = name, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return (self.name, index)


def test_mixture_shares_spread_evenly_and_read_every_item():
    equal = MixtureSource([_Numbered("a", 3), _Numbered("b", 2)])
    # Equal shares: item i from source i % n, as before weights existed.
    assert [equal[i] for i in range(len(equal))] == [
        ("a", 0),
        ("b", 0),
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("b", 0),
    ]
    weighted = MixtureSource([_Numbered("a", 2), _Numbered("b", 6)], [1, 3])
    items = [weighted[i] for i in range(len(weighted))]
    assert len(weighted) == 8 and [name for name, _ in items] == list("babbbabb")
    assert sorted(i for name, i in items if name == "b") == list(range(6))
    with pytest.raises(ValueError, match=r"weights \[1, 0\] for 2 sources"):
        MixtureSource([_Numbered("a", 2), _Numbered("b", 2)], [1, 0])


def test_spec_shares_and_their_errors():
    assert sources.parse_spec("moving_digits + real_clips*3") == [
        ("moving_digits", 1),
        ("real_clips", 3),
    ]
    assert sources.spec_parts("moving_digits+real_clips*3") == ["moving_digits", "real_clips"]
    config = ml_collections.ConfigDict(
        {"data": config_lib.data_config(), "eval": {"path": ""}, "seed": 0}
    )
    config.data.update(num_frames=3, resolution=16)
    mixed = sources.make_source(config, "moving_digits+real_clips*3", "eval", num_examples=40)
    assert [len(s) for s in mixed.sources] == [10, 30] and mixed.weights == [1, 3]
    for bad in ("real_clips*0", "real_clips*x", "real_clips*"):
        with pytest.raises(ValueError, match="share .*positive integer after '\\*'"):
            sources.parse_spec(f"moving_digits+{bad}")


def test_video_folder_read_failure_falls_back_to_next_file(tmp_path, caplog):
    _write_video(tmp_path / "a.mp4", 10)
    _write_video(tmp_path / "b.mp4", 10, shade=150)
    source = VideoFolder(tmp_path, "eval", num_frames=4, resolution=16)
    expected = source[1]["video"]
    (tmp_path / "a.mp4").write_bytes(np.random.default_rng(2).bytes(3000))  # Breaks after probing.
    with caplog.at_level(logging.WARNING):
        replaced = source[0]
    assert source.skipped_files == 1
    assert any("a.mp4" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(replaced["video"], expected)
    np.testing.assert_array_equal(source[0]["video"], expected)  # Counted once, not per read.
    assert source.skipped_files == 1


def test_video_folder_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}.*no video files.*\\.mp4"):
        VideoFolder(empty)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "x.mp4").write_bytes(b"\x00" * 1000)
    (corrupt / "y.webm").write_bytes(np.random.default_rng(3).bytes(1000))
    with pytest.raises(ValueError, match=f"{corrupt}.*no readable video.*\\.mp4"):
        VideoFolder(corrupt)
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing'}.*does not exist"):
        VideoFolder(tmp_path / "missing")


# ---------------------------------------------------------------- TFDS


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        source = pipeline.make_source(
            "tfds:ucf101", "train", num_frames=8, resolution=32, frame_stride=2
        )
        assert len(source) == 4 and source.tfds_split == "train"
        example = source[2]
        assert example["video"].shape == (8, 32, 32, 3) and example["video"].dtype == np.uint8
        assert 0 <= example["label"] < 101 and example["caption"]  # A UCF101 class name.
        gray = pipeline.make_source(
            "tfds:moving_mnist", "eval", num_frames=5, resolution=16, video_key="image_sequence"
        )
        assert gray.tfds_split == "test"
        assert gray[0]["video"].shape == (5, 16, 16, 3) and gray[0]["label"] == 0
        with pytest.raises(ValueError, match="'video'.*image_sequence"):
            pipeline.make_source("tfds:moving_mnist", "eval", num_frames=5, resolution=16)


# ---------------------------------------------------------------- pipeline


def test_make_source_rejects_unknown_names_and_splits():
    with pytest.raises(
        ValueError,
        match="'kinetics'.*moving_digits, colour_shapes, real_clips, real_clips_same_sources, video_folder, "
        "tfds:<name>",
    ):
        pipeline.make_source("kinetics", "train", num_frames=4, resolution=16)
    with pytest.raises(ValueError, match="'test'"):
        pipeline.make_source("moving_digits", "test", num_frames=4, resolution=16)
    with pytest.raises(ValueError, match="path"):
        pipeline.make_source("video_folder", "train", num_frames=4, resolution=16)


def test_make_iterator_batch_shapes_and_field_checks():
    source = pipeline.make_source("moving_digits", "train", num_frames=9, resolution=32)
    iterator = pipeline.make_iterator(
        source, global_batch_size=4, shuffle=True, seed=0, fields=("video", "label", "audio")
    )
    batch = next(iterator)
    assert batch["video"].shape == (4, 9, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["audio"].shape == (4, 18000) and batch["audio"].dtype == np.float32
    with pytest.raises(ValueError, match="audio"):
        pipeline.make_iterator(
            pipeline.make_source("real_clips", "eval", num_frames=4, resolution=16),
            global_batch_size=2,
            shuffle=False,
            seed=0,
            fields=("video", "audio"),
        )
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_iterator(source, global_batch_size=5, shuffle=False, seed=0, process_count=2)


def test_iterator_state_restore_replays_the_same_batches(tmp_path):
    source = pipeline.make_source(
        "real_clips", "train", num_frames=5, resolution=32, frame_stride=2
    )

    def fresh():
        return pipeline.make_iterator(source, global_batch_size=4, shuffle=True, seed=7)

    iterator = fresh()
    first = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
    recorded = [next(iterator) for _ in range(2)]
    restored = fresh()
    restored.set_state(state)
    replayed = [next(restored) for _ in range(2)]
    for a, b in zip(recorded, replayed):
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert _digest(recorded[0]["video"]) != _digest(first[0]["video"])

    # The same state through grain's orbax handler, as the trainer checkpoints it.
    handler = grain_checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=iterator)
    from_disk = fresh()
    handler.restore(epath.Path(tmp_path), item=from_disk)
    np.testing.assert_array_equal(next(from_disk)["video"], next(iterator)["video"])


def test_processes_read_disjoint_rows_of_the_single_process_batches():
    """Each process reads its block of rows of every global batch: stacked in process order,
    the processes' batches are the one-process batches row for row."""
    source = pipeline.make_source(
        "moving_digits", "eval", num_frames=3, resolution=16, num_examples=16
    )

    def digests(process_index, process_count):
        iterator = pipeline.make_iterator(
            source,
            global_batch_size=4,
            shuffle=True,
            seed=1,
            num_epochs=1,
            process_index=process_index,
            process_count=process_count,
        )
        batches = list(iterator)
        assert len(batches) == 4
        assert all(b["video"].shape[0] == 4 // process_count for b in batches)
        return [[_digest(v) for v in b["video"]] for b in batches]

    one = digests(0, 1)
    assert len({d for batch in one for d in batch}) == 16  # the whole epoch
    two = [digests(i, 2) for i in range(2)]
    assert not {d for b in two[0] for d in b} & {d for b in two[1] for d in b}
    assert [a + b for a, b in zip(*two)] == one


def test_video_folder_eval_views_are_windows_times_crops(tmp_path):
    """MAGVIT's K600 real-clip sampling: 2 temporal windows x 3 spatial crops per video."""
    root = tmp_path / "videos"
    root.mkdir()
    frames = 40
    _write_video(str(root / "a.mp4"), frames, height=48, width=96)
    single = pipeline.make_source(
        "video_folder", "eval", path=str(root), num_frames=4, resolution=16
    )
    views = pipeline.make_source(
        "video_folder",
        "eval",
        path=str(root),
        num_frames=4,
        resolution=16,
        temporal_windows=2,
        spatial_crops=3,
    )
    assert len(single) == 1 and len(views) == 6
    clips = [views[i]["video"] for i in range(6)]
    # Crop 1 of 3 is the centre crop; the two windows start at the first and last frame.
    np.testing.assert_array_equal(transforms.window_start(frames, 4, 0, 2), 0)
    assert transforms.window_start(frames, 4, 1, 2) == frames - 4
    assert transforms.window_start(frames, 4, 0, 1) == (frames - 4) // 2
    assert all(c.shape == (4, 16, 16, 3) for c in clips)
    # Different crops of one window differ (the frames are not uniform left to right),
    # and so do the two windows of one crop.
    assert not np.array_equal(clips[0], clips[2])
    assert not np.array_equal(clips[1], clips[4])
    with pytest.raises(ValueError, match="only 'video_folder' has it"):
        pipeline.make_source(
            "moving_digits", "eval", num_frames=4, resolution=16, temporal_windows=2
        )
    with pytest.raises(ValueError, match="the train split samples"):
        pipeline.make_source(
            "video_folder", "train", path=str(root), num_frames=4, resolution=16, spatial_crops=3
        )


# ---------------------------------------------------------------- video folder audio

_TONE_HZ = 1000.0
_TONE_ONSET_SECONDS = 0.25


def _write_video_with_tone(path, num_frames: int = 6, fps: int = 8, sample_rate: int = 22050):
    """mpeg4 32x32 frames of constant grey 40 * t, and a stereo AAC track that is silent
    until _TONE_ONSET_SECONDS, then a _TONE_HZ sine of amplitude 0.5 in both channels."""
    container = av.open(str(path), "w")
    video = container.add_stream("mpeg4", rate=fps)
    video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
    audio = container.add_stream("aac", rate=sample_rate)
    audio.layout = "stereo"
    for t in range(num_frames):
        frame = np.full((32, 32, 3), 40 * t, np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    seconds = np.arange(round(num_frames / fps * sample_rate)) / sample_rate
    tone = np.where(
        seconds >= _TONE_ONSET_SECONDS, 0.5 * np.sin(2 * np.pi * _TONE_HZ * seconds), 0.0
    ).astype(np.float32)
    for start in range(0, len(tone), 1024):
        chunk = np.ascontiguousarray(np.repeat(tone[None, start : start + 1024], 2, axis=0))
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = sample_rate, start
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
    container.close()


def test_video_folder_audio_is_the_clips_span_of_the_track(tmp_path, caplog):
    _write_video_with_tone(tmp_path / "tone.mp4")
    _write_video(tmp_path / "mute.mp4", 6, height=32, width=32)
    with caplog.at_level(logging.WARNING):
        source = VideoFolder(
            tmp_path, "eval", num_frames=2, frame_stride=2, resolution=16, with_audio=True
        )
    assert source.keys == ("video", "label", "caption", "audio", "has_audio")
    assert source.files == ["mute.mp4", "tone.mp4"] and source.files_without_audio == 1
    assert any("have no audio track" in r.getMessage() for r in caplog.records)
    # 2 frames every 2nd frame of an 8 fps video span 0.5 s: 8000 samples at 16 kHz.
    assert source.audio_lengths == [8000, 8000]

    mute, tone = source[0], source[1]
    assert mute["audio"].shape == (8000,) and mute["audio"].dtype == np.float32
    assert not mute["has_audio"] and not np.any(mute["audio"])
    assert tone["audio"].shape == (8000,) and tone["has_audio"]
    # The centred clip starts at frame 1 (0.125 s), so the tone (from 0.25 s) starts
    # 0.125 s = 2000 samples in; stereo is averaged, so the amplitude stays 0.5.
    audio = tone["audio"]
    assert np.abs(audio[:1900]).max() < 0.01
    np.testing.assert_allclose(np.sqrt(np.mean(audio[2100:] ** 2)), 0.5 / np.sqrt(2), atol=0.01)
    spectrum = np.abs(np.fft.rfft(audio[2000:]))
    peak_hz = np.argmax(spectrum) * 16000 / len(audio[2000:])
    assert abs(peak_hz - _TONE_HZ) < 3.0  # The FFT's bin spacing is 2.7 Hz.


def test_video_folder_train_audio_follows_the_random_clip_start(tmp_path):
    _write_video_with_tone(tmp_path / "tone.mp4")
    source = VideoFolder(
        tmp_path,
        "train",
        num_frames=2,
        frame_stride=2,
        resolution=16,
        num_examples=12,
        with_audio=True,
        seed=1,
    )
    starts = set()
    for i in range(12):
        example = source[i]
        start = int(round(example["video"][0].mean() / 40))  # Frame t is grey 40 * t.
        starts.add(start)
        onset = max(0, round((_TONE_ONSET_SECONDS - start / 8) * 16000))
        loud = np.flatnonzero(np.abs(example["audio"]) > 0.05)
        assert abs(loud[0] - onset) < 10, (start, loud[0], onset)
    assert len(starts) >= 3  # The clip start (0..3) really varies.


def test_video_folder_without_with_audio_never_reads_audio(tmp_path, monkeypatch):
    _write_video_with_tone(tmp_path / "tone.mp4")
    with_audio = VideoFolder(tmp_path, "eval", num_frames=2, resolution=16, with_audio=True)
    expected_video = with_audio[0]["video"]

    def fail(*args, **kwargs):
        raise AssertionError("audio was decoded although with_audio is False")

    monkeypatch.setattr("videogen.data.video_folder.read_audio", fail)
    source = VideoFolder(tmp_path, "eval", num_frames=2, resolution=16)
    assert source.keys == ("video", "label", "caption")
    example = source[0]
    assert sorted(example) == ["caption", "label", "video"]
    np.testing.assert_array_equal(example["video"], expected_video)
    with pytest.raises(ValueError, match=r"fields \['audio'\] are not produced"):
        pipeline.make_iterator(source, global_batch_size=1, shuffle=False, seed=0, fields=["audio"])


def test_read_audio_rejects_a_file_without_audio(tmp_path):
    _write_video(tmp_path / "mute.mp4", 4)
    with pytest.raises(VideoDecodeError, match="mute.mp4.*no audio stream"):
        read_audio(tmp_path / "mute.mp4", 0.0, 100, sample_rate=16000)
