"""Compiling, caching and loading this package's C++ XLA FFI kernels (CPU).

Each kernel is one `.cc` file beside its Python module, compiled once with g++ (or `$CXX`)
against jaxlib's FFI headers into `$VIDEOGEN_KERNEL_CACHE` (default
~/.cache/videogen/kernels), under a name that hashes the source, jax's version and the compiler
flags (which name the libraries it links, so their location too). `load` registers its handlers with XLA, or logs once
why it cannot and returns that reason, so the caller falls back to XLA's own operations.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path
import shutil
import subprocess
import tempfile
from typing import Callable, Sequence

import jax

CACHE_VARIABLE = "VIDEOGEN_KERNEL_CACHE"


class KernelUnavailable(RuntimeError):
    """A kernel library cannot be built or loaded here; the message says why and what to do."""


def library_path(source: Path, flags: str) -> Path:
    """Where `source` compiled for this jax version with `flags` lives (or will)."""
    cache = os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "videogen" / "kernels"
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    digest.update(f"{jax.__version__} {flags}".encode())
    return Path(cache) / f"{source.stem}-{digest.hexdigest()[:16]}.so"


def compile_library(source: Path, flags: Sequence[str]) -> Path:
    """Compiles `source` with `flags` unless this exact build exists; returns the library."""
    path = library_path(source, " ".join(flags))
    if path.exists():
        return path
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise KernelUnavailable(
            f"no C++ compiler (g++, or $CXX) on PATH to build {source.name}; install one "
            "(e.g. `apt install g++`) and run ./setup.sh again."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compiled beside its final name and renamed into place: parallel test workers that
    # build at the same time each write their own file, and readers never see half of one.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    command = [
        compiler, "-O3", "-std=c++17", "-shared", "-fPIC", str(source), "-o", str(partial),
        f"-I{jax.ffi.include_dir()}", *flags,
    ]  # fmt: skip
    logging.info("building %s into %s (once; about 20 s)", source.name, path)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise KernelUnavailable(
            f"building {source.name} failed ({' '.join(command)}):\n{result.stderr[-2000:]}"
        )
    os.replace(partial, path)
    return path


def load(
    build: Callable[[], Path],
    targets: Sequence[str],
    *,
    disable_variable: str,
    unavailable: str,
) -> str | None:
    """Builds with `build()`, loads the library and registers its `targets` for CPU.

    Returns None when they are ready, else the reason (logged once per caller, which
    caches the answer): `$disable_variable=0`, or a failed build or load, reported as
    "`unavailable`: reason"."""
    if os.environ.get(disable_variable, "1") == "0":
        return f"turned off by {disable_variable}=0"
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except (KernelUnavailable, OSError) as error:
        logging.warning("%s: %s", unavailable, error)
        return str(error)
    for name in targets:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), "cpu")
    return None
