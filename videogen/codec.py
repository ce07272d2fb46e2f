"""Video files to token files and back: what ``videogen encode`` and ``videogen decode`` do.

`encode_file` decodes a video (PyAV; optionally shrunk so its short side is
``short_side``), tokenizes it chunk by chunk with a causal tokenizer
(`videogen.streaming`: any length, any frame size), tokenizes its soundtrack
when an audio tokenizer is given, and writes a ``.vgtok`` file
(`videogen.token_format`). Unless ``measure_psnr=False`` it decodes the tokens
as it goes and measures the reconstruction's PSNR against the encoded frames.

`decode_file` reads a token file, refuses tokenizers whose weights did not
write it, and writes the reconstruction (H.264 video, AAC soundtrack when the
file has audio tokens) frame chunk by frame chunk.

Tokenizers are run directories or `videogen export` directories
(`videogen.pretrained`). Outputs appear whole or not at all.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import functools
import os
import time

import av
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Float, UInt8

from videogen import pretrained, streaming, token_format
from videogen.data import video_decode
from videogen.evaluation import image_metrics
from videogen.evaluation.video_grid import mp4_encoder

# Containers whose muxers take H.264 video and AAC audio.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
# When a file declares no frame rate (some .webm/.gif); recorded in the token file.
DEFAULT_FPS = 25.0


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """What `encode_file` did, with the numbers the CLI prints."""

    token_path: str
    num_frames: int
    height: int
    width: int
    fps: float
    token_shape: tuple[int, ...]
    bits_per_token: int
    token_bytes: int  # the whole token file, header included
    raw_bytes: int  # RGB24 frames (+ 16-bit PCM of the soundtrack if it was tokenized)
    input_bytes: int  # the input file, or 0 if only part of it was encoded
    audio_token_shape: tuple[int, ...] | None
    psnr: float | None  # dB, mean over frames of the per-frame PSNR (uint8 scale)
    seconds: float
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    video_path: str
    num_frames: int
    height: int
    width: int
    has_audio: bool
    seconds: float


def _tokenizer(path: str, kind: str) -> tuple[nnx.Module, str, dict]:
    """The model at ``path``, its weights hash and its description; raises unless ``kind``."""
    config = pretrained.pretrained_config(path)
    if config["kind"] != kind:
        raise ValueError(
            f"{path} holds a {config['kind']}, but a {kind} is needed here; pass a "
            f"{kind.replace('_', ' ')} run or export."
        )
    model = pretrained.load_pretrained(path)
    return model, pretrained.weights_hash(model), config


@functools.partial(jax.jit, static_argnames="graphdef")
def _tokenize_audio(graphdef, state, audio):
    return nnx.merge(graphdef, state).tokenize(audio[None])[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples"))
def _detokenize_audio(graphdef, state, tokens, num_samples):
    return nnx.merge(graphdef, state).detokenize(tokens[None], num_samples)[0]


def _encode_audio(
    video_path: str, audio_tokenizer: str, loaded: tuple, num_frames: int, fps: float
) -> token_format.TokenSection:
    """The soundtrack of the first ``num_frames`` frames, tokenized in one pass by ``loaded``
    (`_tokenizer` of ``audio_tokenizer``)."""
    model, model_hash, config = loaded
    sample_rate = config["sample_rate"]
    num_samples = round(num_frames / fps * sample_rate)
    if num_samples < model.hop_length:
        raise ValueError(
            f"the soundtrack of {num_frames} frames at {fps:g} fps is {num_samples} samples, "
            f"shorter than one audio token ({model.hop_length} samples at {sample_rate} Hz); "
            "encode without the audio tokenizer."
        )
    audio = video_decode.read_audio(video_path, 0.0, num_samples, sample_rate=sample_rate)
    graphdef, state = nnx.split(model)
    tokens = np.asarray(_tokenize_audio(graphdef, state, jnp.asarray(audio)))
    return token_format.TokenSection(
        tokens,
        token_format.bits_for(model.quantizer.codebook_size),
        model_hash,
        os.path.abspath(audio_tokenizer),
        {"sample_rate": sample_rate, "num_samples": num_samples},
    )


def _check_input(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected {what}.")
    return path


def encode_file(
    video_path: str,
    token_path: str,
    *,
    tokenizer: str,
    audio_tokenizer: str | None = None,
    chunk_frames: int = 16,
    short_side: int | None = None,
    max_frames: int | None = None,
    compression: str = "none",
    measure_psnr: bool = True,
) -> EncodeResult:
    """Tokenizes ``video_path`` into the token file ``token_path`` (see the module docstring)."""
    video_path = _check_input(video_path, "a video file (.mp4, .mkv, .mov, .webm, .gif, ...)")
    info = video_decode.probe_media(video_path)
    notes = []
    fps = info.frame_rate
    if fps <= 0:
        fps = DEFAULT_FPS
        notes.append(f"the file declares no frame rate; recorded {fps:g} fps")
    model, model_hash, _ = _tokenizer(tokenizer, "video_tokenizer")
    # Loaded before encoding, so that a wrong path fails before the long part.
    audio_model = None
    if audio_tokenizer and info.has_audio:
        audio_model = _tokenizer(audio_tokenizer, "audio_tokenizer")
    elif audio_tokenizer:
        notes.append("the video has no soundtrack; the audio tokenizer was not used")
    elif info.has_audio:
        notes.append("the soundtrack was not encoded (no audio tokenizer given)")
    chunked = streaming.ChunkedTokenizer(model, chunk_frames=chunk_frames)
    started = time.perf_counter()
    frames = video_decode.iter_frames(video_path, max_frames=max_frames, short_side=short_side)
    awaiting = collections.deque()  # chunks whose reconstruction is not back yet
    token_chunks, psnr_sum, num_frames, size = [], 0.0, 0, (0, 0)

    def encoded():
        nonlocal num_frames, size
        for chunk, tokens in chunked.encode_chunks(frames):
            if not num_frames:
                size = chunk.shape[1:3]
            num_frames += len(chunk)
            if measure_psnr:
                awaiting.append(chunk)
            token_chunks.append(np.asarray(tokens))
            yield tokens

    if measure_psnr:
        for reconstruction in chunked.decode_chunks(encoded()):
            original = awaiting.popleft()
            n, h, w = original.shape[:3]
            psnr = image_metrics.psnr(original, reconstruction[:n, :h, :w], max_value=255.0)
            psnr_sum += float(jnp.sum(psnr))
    else:
        for _ in encoded():
            pass
    height, width = (int(d) for d in size)
    tokens = np.concatenate(token_chunks)
    video = token_format.TokenSection(
        tokens, model.num_bits, model_hash, os.path.abspath(tokenizer)
    )
    audio = None
    if audio_model is not None:
        audio = _encode_audio(video_path, audio_tokenizer, audio_model, num_frames, fps)
    whole = max_frames is None or num_frames >= info.num_frames
    token_bytes = token_format.write(
        token_path,
        token_format.TokenFile(
            fps=fps,
            num_frames=num_frames,
            height=height,
            width=width,
            video=video,
            audio=audio,
            source={"name": os.path.basename(video_path), "bytes": os.path.getsize(video_path)},
        ),
        compression=compression,
    )
    seconds = time.perf_counter() - started
    raw = num_frames * height * width * 3
    if audio is not None:
        raw += 2 * audio.meta["num_samples"]
    return EncodeResult(
        token_path=os.fspath(token_path),
        num_frames=num_frames,
        height=height,
        width=width,
        fps=fps,
        token_shape=tokens.shape,
        bits_per_token=model.num_bits,
        token_bytes=token_bytes,
        raw_bytes=raw,
        input_bytes=os.path.getsize(video_path) if whole else 0,
        audio_token_shape=None if audio is None else audio.tokens.shape,
        psnr=psnr_sum / num_frames if measure_psnr else None,
        seconds=seconds,
        notes=tuple(notes),
    )


class _VideoWriter:
    """Writes frames as they come, and a soundtrack, with H.264 (MPEG-4 part 2 where the PyAV
    build lacks it) and AAC. `video_grid.write_mp4` needs the whole clip in memory; a long
    reconstruction does not fit."""

    def __init__(self, path: str, *, fps: float, height: int, width: int, sample_rate: int | None):
        self._container = av.open(path, mode="w")
        codec = mp4_encoder()
        # A rational rate keeps 29.97 exact and satisfies the encoder's time base.
        self._video = self._container.add_stream(
            codec, rate=fractions.Fraction(fps).limit_denominator(1001)
        )
        # yuv420p, which every player accepts, needs an even size: odd ones repeat an edge.
        self._pad = (height % 2, width % 2)
        self._video.height, self._video.width = height + self._pad[0], width + self._pad[1]
        self._video.pix_fmt = "yuv420p"
        # Near-lossless, so the PSNR of the file is the tokenizer's, not H.264's.
        self._video.options = {"crf": "10"} if codec == "libx264" else {"qmin": "1", "qmax": "2"}
        self._audio = None
        if sample_rate is not None:
            self._audio = self._container.add_stream("aac", rate=sample_rate)
            self._audio.layout = "mono"
            self._sample_rate = sample_rate

    def write_audio(self, samples: Float[np.ndarray, " s"]) -> None:
        """The whole soundtrack (before the frames: the muxer then buffers only audio)."""
        frame = av.AudioFrame.from_ndarray(
            np.clip(samples, -1.0, 1.0).astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = self._sample_rate, 0
        for packet in (*self._audio.encode(frame), *self._audio.encode(None)):
            self._container.mux(packet)

    def write(self, frames: UInt8[np.ndarray, "n H W 3"]) -> None:
        frames = np.pad(frames, ((0, 0), (0, self._pad[0]), (0, self._pad[1]), (0, 0)), "edge")
        for frame in frames:
            self._container.mux(self._video.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))

    def close(self) -> None:
        self._container.mux(self._video.encode())
        self._container.close()


def decode_file(
    token_path: str,
    video_path: str,
    *,
    tokenizer: str | None = None,
    audio_tokenizer: str | None = None,
    chunk_frames: int = 16,
) -> DecodeResult:
    """Writes the reconstruction of token file ``token_path`` to ``video_path`` (.mp4, .mkv or
    .mov). Tokenizers default to the paths recorded in the file; their weights must hash to
    the recorded hashes."""
    token_path = _check_input(token_path, f"a token file ({token_format.SUFFIX})")
    video_path = os.fspath(video_path)
    suffix = os.path.splitext(video_path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{video_path}: cannot write a {suffix or 'suffix-less'} file; name the output "
            f"with one of {VIDEO_SUFFIXES}."
        )
    token_file = token_format.read(token_path)
    models = {}
    for name, kind, given in (
        ("video", "video_tokenizer", tokenizer),
        ("audio", "audio_tokenizer", audio_tokenizer),
    ):
        section = token_file.sections().get(name)
        if section is None:
            continue
        path = given or section.tokenizer_path
        if not given and not os.path.exists(path):
            raise FileNotFoundError(
                f"{token_path} was written with the {name} tokenizer {path} (weights hash "
                f"{section.tokenizer_hash}), which is not here; pass its run or export "
                f"directory with --{'audio-' if name == 'audio' else ''}tokenizer."
            )
        model, model_hash, config = _tokenizer(path, kind)
        section.check_tokenizer(name, model_hash, path)
        models[name] = (model, config)
    model = models["video"][0]
    chunked = streaming.ChunkedTokenizer(model, chunk_frames=chunk_frames)
    tokens = token_file.video.tokens
    expected = (
        chunked.num_token_frames(token_file.num_frames),
        *chunked.token_grid(token_file.height, token_file.width),
    )
    if tokens.shape != expected:
        raise token_format.TokenFileError(
            f"{token_path} holds tokens {tokens.shape} for {token_file.num_frames} frames of "
            f"{token_file.height}x{token_file.width}; this tokenizer needs {expected}. The "
            "file is damaged: encode the video again."
        )
    started = time.perf_counter()
    directory = os.path.dirname(os.path.abspath(video_path))
    os.makedirs(directory, exist_ok=True)
    # Written beside the target and renamed at the end, so a failure leaves no partial file;
    # the suffix tells FFmpeg the container.
    name = os.path.basename(video_path)
    staging = os.path.join(directory, f".{name}.{os.getpid()}.partial{suffix}")
    try:
        audio = token_file.audio
        writer = _VideoWriter(
            staging,
            fps=token_file.fps,
            height=token_file.height,
            width=token_file.width,
            sample_rate=None if audio is None else audio.meta["sample_rate"],
        )
        try:
            if audio is not None:
                audio_model = models["audio"][0]
                graphdef, state = nnx.split(audio_model)
                waveform = _detokenize_audio(
                    graphdef, state, jnp.asarray(audio.tokens), audio.meta["num_samples"]
                )
                writer.write_audio(np.asarray(waveform))
            for frames in chunked.decode_chunks(
                chunked.token_chunks(tokens),
                num_frames=token_file.num_frames,
                height=token_file.height,
                width=token_file.width,
            ):
                writer.write(frames)
        finally:
            writer.close()
        os.replace(staging, video_path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return DecodeResult(
        video_path=video_path,
        num_frames=token_file.num_frames,
        height=token_file.height,
        width=token_file.width,
        has_audio=token_file.audio is not None,
        seconds=time.perf_counter() - started,
    )
