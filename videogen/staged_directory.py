"""Directories written whole or not at all (token files, exported weights)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def staged_directory(directory: str) -> Iterator[str]:
    """Yields a new empty directory beside ``directory`` to write into. When the block ends
    without an error it replaces ``directory`` (whatever was there goes); otherwise it is
    removed. A reader, or a run killed mid-write, never sees a half-written directory."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    # Unique per process and call; hidden, so a listing of the parent does not show it.
    name = f".{os.path.basename(directory)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    staging = os.path.join(parent, name)
    os.makedirs(staging)
    try:
        yield staging
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
