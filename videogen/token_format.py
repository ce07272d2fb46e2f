"""The ``.vgtok`` token file: a video's (and its soundtrack's) tokens, bit-packed, with what
decodes them.

Layout, format version 1 (integers little-endian):

  bytes 0-7    magic ``b"\\x89VGTOK\\r\\n"`` (the non-ASCII first byte and the CR LF
               expose a file mangled by a text-mode transfer)
  bytes 8-9    uint16 format version
  bytes 10-13  uint32 header length N
  N bytes      header: UTF-8 JSON, below
  then         the token sections' payloads, each at its ``offset`` from here

Header: ``format_version``; ``video``: the encoded frames' ``fps``, ``num_frames``,
``height``, ``width`` (after any resize, before padding to the tokenizer's
multiple); ``source``: the input file's ``name`` and ``bytes`` (for the
compression ratio); ``sections``: one entry per token stream, ``"video"`` and,
when the soundtrack was tokenized, ``"audio"``, each with

  tokenizer_hash   SHA-256 of the tokenizer's weights (`videogen.pretrained.weights_hash`);
                   decoding with other weights is refused
  tokenizer_path   where the tokenizer was loaded from when the file was written
                   (the default for decoding; any copy with the same hash works)
  shape            token array shape: video ``[t, h, w]``, audio ``[levels, frames]``
  bits_per_token   ``ceil(log2(vocabulary))``: 18 for a 2^18 LFQ, 10 for 1024 RVQ codes
  compression      ``"none"``, ``"zlib"`` or ``"lzma"``: applied to the packed bits
  offset, bytes    where the payload starts (after the header) and its stored length
  crc32            the payload's CRC-32
  meta             what else decoding needs (audio: ``sample_rate``, ``num_samples``)

Bit packing: the tokens in row-major (C) order form one bit stream, each token
``bits_per_token`` bits wide with its least significant bit first; stream bit
``k`` is bit ``k % 8`` (LSB = 0) of byte ``k // 8``, and the last byte is padded
with zeros. ``n`` tokens of ``b`` bits take ``ceil(n * b / 8)`` bytes.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import os
import struct
import zlib
from typing import Any

import numpy as np
from jaxtyping import Int

FORMAT_VERSION = 1
MAGIC = b"\x89VGTOK\r\n"
SUFFIX = ".vgtok"
COMPRESSIONS = ("none", "zlib", "lzma")
MAX_BITS = 31  # tokens are int32 everywhere else
_PREAMBLE = struct.Struct("<8sHI")  # magic, format version, header length
# Values per packing block: a multiple of 8, so every block ends on a byte boundary and
# memory stays bounded (32 bytes per value while packing) whatever the token count.
_BLOCK = 1 << 20


class TokenFileError(ValueError):
    """A token file is unreadable, damaged, or does not fit the tokenizer at hand."""


@dataclasses.dataclass(frozen=True)
class TokenSection:
    """One token stream of a file and the tokenizer that reads it."""

    tokens: Int[np.ndarray, "..."]
    bits_per_token: int
    tokenizer_hash: str
    tokenizer_path: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check_tokenizer(self, name: str, tokenizer_hash: str, tokenizer_path: str) -> None:
        """Raises unless the tokenizer at ``tokenizer_path`` (hash given) wrote this section."""
        if tokenizer_hash != self.tokenizer_hash:
            raise TokenFileError(
                f"the {name} tokens were written by the {name} tokenizer with weights hash "
                f"{self.tokenizer_hash} (from {self.tokenizer_path or 'an unrecorded path'}), "
                f"but {tokenizer_path} has weights hash {tokenizer_hash}; decode with the "
                "tokenizer that encoded the file."
            )


@dataclasses.dataclass(frozen=True)
class TokenFile:
    """A video's tokens: ``video`` tokens ``[t, h, w]``, optional ``audio`` ``[levels, frames]``."""

    fps: float
    num_frames: int
    height: int
    width: int
    video: TokenSection
    audio: TokenSection | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def sections(self) -> dict[str, TokenSection]:
        return {"video": self.video, **({"audio": self.audio} if self.audio is not None else {})}


def bits_for(vocabulary_size: int) -> int:
    """Bits per token of a vocabulary: ``ceil(log2(vocabulary_size))``, at least 1."""
    if not 1 <= vocabulary_size <= 2**MAX_BITS:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} is out of range; token files hold 1 to "
            f"2^{MAX_BITS} token values."
        )
    return max(1, (vocabulary_size - 1).bit_length())


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits} is out of range; use 1 to {MAX_BITS} bits per token.")


def pack_bits(values: Int[np.ndarray, "..."], bits: int) -> bytes:
    """``values`` (all in ``[0, 2^bits)``) as one LSB-first bit stream, ``bits`` per value."""
    _check_bits(bits)
    values = np.asarray(values).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(
            f"token values span [{values.min()}, {values.max()}], which {bits} bits per token "
            f"cannot hold ([0, {(1 << bits) - 1}]); pass the tokenizer's bits per token."
        )
    blocks = []
    for start in range(0, values.size, _BLOCK):
        words = values[start : start + _BLOCK].astype("<u4").view(np.uint8).reshape(-1, 4)
        stream = np.unpackbits(words, axis=1, bitorder="little")[:, :bits]
        blocks.append(np.packbits(stream.reshape(-1), bitorder="little").tobytes())
    return b"".join(blocks)


def unpack_bits(data: bytes, bits: int, count: int) -> Int[np.ndarray, " count"]:
    """Inverse of `pack_bits`: the first ``count`` values of ``bits`` bits, int32."""
    _check_bits(bits)
    needed = -(-count * bits // 8)
    if len(data) < needed:
        raise TokenFileError(
            f"{count} tokens of {bits} bits need {needed} bytes, got {len(data)}; the file is "
            "truncated or damaged: encode the video again."
        )
    raw = np.frombuffer(data, np.uint8, count=needed)
    out = np.empty(count, np.int32)
    for start in range(0, count, _BLOCK):
        n = min(_BLOCK, count - start)
        # Blocks start on byte boundaries because _BLOCK is a multiple of 8.
        chunk = raw[start * bits // 8 : -(-(start + n) * bits // 8)]
        stream = np.unpackbits(chunk, bitorder="little", count=n * bits).reshape(n, bits)
        words = np.zeros((n, 32), np.uint8)
        words[:, :bits] = stream
        out[start : start + n] = np.packbits(words, axis=1, bitorder="little").view("<u4")[:, 0]
    return out


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "zlib":
        return zlib.compress(data, 9)
    if compression == "lzma":
        return lzma.compress(data, preset=9)
    return data


def _decompress(data: bytes, compression: str, path: str) -> bytes:
    try:
        if compression == "zlib":
            return zlib.decompress(data)
        if compression == "lzma":
            return lzma.decompress(data)
    except (zlib.error, lzma.LZMAError) as e:
        raise TokenFileError(
            f"{path}: the {compression} payload does not decompress ({e}); the file is "
            "damaged: encode the video again."
        ) from e
    return data


def _section_header(
    section: TokenSection, payload: bytes, offset: int, compression: str
) -> dict[str, Any]:
    return {
        "offset": offset,
        "tokenizer_hash": section.tokenizer_hash,
        "tokenizer_path": section.tokenizer_path,
        "shape": [int(d) for d in np.shape(section.tokens)],
        "bits_per_token": section.bits_per_token,
        "compression": compression,
        "bytes": len(payload),
        "crc32": zlib.crc32(payload),
        "meta": section.meta,
    }


def write(path: str | os.PathLike, token_file: TokenFile, *, compression: str = "none") -> int:
    """Writes ``token_file`` to ``path`` whole or not at all; returns the file's size in bytes."""
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression={compression!r} is not supported; use one of {COMPRESSIONS}."
        )
    path = os.fspath(path)
    payloads, sections, offset = [], {}, 0
    for name, section in token_file.sections().items():
        payload = _compress(pack_bits(section.tokens, section.bits_per_token), compression)
        payloads.append(payload)
        sections[name] = _section_header(section, payload, offset, compression)
        offset += len(payload)
    header = {
        "format_version": FORMAT_VERSION,
        "video": {
            "fps": float(token_file.fps),
            "num_frames": int(token_file.num_frames),
            "height": int(token_file.height),
            "width": int(token_file.width),
        },
        "source": token_file.source,
        "sections": sections,
    }
    header_bytes = json.dumps(header, sort_keys=True).encode()
    blob = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A failed or interrupted write leaves the old file (or none), never a partial one.
    staging = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with open(staging, "wb") as f:
            f.write(blob)
            for payload in payloads:
                f.write(payload)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return len(blob) + sum(len(p) for p in payloads)


def _read_header(path: str, data: bytes) -> tuple[dict[str, Any], int]:
    """The header and where the payloads start."""
    if len(data) < _PREAMBLE.size or not data.startswith(MAGIC):
        raise TokenFileError(
            f"{path} is not a videogen token file (it does not start with {MAGIC!r}); make "
            f"one with `videogen encode VIDEO {os.path.splitext(os.path.basename(path))[0]}"
            f"{SUFFIX} --tokenizer=RUN_DIR`."
        )
    _, version, header_length = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise TokenFileError(
            f"{path} has token format version {version}; this videogen reads version "
            f"{FORMAT_VERSION}. Decode it with the videogen version that wrote it, or encode the "
            "video again."
        )
    start = _PREAMBLE.size + header_length
    if len(data) < start:
        raise TokenFileError(
            f"{path} is truncated: its header needs {start} bytes, the file has {len(data)}; "
            "encode the video again."
        )
    try:
        header = json.loads(data[_PREAMBLE.size : start])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenFileError(f"{path}: damaged header ({e}); encode the video again.") from e
    return header, start


def read(path: str | os.PathLike) -> TokenFile:
    """Reads and checks a token file (magic, version, lengths, CRC-32)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, start = _read_header(path, data)
    try:
        return _parse(path, header, data, start)
    except (KeyError, TypeError) as e:
        raise TokenFileError(
            f"{path}: damaged header (bad or missing field {e}); encode the video again."
        ) from e


def _parse(path: str, header: dict[str, Any], data: bytes, start: int) -> TokenFile:
    sections = header["sections"]
    expected = start + max(s["offset"] + s["bytes"] for s in sections.values())
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise TokenFileError(
            f"{path} is {state}: header and payloads make {expected} bytes, the file has "
            f"{len(data)}; encode the video again."
        )
    parsed = {}
    for name, s in sections.items():
        payload = data[start + s["offset"] : start + s["offset"] + s["bytes"]]
        if zlib.crc32(payload) != s["crc32"]:
            raise TokenFileError(
                f"{path}: the {name} tokens fail their CRC-32 check (the file is damaged); "
                "encode the video again."
            )
        packed = _decompress(payload, s["compression"], path)
        shape = tuple(s["shape"])
        tokens = unpack_bits(packed, s["bits_per_token"], int(np.prod(shape))).reshape(shape)
        parsed[name] = TokenSection(
            tokens, s["bits_per_token"], s["tokenizer_hash"], s["tokenizer_path"], s["meta"]
        )
    video = header["video"]
    return TokenFile(
        fps=video["fps"],
        num_frames=video["num_frames"],
        height=video["height"],
        width=video["width"],
        video=parsed["video"],
        audio=parsed.get("audio"),
        source=header["source"],
    )
