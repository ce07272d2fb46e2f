r"""The ``videogen`` command: video files to tokens and back, and exported tokenizers.

  videogen encode IN.mp4 OUT.vgtok --tokenizer=RUN_DIR [--audio-tokenizer=RUN_DIR]
  videogen decode OUT.vgtok RECON.mp4
  videogen export RUN_DIR EXPORT_DIR

(also ``python -m videogen.cli ...``). RUN_DIR is a tokenizer's training
workdir or an export; the work is `videogen.codec`'s and `videogen.pretrained`'s.
"""

from __future__ import annotations

import argparse
import os
import sys

# Keep TensorFlow, should a dependency import it, off accelerators and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videogen", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tokenizers = (
        "a tokenizer run directory (its training --workdir) or a `videogen export` directory"
    )

    encode = commands.add_parser("encode", help="tokenize a video file into a .vgtok file")
    encode.add_argument("video", help="input video (anything FFmpeg decodes)")
    encode.add_argument("tokens", help="output token file (.vgtok)")
    encode.add_argument("--tokenizer", required=True, help=f"the video tokenizer: {tokenizers}")
    encode.add_argument(
        "--audio-tokenizer",
        help=f"tokenize the soundtrack too with this audio tokenizer: {tokenizers}",
    )
    encode.add_argument(
        "--chunk-frames",
        type=int,
        default=16,
        help="frames per chunk after the first frame (a multiple of the temporal factor); "
        "memory grows with it, the tokens do not change",
    )
    encode.add_argument(
        "--short-side", type=int, help="resize frames so that their short side has this many pixels"
    )
    encode.add_argument("--max-frames", type=int, help="encode only the first N frames")
    encode.add_argument(
        "--compress",
        choices=("none", "zlib", "lzma"),
        default="none",
        help="compress the packed tokens; pays when the tokenizer uses few of its codes",
    )
    encode.add_argument(
        "--no-psnr",
        action="store_true",
        help="skip decoding the tokens to measure the reconstruction PSNR (about halves the time)",
    )

    decode = commands.add_parser("decode", help="reconstruct a video from a .vgtok file")
    decode.add_argument("tokens", help="input token file (.vgtok)")
    decode.add_argument("video", help="output video (.mp4, .mkv or .mov)")
    decode.add_argument(
        "--tokenizer", help="the video tokenizer (default: the one recorded in the token file)"
    )
    decode.add_argument(
        "--audio-tokenizer", help="the audio tokenizer (default: the one recorded in the file)"
    )
    decode.add_argument(
        "--chunk-frames", type=int, default=16, help="frames per decoded chunk (memory only)"
    )

    export = commands.add_parser(
        "export", help="write a run's tokenizer as config.json + model.safetensors"
    )
    export.add_argument("run", help=f"the tokenizer: {tokenizers}")
    export.add_argument("directory", help="output directory")
    return parser


def _ratio(token_bytes: int, other: int) -> str:
    return f"{other / token_bytes:,.1f}x smaller than {other:,} bytes"


def _encode(args) -> None:
    from videogen import codec

    r = codec.encode_file(
        args.video,
        args.tokens,
        tokenizer=args.tokenizer,
        audio_tokenizer=args.audio_tokenizer,
        chunk_frames=args.chunk_frames,
        short_side=args.short_side,
        max_frames=args.max_frames,
        compression=args.compress,
        measure_psnr=not args.no_psnr,
    )
    t, h, w = r.token_shape
    print(f"videogen encode: {args.video} -> {r.token_path}")
    print(
        f"  video: {r.num_frames} frames of {r.height}x{r.width} at {r.fps:g} fps -> "
        f"{t}x{h}x{w} tokens of {r.bits_per_token} bits"
    )
    if r.audio_token_shape is not None:
        print(f"  audio: {r.audio_token_shape[0]} levels x {r.audio_token_shape[1]} tokens")
    print(f"  token file: {r.token_bytes:,} bytes")
    print(f"  compression vs raw video: {_ratio(r.token_bytes, r.raw_bytes)}")
    if r.input_bytes:
        print(f"  compression vs input file: {_ratio(r.token_bytes, r.input_bytes)}")
    else:
        print("  compression vs input file: n/a (only part of the file was encoded)")
    if r.psnr is not None:
        print(f"  reconstruction PSNR: {r.psnr:.2f} dB (mean over frames)")
    print(f"  time: {r.seconds:.1f} s ({r.num_frames / r.seconds:.1f} frames/s)")
    for note in r.notes:
        print(f"  note: {note}")


def _decode(args) -> None:
    from videogen import codec

    r = codec.decode_file(
        args.tokens,
        args.video,
        tokenizer=args.tokenizer,
        audio_tokenizer=args.audio_tokenizer,
        chunk_frames=args.chunk_frames,
    )
    sound = " with sound" if r.has_audio else ""
    print(
        f"videogen decode: {args.tokens} -> {r.video_path}: {r.num_frames} frames of "
        f"{r.height}x{r.width}{sound} in {r.seconds:.1f} s "
        f"({r.num_frames / r.seconds:.1f} frames/s)"
    )


def _export(args) -> None:
    from videogen import pretrained

    directory = pretrained.export(args.run, args.directory)
    config = pretrained.pretrained_config(directory)
    print(
        f"videogen export: {config['kind']} of {args.run} -> {directory} "
        f"(weights hash {config['weights_hash']})"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status (errors print one line, no traceback)."""
    args = _parser().parse_args(argv)
    run = {"encode": _encode, "decode": _decode, "export": _export}[args.command]
    from videogen.data.video_decode import VideoDecodeError

    try:
        run(args)
    except (OSError, VideoDecodeError, ValueError) as e:
        print(f"videogen {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
