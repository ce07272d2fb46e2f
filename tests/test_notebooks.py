"""The notebooks run top to bottom as a user runs them: every code cell, in order, in one
namespace, without Jupyter (only the Colab install branch of the first cell is skipped, by
its own guard). Their `VIDEOGEN_*` settings point them at tiny runs: the suite's tiny
tokenizer, and tiny generator and VideoPoet runs that the notebooks train themselves when
the run they are given has no checkpoint. The checks read the numbers, arrays and media
the cells leave behind, so a cell that breaks or computes nonsense fails its notebook."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import types
import wave

import IPython.display
import numpy as np
import pytest
from PIL import Image
from tiny_configs import ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")
GIF = re.compile(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"')


def code_cells(name):
    """The sources of the notebook's code cells, in order."""
    with open(os.path.join(NOTEBOOKS, name)) as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4, name
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def run_notebook(name, monkeypatch, **settings):
    """Runs ``name`` from the repository root with ``VIDEOGEN_<key>`` set from ``settings``;
    returns the namespace its cells leave and the objects they displayed."""
    for key, value in settings.items():
        monkeypatch.setenv(f"VIDEOGEN_{key}", str(value))
    monkeypatch.chdir(ROOT)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **_: shown.extend(objects))
    namespace = {"__name__": "__main__"}
    for index, source in enumerate(code_cells(name)):
        exec(compile(source, f"{name}, code cell {index}", "exec"), namespace)
    return namespace, shown


def gif_lengths(shown, fps):
    """How many frames at ``fps`` each GIF of the displayed HTML (`notebook_media.videos_html`)
    plays (Pillow stores a repeated frame once, for longer)."""
    data = [m for o in shown if isinstance(o, IPython.display.HTML) for m in GIF.findall(o.data)]
    lengths = []
    for encoded in data:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as gif:
            milliseconds = 0
            for index in range(gif.n_frames):
                gif.seek(index)
                milliseconds += gif.info["duration"]
        lengths.append(milliseconds / (round(100 / fps) * 10))
    return lengths


def test_first_cell_installs_on_colab_and_elsewhere_only_finds_the_repository(
    tmp_path, monkeypatch
):
    calls = []

    def run(args, **_):
        calls.append(args)
        if args[:2] == ["git", "clone"]:
            os.makedirs(args[-1])

    monkeypatch.setattr(subprocess, "run", run)
    for name in sorted(os.listdir(NOTEBOOKS)):
        first = code_cells(name)[0]
        for start in (ROOT, NOTEBOOKS):  # from the root, or from notebooks/ as Jupyter starts
            monkeypatch.chdir(start)
            exec(first, {})
            assert calls == [] and os.getcwd() == ROOT, (name, start)
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        monkeypatch.chdir(tmp_path)
        exec(first, {})
        monkeypatch.delitem(sys.modules, "google.colab")
        clone, editable, data = calls
        assert clone[:2] == ["git", "clone"] and os.getcwd() == str(tmp_path / "videogen"), name
        assert editable[-2:] == ["-e", "."] and "--no-deps" in data, name
        os.rmdir(tmp_path / "videogen")
        calls.clear()


def test_tokenizer_notebook(tokenizer_workdir, tmp_path, monkeypatch):
    ns, shown = run_notebook(
        "01_tokenizer.ipynb",
        monkeypatch,
        TOKENIZER=tokenizer_workdir,
        OUTPUT=tmp_path,
        SHORT_SIDE=32,
        MAX_FRAMES=9,
        CLIP_FRAMES=5,
        CLIP_RESOLUTION=16,
    )
    assert ns["TOKENIZER"] == tokenizer_workdir  # a run with a checkpoint is used, not trained
    encoded = ns["encoded"]
    # carphone (176x144) at short side 32: 39x32 frames, tokens padded up to 10x8.
    assert (encoded.num_frames, encoded.height, encoded.width) == (9, 32, 39)
    assert encoded.token_shape == (3, 8, 10)
    assert os.path.getsize(tmp_path / "my_video.vgtok") == encoded.token_bytes
    # The MP4 is near-lossless: its frames score the tokenizer's own PSNR. Not exactly: a
    # 2-step tokenizer decodes to pixel-level colour noise, whose chroma the MP4's yuv420p
    # halves (10.23 against 9.22 dB seen); a trained tokenizer's output is smooth.
    assert 5.0 < encoded.psnr < 100.0
    assert abs(ns["video_psnr"] - encoded.psnr) < 1.5, (ns["video_psnr"], encoded.psnr)
    assert 0.0 < ns["video_lpips"] < 2.0
    # input | reconstruction | error, 2-pixel borders: the error is |difference| x 4.
    grid, frames, reconstruction = ns["my_video_grid"], ns["frames"][0], ns["reconstruction"][0]
    assert grid.shape == (9, 32 + 4, 3 * 39 + 8, 3)
    np.testing.assert_array_equal(grid[:, 2:34, 2:41], frames)
    np.testing.assert_array_equal(grid[:, 2:34, 43:82], reconstruction)
    error = np.abs(frames.astype(int) - reconstruction.astype(int)) * 4
    np.testing.assert_array_equal(grid[:, 2:34, 84:123], np.minimum(error, 255))
    for name, (psnr, distance) in ns["clip_scores"].items():
        assert psnr.shape == distance.shape == (5,), name
        assert np.all((psnr > 5.0) & (psnr < 100.0)) and np.all(distance >= 0.0), name
    # The user's video, then one grid per dataset, each playing every frame.
    assert gif_lengths(shown[:1], encoded.fps) == [9]
    assert gif_lengths(shown[1:], 8) == [5, 5]


def test_magvit_notebook_trains_a_tiny_generator_and_decodes_every_task(
    tokenizer_workdir, tmp_path, monkeypatch
):
    ns, shown = run_notebook(
        "02_magvit.ipynb",
        monkeypatch,
        GENERATOR=tmp_path / "no_run",
        TOKENIZER=tokenizer_workdir,
        OUTPUT=tmp_path,
        TINY_GENERATOR_STEPS=2,
        NUM_EXAMPLES=2,
    )
    assert ns["GENERATOR"] == str(tmp_path / "tiny_generator")
    generator = ns["generator"]
    assert generator.step == 2 and generator.tasks == ("FP", "OPC", "IPC", "CG")
    k = generator.config.decoding.num_steps
    samples = ns["samples"]
    assert set(samples) == {"FP", "OPC", "IPC", "CG"}
    for task, out in samples.items():
        assert out.sample.shape == out.condition.shape == (2, 9, 32, 32, 3), task
        assert out.steps.shape == (k, 2, 9, 32, 32, 3), task
        # Each step fixes more cells and the last fixes all: its picture is the sample. The
        # same tokens are decoded in a batch of steps rather than alone, another compiled
        # program, so a pixel near a rounding boundary may land one uint8 level apart.
        assert np.all(np.diff(out.masked, axis=0) <= 0) and np.all(out.masked[-1] == 0), task
        gap = np.abs(out.steps[-1].astype(int) - out.sample.astype(int))
        assert gap.max() <= 1 and np.mean(gap == 0) > 0.999, (task, gap.max(), np.mean(gap))
    # FP's condition is frame 0 replicated; CG's starts with every cell masked (dimmed).
    fp = samples["FP"].condition
    np.testing.assert_array_equal(fp, np.repeat(fp[:, :1], 9, axis=1))
    assert samples["CG"].masked[0].min() > 0.5
    # Per task: condition | sample (| ground truth), then the decoding steps.
    assert gif_lengths(shown, generator.config.eval.fps) == [9] * 8


@pytest.fixture(scope="module")
def audio_tokenizer_workdir(tmp_path_factory):
    """A 2-step audio tokenizer run (the tiny codec of tests/tiny_configs.py)."""
    from tiny_configs import tiny_audio

    from videogen import main

    workdir = str(tmp_path_factory.mktemp("audio_tokenizer"))
    config = tiny_audio(**{"checkpoint.every_steps": 2, "eval.at_end": False})
    assert main.run(config, workdir).step == 2
    return workdir


def test_videopoet_notebook_trains_a_tiny_run_and_samples_with_sound(
    tokenizer_workdir, audio_tokenizer_workdir, tmp_path, monkeypatch
):
    ns, shown = run_notebook(
        "03_videopoet.ipynb",
        monkeypatch,
        VIDEOPOET=tmp_path / "no_run",
        TOKENIZER=tokenizer_workdir,
        AUDIO_TOKENIZER=audio_tokenizer_workdir,
        OUTPUT=tmp_path,
        TINY_VIDEOPOET_STEPS=2,
        NUM_EXAMPLES=2,
    )
    assert ns["VIDEOPOET"] == str(tmp_path / "tiny_videopoet")
    poet = ns["poet"]
    assert poet.step == 2
    t2v = ns["t2v"]
    assert t2v.dtype == np.uint8 and t2v.shape == (len(ns["CAPTIONS"]), 9, 32, 32, 3)
    avcont = ns["avcont"]
    samples = poet.setup.audio_samples
    assert samples == 9 * poet.sample_rate // poet.config.eval.fps  # 1.125 s of sound
    assert avcont["video"].shape == (2, 9, 32, 32, 3)
    assert avcont["audio"].shape == (2, samples) and np.all(np.isfinite(avcont["audio"]))
    assert 0 < avcont["given_samples"] < samples
    # Per example: generated and real sound, each a WAV of the clip's length.
    sounds = [o for o in shown if isinstance(o, IPython.display.Audio)]
    assert len(sounds) == 4
    for sound in sounds:
        with wave.open(io.BytesIO(sound.data)) as wav:
            assert (wav.getframerate(), wav.getnframes()) == (poet.sample_rate, samples)
    # T2V's clips, then generated | real per continued clip.
    assert gif_lengths(shown, poet.config.eval.fps) == [9] * (len(ns["CAPTIONS"]) + 4)
