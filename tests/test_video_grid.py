"""Video grids and GIF / MP4 writing: geometry, and round-trips through the real decoders;
MP4s with sound and grids that play each column with its sound."""

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from videogen.evaluation import video_grid


def _numbered_videos(b, t, h, w, offset):
    """uint8 [b, t, h, w, 3] whose every frame is one constant colour encoding (row, example, time)."""
    v = np.zeros((b, t, h, w, 3), np.uint8)
    for i in range(b):
        for j in range(t):
            v[i, j] = (offset + i, 10 * j, 7)
    return v


def test_grid_geometry_and_cell_contents():
    inputs = _numbered_videos(b=3, t=4, h=8, w=10, offset=100)
    recons = _numbered_videos(b=5, t=2, h=8, w=10, offset=200)
    grid = video_grid.make_grid([inputs, recons], max_examples=8, pad=2, pad_value=255)
    # 3 columns (the smaller batch), 2 rows, the longer T:
    # GH = 2*8 + 3*2 = 22, GW = 3*10 + 4*2 = 38.
    assert grid.shape == (4, 22, 38, 3) and grid.dtype == np.uint8

    cells = np.zeros(grid.shape[:3], bool)
    for r, row in enumerate([inputs, recons]):
        for c in range(3):
            y0, x0 = 2 + r * 10, 2 + c * 12
            cells[:, y0 : y0 + 8, x0 : x0 + 10] = True
            for t in range(4):
                # The 2-frame row holds its last frame for t = 2, 3.
                expected = row[c, min(t, row.shape[1] - 1)]
                np.testing.assert_array_equal(grid[t, y0 : y0 + 8, x0 : x0 + 10], expected)
    assert np.all(grid[~cells] == 255)


def test_grid_truncates_examples_and_uses_pad():
    video = _numbered_videos(b=6, t=1, h=4, w=6, offset=0)
    grid = video_grid.make_grid([video], max_examples=4, pad=0)
    assert grid.shape == (1, 4, 24, 3)
    np.testing.assert_array_equal(grid[0, :, 18:24], video[3, 0])


def test_grid_rejects_bad_rows():
    good = np.zeros((2, 3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="to_uint8"):
        video_grid.make_grid([good.astype(np.float32)])
    with pytest.raises(ValueError, match="row 1 has frames 8x6, row 0 has 8x8"):
        video_grid.make_grid([good, good[:, :, :, :6]])
    with pytest.raises(ValueError, match="no rows"):
        video_grid.make_grid([])


def test_to_uint8_maps_range_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(video_grid.to_uint8(x), [0, 0, 128, 191, 255, 255])
    assert video_grid.to_uint8(x).dtype == np.uint8


def _moving_square(t, h, w, palette):
    """A square moving over a background, using only the given colours: [t, h, w, 3] uint8."""
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[:] = palette[0]
    for i in range(t):
        frames[i, 3 + i : 9 + i, 2 + 2 * i : 10 + 2 * i] = palette[1 + i % (len(palette) - 1)]
    return frames


def test_gif_round_trip_is_exact_for_few_colours(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 50], [30, 60, 250]], np.uint8)
    frames = _moving_square(t=6, h=20, w=24, palette=palette)
    path = video_grid.write_gif(tmp_path / "nested" / "dir" / "grid.gif", frames, fps=10)
    assert path == str(tmp_path / "nested" / "dir" / "grid.gif")

    with Image.open(path) as gif:
        assert gif.size == (24, 20)
        assert gif.n_frames == 6
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100
        decoded = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    np.testing.assert_array_equal(decoded, frames)


def _smooth_video(t, h, w):
    """Moving colour gradients: the kind of content a lossy codec reproduces well."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [
        np.stack(
            [
                128 + 100 * np.sin((x + 2 * i) / 16.0),
                128 + 100 * np.cos((y - i) / 20.0),
                40 + 3 * (x + y) / 2.0,
            ],
            axis=-1,
        )
        for i in range(t)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec", ["default", "mpeg4"])
def test_mp4_round_trip_pads_odd_sizes(tmp_path, codec):
    frames = _smooth_video(t=9, h=33, w=47)
    path = video_grid.write_mp4(
        tmp_path / "out" / "grid.mp4",
        frames,
        fps=12,
        codec=None if codec == "default" else codec,
    )
    with av.open(path) as container:
        stream = container.streams.video[0]
        expected_codec = {"libx264": "h264", "mpeg4": "mpeg4"}[
            video_grid.mp4_encoder() if codec == "default" else codec
        ]
        assert stream.codec_context.name == expected_codec
        assert stream.average_rate == 12
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    # yuv420p needs even sizes: one row and one column were added.
    assert decoded.shape == (9, 34, 48, 3)
    error = np.abs(decoded[:, :33, :47].astype(np.int32) - frames.astype(np.int32))
    # Most of this error is yuv420p chroma subsampling, not the codec.
    assert error.mean() < 3.0
    # The padded border repeats the last row / column, so it decodes close to it too.
    assert (
        np.abs(decoded[:, 33, :47].astype(np.int32) - frames[:, 32].astype(np.int32)).mean() < 4.0
    )


def test_default_mp4_encoder_is_h264_when_shipped():
    try:
        av.codec.Codec("libx264", "w")
        has_x264 = True
    except Exception:
        has_x264 = False
    assert video_grid.mp4_encoder() == ("libx264" if has_x264 else "mpeg4")


def test_writers_reject_float_frames(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.float32)
    for writer in (video_grid.write_gif, video_grid.write_mp4):
        with pytest.raises(ValueError, match="uint8"):
            writer(tmp_path / "x", frames, fps=8)


def test_mp4_with_sound_round_trips_a_440_hz_tone(tmp_path):
    """A 1 s clip with a 440 Hz tone decodes to an audio stream of 1 s (within one audio
    frame) whose spectrum peaks at 440 Hz (within one FFT bin), beside the video."""
    rate, seconds = 16_000, 1.0
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(int(rate * seconds)) / rate)
    frames = _smooth_video(t=8, h=16, w=16)
    path = video_grid.write_mp4(tmp_path / "tone.mp4", frames, fps=8, audio=tone, sample_rate=rate)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 8
        stream = container.streams.audio[0]
        assert stream.codec_context.name == video_grid.mp4_audio_encoder()
        assert stream.sample_rate == rate
        decoded = list(container.decode(stream))
        frame = max(f.samples for f in decoded)
        duration = float(stream.duration * stream.time_base)
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in decoded])
    assert abs(duration - seconds) <= frame / rate, duration
    assert abs(sound.shape[0] - tone.shape[0]) <= frame, sound.shape
    spectrum = np.abs(np.fft.rfft(sound))
    assert abs(np.argmax(spectrum) * rate / sound.shape[0] - 440.0) <= rate / sound.shape[0]


def test_sound_grid_plays_each_column_with_its_sound(tmp_path):
    """Pass i lights column i (the rest dimmed) while sound i plays; a pass lasts the longer
    of the clip and the sound, the clip holding its last frame, the sound padded with
    silence."""
    video = _numbered_videos(b=2, t=3, h=4, w=6, offset=100)
    rate, fps = 100, 4.0  # 25 samples a frame
    sounds = np.random.default_rng(0).uniform(-1, 1, (2, 90)).astype(np.float32)
    grid = video_grid.make_grid([video], pad=2)
    frames, track = video_grid.make_sound_grid([video], sounds, fps=fps, sample_rate=rate, dim=0.5)
    # 90 samples = 3.6 frames -> passes of 4 frames and 100 samples.
    assert frames.shape == (8,) + grid.shape[1:] and track.shape == (200,)
    for i in range(2):
        np.testing.assert_array_equal(track[100 * i : 100 * i + 90], sounds[i])
        assert not track[100 * i + 90 : 100 * (i + 1)].any()
        lit = slice(2 + 8 * i, 8 + 8 * i)
        other = slice(2 + 8 * (1 - i), 8 + 8 * (1 - i))
        for t in range(4):
            shown = grid[min(t, 2)]
            np.testing.assert_array_equal(frames[4 * i + t][:, lit], shown[:, lit])
            np.testing.assert_array_equal(
                frames[4 * i + t][:, other], np.round(shown[:, other] * 0.5).astype(np.uint8)
            )
    # A clip longer than its sound sets the pass length: 3 frames, 75 samples.
    frames, track = video_grid.make_sound_grid([video], sounds[:, :10], fps=fps, sample_rate=rate)
    assert frames.shape[0] == 6 and track.shape == (150,)
    with pytest.raises(ValueError, match="a sound for each of the 2 columns"):
        video_grid.make_sound_grid([video], sounds[:1], fps=fps, sample_rate=rate)
    with pytest.raises(ValueError, match="sample_rate"):
        video_grid.write_mp4(tmp_path / "x.mp4", grid, fps=fps, audio=track)
