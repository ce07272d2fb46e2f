"""Token files: round trip, dtype, atomic replacement, and refusals that name the fix."""

import json
import os

import numpy as np
import pytest

from videogen.data import token_files


def test_round_trip_replace_and_refusals(tmp_path):
    directory = str(tmp_path / "tokens")
    tokens = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    token_files.write(directory, tokens, np.array([4, 7]), {"num_factors": 2})
    assert np.load(os.path.join(directory, "tokens.npy")).dtype == np.uint16
    source = token_files.TokenSource(directory)
    assert len(source) == 2 and source.meta["count"] == 2
    np.testing.assert_array_equal(source[1]["tokens"], tokens[1])
    assert source[1]["tokens"].dtype == np.int32 and source[1]["label"] == 7
    # Wide sub-tokens keep int32; an existing token directory is replaced whole.
    token_files.write(directory, np.full((1, 3, 1), 2**17), np.array([1]), {"num_factors": 1})
    assert np.load(os.path.join(directory, "tokens.npy")).dtype == np.int32
    assert len(token_files.TokenSource(directory)) == 1
    assert sorted(os.listdir(tmp_path)) == ["tokens"]  # no staging directory left behind
    with pytest.raises(ValueError, match="num_factors: files 1, run 2"):
        token_files.check_meta(directory, {"num_factors": 2})
    # A directory that holds something else is never deleted.
    other = tmp_path / "my_videos"
    other.mkdir()
    (other / "clip.mp4").write_bytes(b"data")
    with pytest.raises(ValueError, match="refusing to replace"):
        token_files.write(str(other), tokens, np.array([4, 7]), {})
    assert (other / "clip.mp4").read_bytes() == b"data"
    # Files of another format version, or no files, name the command that writes them.
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    (tmp_path / "tokens" / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(ValueError, match="--mode=tokenize"):
        token_files.TokenSource(directory)
    with pytest.raises(FileNotFoundError, match="--mode=tokenize"):
        token_files.TokenSource(str(tmp_path / "missing"))
