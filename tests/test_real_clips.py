"""Real content held out by source (real_clips) and the synthetic camera over photos."""

import hashlib
import math
import os

import numpy as np
from PIL import Image
import pytest

from videogen.data import camera_motion, pipeline, real_clips

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _first_frame(source: real_clips.Source) -> np.ndarray:
    if source.kind == "video":
        return real_clips.decoded_video(source.key, 32)[0]
    return real_clips.photo_levels(source.key)[0]


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    """float32 [16, 16] grey: equal for re-encoded or resized copies of one picture."""
    image = Image.fromarray(frame).convert("L").resize((16, 16), Image.Resampling.BOX)
    return np.asarray(image, np.float32)


# ---------------------------------------------------------------- held out by source


def test_train_and_eval_sources_are_disjoint_by_key_and_by_content():
    train = real_clips.split_sources("train")
    evaluation = real_clips.split_sources("eval")
    assert {s.key for s in train}.isdisjoint(s.key for s in evaluation)
    assert set(train) | set(evaluation) == set(real_clips.SOURCES)
    assert real_clips.split_sources("eval_same_sources") == train
    assert sum(s.kind == "video" for s in evaluation) >= 1
    assert sum(s.kind == "photo" for s in evaluation) >= 3
    # The same picture under two keys (e.g. one photo shipped by two packages) would leak:
    # no first frame is shared, exactly or as a re-encoded copy. Distinct sources here
    # differ by >= 31 grey levels per thumbnail pixel; carphone_distorted.mp4, the
    # compressed copy of the eval video carphone, by 3.9.
    train_frames = [_first_frame(s) for s in train]
    eval_frames = [_first_frame(s) for s in evaluation]
    assert {_digest(f) for f in train_frames}.isdisjoint(_digest(f) for f in eval_frames)
    distance = min(
        np.abs(_thumbnail(a) - _thumbnail(b)).mean() for a in train_frames for b in eval_frames
    )
    assert distance > 12.0


@pytest.mark.parametrize("split", real_clips.SPLITS)
def test_examples_cycle_through_their_splits_sources_and_name_them(split):
    source = real_clips.RealClips(split, num_frames=5, resolution=32, frame_stride=2)
    shown = real_clips.split_sources(split)
    assert len(source) == 20 * len(shown) or split == "train"
    for i in range(len(shown)):
        example = source[i]
        expected = shown[i]
        assert example["source"] == expected.key
        assert example["label"] == real_clips.SOURCES.index(expected)
        video = example["video"]
        assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
        assert video.std() > 10  # Real picture content, not a blank frame.
        if expected.kind == "video":
            assert example["caption"] == f"a clip from {expected.subject}"
        else:
            assert example["caption"].endswith(f"a photo of {expected.subject}")
            # The camera moves: no two consecutive frames are equal.
            assert np.all(np.abs(np.diff(video.astype(np.int32), axis=0)).sum(axis=(1, 2, 3)) > 0)


def test_examples_are_a_function_of_seed_split_and_index():
    def clips(split, seed=0):
        return real_clips.RealClips(split, num_frames=5, resolution=32, seed=seed)

    n = len(real_clips.split_sources("train"))
    photo, video = n - 1, n  # the last train source is a photo, the first a video
    first = clips("train")
    later = clips("train")
    # Read in another order by a fresh instance: the same bytes.
    assert _digest(later[video]["video"]) == _digest(first[video]["video"])
    assert _digest(later[photo]["video"]) == _digest(first[photo]["video"])
    assert later[photo]["caption"] == first[photo]["caption"]
    reseeded = clips("train", seed=3)
    assert _digest(reseeded[photo]["video"]) != _digest(first[photo]["video"])
    assert _digest(reseeded[video]["video"]) != _digest(first[video]["video"])
    # The cross-check shows the same source at the same index, through another draw.
    cross = clips("eval_same_sources")
    assert cross[photo]["source"] == first[photo]["source"]
    assert _digest(cross[photo]["video"]) != _digest(first[photo]["video"])


def test_real_clips_same_sources_is_the_cross_check_for_eval_configs_only():
    """The name configs list in eval.datasets for the memorisation cross-check."""
    source = pipeline.make_source(
        "real_clips_same_sources", "eval", num_frames=3, resolution=16, num_examples=4, seed=2
    )
    direct = real_clips.RealClips(
        "eval_same_sources", num_frames=3, resolution=16, num_examples=4, seed=2
    )
    assert len(source) == 4
    train_keys = [s.key for s in real_clips.split_sources("train")]
    for i in range(4):
        assert source[i]["source"] == train_keys[i]
        assert _digest(source[i]["video"]) == _digest(direct[i]["video"])
    # Batches keep the key of every clip, which the evaluator groups its PSNRs by.
    batch = next(
        pipeline.make_iterator(
            source, global_batch_size=4, shuffle=False, seed=0, fields=("video", "source")
        )
    )
    assert list(batch["source"]) == train_keys[:4]
    with pytest.raises(
        ValueError, match="'real_clips_same_sources' has no 'train' split.*'real_clips'"
    ):
        pipeline.make_source("real_clips_same_sources", "train", num_frames=3, resolution=16)


def test_video_frames_train_first_80_percent_cross_check_the_rest_eval_all():
    def frames(split, key, count):
        source = real_clips.RealClips(split, num_frames=9, resolution=32, frame_stride=2)
        position = [s.key for s in source.sources].index(key)
        step = len(source.sources)
        return {
            int(f) for i in range(position, count * step, step) for f in source.frame_indices(i)
        }

    for key in ("bigbuckbunny", "bikes"):
        total = len(real_clips.decoded_video(key, 32))
        train = frames("train", key, 50)
        cross = frames("eval_same_sources", key, 20)
        assert max(train) < int(0.8 * total) <= min(cross)
        assert len(train) > 0.4 * total  # Clips spread over the split, not one window.
    total = len(real_clips.decoded_video("carphone", 32))
    held_out = frames("eval", "carphone", 20)
    assert min(held_out) < 0.2 * total and max(held_out) > 0.8 * total
    with pytest.raises(ValueError, match="photo 'astronaut'.*camera_path"):
        real_clips.RealClips("train").frame_indices(2)


# ---------------------------------------------------------------- installed files


def test_every_source_file_is_installed_and_its_package_pinned_in_setup():
    for source in real_clips.SOURCES:
        assert os.path.isfile(real_clips.source_path(source)), source
    with open(os.path.join(_ROOT, "setup.sh"), encoding="utf-8") as f:
        setup_sh = f.read()
    with open(os.path.join(_ROOT, "setup.py"), encoding="utf-8") as f:
        setup_py = f.read()
    no_deps_line = setup_sh[setup_sh.index("pip install --quiet --no-deps") :]
    for module in {s.module for s in real_clips.SOURCES}:
        command = real_clips.INSTALL_COMMANDS[module]
        requirement = command.split()[-1]
        if "--no-deps" in command:
            assert requirement in no_deps_line, (module, requirement)
        else:
            assert f'"{requirement}"' in setup_py, (module, requirement)


def test_a_missing_package_or_file_names_what_to_install(monkeypatch):
    missing = real_clips.Source(
        "ghost", "photo", "videogen_no_such_package", "data/ghost.png", "a ghost", "eval"
    )
    monkeypatch.setattr(real_clips, "SOURCES", (*real_clips.SOURCES, missing))
    monkeypatch.setitem(
        real_clips.INSTALL_COMMANDS,
        "videogen_no_such_package",
        "pip install --no-deps no-such-package==1.0",
    )
    source = real_clips.RealClips("eval", num_frames=5, resolution=16)
    ghost = [s.key for s in source.sources].index("ghost")
    with pytest.raises(
        FileNotFoundError,
        match=r"'videogen_no_such_package', which is not installed; run \./setup\.sh, or "
        r"`pip install --no-deps no-such-package==1\.0`",
    ):
        source[ghost]
    with pytest.raises(
        FileNotFoundError,
        match=r"no_such\.png is missing.*"
        r"`pip install --force-reinstall --no-deps scikit-image==0\.26\.0`",
    ):
        real_clips.data_file("skimage", "data/no_such.png")


# ---------------------------------------------------------------- camera motion


def _path(**overrides) -> camera_motion.CameraPath:
    fields = dict(
        center=np.array([100.0, 150.0]),
        displacement=np.zeros(2),
        side=80.0,
        log_zoom=0.0,
        roll=0.0,
        roll_change=0.0,
        ease=0.0,
        num_steps=8,
    )
    fields.update(overrides)
    return camera_motion.CameraPath(**fields)


def _render(photo, path, resolution=16, frame_stride=1):
    return camera_motion.render(
        camera_motion.mip_levels(photo),
        path,
        num_frames=path.num_steps // frame_stride + 1,
        frame_stride=frame_stride,
        resolution=resolution,
    )


def test_pan_moves_the_view_by_the_paths_displacement():
    # Brightness 0.5 * column: a frame's mean is half its centre's x coordinate.
    ramp = np.broadcast_to((0.5 * np.arange(400))[None, :, None], (200, 400, 3))
    path = _path(displacement=np.array([0.0, 100.0]))
    video = _render(np.rint(ramp).astype(np.uint8), path)
    for k, frame in enumerate(video):
        center_x = path.view(k)[0][1]
        assert abs(frame.mean() - 0.5 * (center_x - 0.5)) < 1.5, k
    # 100 pixels over 8.5 steps: 5.9 grey levels per frame.
    np.testing.assert_allclose(np.diff(video.mean(axis=(1, 2, 3))), 50 / 8.5, atol=0.5)


def test_zoom_scales_the_picture_by_the_side_ratio():
    yy, xx = np.mgrid[:400, :400] + 0.5
    disk = np.where(np.hypot(yy - 200, xx - 200) < 40, 255, 0).astype(np.uint8)
    photo = np.repeat(disk[..., None], 3, axis=-1)
    path = _path(center=np.array([200.0, 200.0]), side=200.0, log_zoom=math.log(0.5))
    video = _render(photo, path, resolution=64)
    radius = [np.sqrt((frame[..., 0] > 127).sum() / np.pi) for frame in (video[0], video[-1])]
    side_first, side_last = path.view(0)[1], path.view(path.num_steps)[1]
    assert side_last < 0.6 * side_first  # zooming in, by nearly 2x over the clip
    assert radius[1] / radius[0] == pytest.approx(side_first / side_last, rel=0.05)


def test_motion_blur_where_the_motion_is_fast_only():
    edge = np.zeros((200, 600, 3), np.uint8)
    edge[:, 300:] = 255

    def transition_width(speed):
        # `speed` output pixels per step; a view of 100 photo pixels at 32 output pixels.
        path = _path(
            center=np.array([100.0, 300.0 - 2.25 * speed * 100 / 32]),
            displacement=np.array([0.0, 4.5 * speed * 100 / 32]),
            side=100.0,
            num_steps=4,
        )
        row = _render(edge, path, resolution=32)[2, 16, :, 0]
        return int(((row > 10) & (row < 245)).sum()), camera_motion.subframes(path, 2, 32)

    sharp, sharp_subframes = transition_width(0.2)
    blurred, blurred_subframes = transition_width(5.0)
    assert sharp_subframes == 1 and sharp <= 2
    # A 180-degree shutter smears 5 pixels per step over 2.5 pixels.
    assert blurred_subframes == 4 and blurred >= sharp + 2


def test_rendering_saturates_without_wrapping_around():
    fast = _path(
        displacement=np.array([30.0, 60.0]), log_zoom=math.log(0.6), roll_change=0.1, side=60.0
    )
    for value in (0, 255):
        photo = np.full((200, 300, 3), value, np.uint8)
        video = _render(photo, fast, resolution=24)
        assert video.dtype == np.uint8 and np.all(video == value)


def test_sampled_views_stay_inside_the_photo_and_motions_vary():
    rng = np.random.default_rng(0)
    zooms = rolls = 0
    for trial in range(200):
        height, width = [(300, 451), (512, 512), (427, 640), (512, 300)][trial % 4]
        path = camera_motion.sample_path(rng, (height, width), 16)
        zooms += path.log_zoom != 0
        rolls += path.roll_change != 0
        for t in np.linspace(-0.25, 16.25, 12):
            (cy, cx), side, roll = path.view(t)
            corners = [
                (
                    cy + math.cos(roll) * a + math.sin(roll) * b,
                    cx - math.sin(roll) * a + math.cos(roll) * b,
                )
                for a in (-side / 2, side / 2)
                for b in (-side / 2, side / 2)
            ]
            for y, x in corners:
                assert -1e-6 <= y <= height + 1e-6 and -1e-6 <= x <= width + 1e-6, (trial, t)
            assert abs(roll) <= camera_motion.MAX_ROLL + 1e-9
    assert 60 < zooms < 140 and 30 < rolls < 90


def test_motion_words_name_the_camera_motion():
    pan_right_zoom_in = _path(displacement=np.array([0.0, 40.0]), log_zoom=math.log(0.7))
    assert camera_motion.motion_words(pan_right_zoom_in) == "pans to the right and zooms in"
    up_left = _path(displacement=np.array([-30.0, -30.0]), roll_change=0.1)
    assert camera_motion.motion_words(up_left) == "pans up and to the left and rolls"
    assert camera_motion.motion_words(_path(displacement=np.array([1.0, 0.0]))) == ""
