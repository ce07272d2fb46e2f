"""The .vgtok token file: bit-packing, header round trip, and refusals of bad files."""

import os
import struct

import numpy as np
import pytest

from videogen import token_format


@pytest.mark.parametrize("bits", [18, 10, 9, 1, 31])
def test_bit_packing_round_trips_with_the_packed_size(bits):
    rng = np.random.default_rng(bits)
    # An odd count, so the last byte is partly padding; the extremes are included.
    values = rng.integers(0, 2**bits, size=1001)
    values[:2] = [0, 2**bits - 1]
    packed = token_format.pack_bits(values, bits)
    assert len(packed) == -(-1001 * bits // 8)
    np.testing.assert_array_equal(token_format.unpack_bits(packed, bits, 1001), values)


def test_bit_packing_is_lsb_first():
    # 3 (binary 11) then 1 in 2 bits each: stream bits 1,1,1,0 -> byte 0b0111.
    assert token_format.pack_bits(np.array([3, 1]), 2) == bytes([0b0111])


def test_packing_refuses_values_wider_than_the_bits():
    with pytest.raises(ValueError, match=r"\[0, 1024\].*10 bits"):
        token_format.pack_bits(np.array([0, 1024]), 10)


def test_bits_for_vocabularies():
    assert [token_format.bits_for(n) for n in (2, 1024, 1025, 2**18)] == [1, 10, 11, 18]


def _token_file(video_hash="a" * 64, with_audio=True):
    rng = np.random.default_rng(0)
    audio = token_format.TokenSection(
        rng.integers(0, 1024, (4, 53)), 10, "b" * 64, "/runs/audio", {"sample_rate": 16000}
    )
    return token_format.TokenFile(
        fps=29.97,
        num_frames=17,
        height=36,
        width=64,
        video=token_format.TokenSection(rng.integers(0, 2**18, (5, 9, 16)), 18, video_hash, "/r"),
        audio=audio if with_audio else None,
        source={"name": "in.mp4", "bytes": 1234},
    )


@pytest.mark.parametrize("compression", token_format.COMPRESSIONS)
def test_file_round_trips(tmp_path, compression):
    original = _token_file()
    path = tmp_path / "x.vgtok"
    size = token_format.write(path, original, compression=compression)
    assert size == os.path.getsize(path)
    back = token_format.read(path)
    assert (back.fps, back.num_frames, back.height, back.width, back.source) == (
        29.97,
        17,
        36,
        64,
        {"name": "in.mp4", "bytes": 1234},
    )
    for name in ("video", "audio"):
        a, b = original.sections()[name], back.sections()[name]
        np.testing.assert_array_equal(b.tokens, a.tokens)
        assert (b.bits_per_token, b.tokenizer_hash, b.tokenizer_path, b.meta) == (
            a.bits_per_token,
            a.tokenizer_hash,
            a.tokenizer_path,
            a.meta,
        )
    if compression == "none":
        # 18 bits per video token and 10 per audio token, not 32: 720*18/8 + 212*10/8 bytes.
        payload = 1620 + 265
        assert payload < size < payload + 1024


def test_other_tokenizer_is_refused_naming_both_hashes(tmp_path):
    path = tmp_path / "x.vgtok"
    token_format.write(path, _token_file(video_hash="1" * 64, with_audio=False))
    section = token_format.read(path).video
    section.check_tokenizer("video", "1" * 64, "/same")
    with pytest.raises(token_format.TokenFileError, match=f"{'1' * 64}.*{'2' * 64}"):
        section.check_tokenizer("video", "2" * 64, "/other")


def test_bad_version_is_refused(tmp_path):
    path = tmp_path / "x.vgtok"
    token_format.write(path, _token_file())
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack("<H", token_format.FORMAT_VERSION + 1)
    path.write_bytes(bytes(data))
    with pytest.raises(token_format.TokenFileError, match="format version 2.*reads version 1"):
        token_format.read(path)


def test_truncated_and_damaged_files_are_refused(tmp_path):
    path = tmp_path / "x.vgtok"
    token_format.write(path, _token_file())
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(token_format.TokenFileError, match=rf"truncated.*{len(data)} bytes"):
        token_format.read(path)
    path.write_bytes(data[:20])
    with pytest.raises(token_format.TokenFileError, match="truncated: its header"):
        token_format.read(path)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(token_format.TokenFileError, match="CRC-32"):
        token_format.read(path)
    path.write_bytes(b"not a token file at all")
    with pytest.raises(token_format.TokenFileError, match="not a videogen token file"):
        token_format.read(path)


def test_failed_write_leaves_no_file(tmp_path):
    bad = token_format.TokenSection(np.array([[[2**18]]]), 18, "a" * 64)
    with pytest.raises(ValueError, match="18 bits"):
        token_format.write(tmp_path / "x.vgtok", token_format.TokenFile(8.0, 1, 4, 4, bad))
    assert os.listdir(tmp_path) == []
