"""Token files: a training set tokenized once by a frozen tokenizer.

Stage 2 (the MAGVIT transformer) can train from these instead of running the
tokenizer's encoder on every batch. A token directory holds:
  tokens.npy  [N, n, f] sub-tokens of each clip (`maskgit.to_factors` order),
              uint16 when every sub-token fits, else int32
  labels.npy  int32 [N]
  meta.json   what made them (`FORMAT_VERSION`, the tokenizer run, latent
              shape, LFQ bits and factors, the data source and clip shape),
              checked against the run that reads them
The arrays are memory-mapped, so a token set larger than RAM still trains.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from jaxtyping import Int

from videogen.staged_directory import staged_directory

FORMAT_VERSION = 1
TOKENS, LABELS, META = "tokens.npy", "labels.npy", "meta.json"


def write(
    directory: str,
    tokens: Int[np.ndarray, "N n f"],
    labels: Int[np.ndarray, " N"],
    meta: dict[str, Any],
) -> None:
    """Writes a token directory; files appear only once all three are complete.

    An existing token directory is replaced; any other non-empty directory is refused,
    so a mistyped `data.token_dir` cannot delete data.
    """
    if os.path.isdir(directory) and os.listdir(directory) and not exists(directory):
        raise ValueError(
            f"{directory!r} is a non-empty directory without token files ({META}); refusing to "
            "replace it. Point config.data.token_dir at a new or token directory."
        )
    tokens, labels = np.asarray(tokens), np.asarray(labels)
    if tokens.ndim != 3 or labels.shape != tokens.shape[:1]:
        raise ValueError(
            f"tokens {tokens.shape} and labels {labels.shape} must be [N, n, f] and [N]."
        )
    dtype = (
        np.uint16 if tokens.size == 0 or (0 <= tokens.min() and tokens.max() < 2**16) else np.int32
    )
    with staged_directory(directory) as staging:
        np.save(os.path.join(staging, TOKENS), tokens.astype(dtype))
        np.save(os.path.join(staging, LABELS), labels.astype(np.int32))
        meta = {"format_version": FORMAT_VERSION, "count": int(len(labels)), **meta}
        with open(os.path.join(staging, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def exists(directory: str) -> bool:
    """Whether `directory` holds token files (`write` moves them in together, meta included)."""
    return os.path.exists(os.path.join(directory, META))


def read_meta(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, META)
    if not exists(directory):
        raise FileNotFoundError(
            f"no token files in {directory!r} ({META} is missing); write them first with "
            "--mode=tokenize and the same config, or clear config.data.token_dir to "
            "tokenize on the fly."
        )
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"token files in {directory!r} have format {meta.get('format_version')}, this "
            f"version reads {FORMAT_VERSION}; write them again with --mode=tokenize."
        )
    return meta


def check_meta(directory: str, expected: dict[str, Any]) -> dict[str, Any]:
    """The directory's meta, after checking that every key of `expected` matches it."""
    meta = read_meta(directory)
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: files {got!r}, run {want!r}" for k, (got, want) in wrong.items())
        raise ValueError(
            f"token files in {directory!r} do not fit this run ({details}); write them again "
            "with --mode=tokenize and this config, or point config.data.token_dir elsewhere."
        )
    return meta


class TokenSource:
    """Random-access source over a token directory: {"tokens": int32 [n, f], "label": int32}."""

    keys = ("tokens", "label")
    skipped_files = 0
    short_files = 0

    def __init__(self, directory: str):
        self.meta = read_meta(directory)
        self._tokens = np.load(os.path.join(directory, TOKENS), mmap_mode="r")
        self._labels = np.load(os.path.join(directory, LABELS), mmap_mode="r")
        if len(self._tokens) != len(self._labels) or len(self._tokens) != self.meta["count"]:
            raise ValueError(
                f"token files in {directory!r} disagree: {len(self._tokens)} token rows, "
                f"{len(self._labels)} labels, meta count {self.meta['count']}; write them again."
            )
        if not len(self._tokens):
            raise ValueError(f"token files in {directory!r} hold no examples.")

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {
            "tokens": np.asarray(self._tokens[index], np.int32),
            "label": np.int32(self._labels[index]),
        }
