"""videogen: MAGVIT / MAGVIT-v2 / VideoPoet video generation in JAX and Flax NNX.

`videogen.load_pretrained(path)` rebuilds a trained tokenizer from an export or a run
directory (`videogen/pretrained.py`). It is imported on first use, so that loading an
experiment config (which imports `videogen.config`) still imports no JAX.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_pretrained":
        from videogen.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'videogen' has no attribute {name!r}")
