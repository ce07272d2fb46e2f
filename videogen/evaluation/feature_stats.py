"""Feature extraction over a mesh, and the real set's feature statistics cached on disk.

The real side of FVD/FID is the same for every checkpoint of a run, and
extracting it (e.g. I3D over thousands of clips) costs more than the
generated side; so its mean and covariance are computed once per evaluation
protocol and stored as `.npz` files named after the protocol's key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import tempfile
import time
from typing import Any
import zipfile

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Float
import numpy as np

from videogen.evaluation.frechet import gaussian_stats
from videogen.sharding import data_parallel_size, shard_batch

# Everything that changes the real statistics; a cache key must name them all.
KEY_FIELDS = (
    "dataset",
    "split",
    "num_examples",
    "num_frames",
    "resolution",
    "frame_stride",
    "network",
    "weights_sha256",
    "preprocessing",
)
# Fields that must agree between the real statistics and the generated videos.
MATCH_FIELDS = ("num_frames", "resolution")
# Compared too when both sides state them: features of different networks or
# preprocessing are not comparable.
MATCH_IF_GIVEN = ("frame_stride", "network", "weights_sha256", "preprocessing")


def canonical_json(key: Mapping[str, Any]) -> str:
    """The key as JSON with sorted keys and no whitespace: equal keys give equal text."""
    try:
        return json.dumps(
            dict(key), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"cache key {dict(key)!r} is not plain JSON ({e}); use str, int, float, "
            "bool, list and dict values only."
        ) from e


def _file_part(value: Any) -> str:
    # tfds:ucf101 or a path-like network name must not create directories; the
    # name is for people only (the hash and the stored key identify the file).
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-") or "x"


class RealStatsCache:
    """`.npz` files of (mu, sigma, count) in `directory`, one per evaluation protocol.

    A key is a dict with at least KEY_FIELDS (extra fields, e.g. a seed, count
    too). The file `<dataset>_<split>_<network>_<hash12>.npz` holds the key's
    canonical JSON, checked on every load. Every process may write: files are
    written under a temporary name and renamed, so readers never see half a
    file and concurrent writers of the same key leave one whole file.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = pathlib.Path(directory)

    def path(self, key: Mapping[str, Any]) -> pathlib.Path:
        missing = [f for f in KEY_FIELDS if f not in key]
        if missing:
            raise ValueError(
                f"cache key is missing {missing}; it has {sorted(key)}. Name every "
                f"field of {KEY_FIELDS}, so that statistics of another protocol are "
                "never reused."
            )
        digest = hashlib.sha256(canonical_json(key).encode()).hexdigest()[:12]
        name = "_".join(_file_part(key[f]) for f in ("dataset", "split", "network"))
        return self.directory / f"{name}_{digest}.npz"

    def _load(self, path: pathlib.Path, key_json: str) -> tuple[np.ndarray, np.ndarray, int] | str:
        """The stored statistics, or why they cannot be used."""
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                mu, sigma, count = data["mu"], data["sigma"], int(data["count"])
        except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as e:
            return f"unreadable ({type(e).__name__}: {e})"
        if stored_key != key_json:
            return f"it was computed for another key {stored_key}"
        if (
            mu.ndim != 1
            or sigma.shape != (mu.shape[0], mu.shape[0])
            or count < 2
            or not (np.isfinite(mu).all() and np.isfinite(sigma).all())
        ):
            return (
                f"it holds invalid statistics (mu {mu.shape}, sigma {sigma.shape}, count {count})"
            )
        return mu, sigma, count

    def _save(
        self, path: pathlib.Path, key_json: str, mu: np.ndarray, sigma: np.ndarray, count: int
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=self.directory, prefix=path.stem, suffix=".tmp", delete=False
        ) as f:
            try:
                np.savez(f, key=np.array(key_json), mu=mu, sigma=sigma, count=np.int64(count))
            except BaseException:
                os.unlink(f.name)  # a full disk must not leave partial files behind
                raise
        os.replace(f.name, path)

    def get_or_compute(
        self, key: Mapping[str, Any], compute_fn: Callable[[], Float[np.ndarray, "n d"]]
    ) -> tuple[Float[np.ndarray, "d"], Float[np.ndarray, "d d"], int]:
        """(mu, sigma, count) for `key`: from its file, else from `compute_fn()`'s features.

        compute_fn returns the real set's features [N, D] with N == key["num_examples"].
        A file that is unreadable, holds another key or invalid statistics is
        recomputed and replaced, with a warning.
        """
        path = self.path(key)
        key_json = canonical_json(key)
        if path.exists():
            loaded = self._load(path, key_json)
            if isinstance(loaded, tuple):
                logging.info("real statistics: reusing %s (N=%d)", path, loaded[2])
                return loaded
            logging.warning(
                "real statistics: not using %s because %s; recomputing it.", path, loaded
            )
        logging.info("real statistics: computing for %s", key_json)
        features = np.asarray(compute_fn())
        if features.ndim != 2 or features.shape[0] != key["num_examples"]:
            raise ValueError(
                f"compute_fn returned features of shape {features.shape}, expected "
                f"[num_examples={key['num_examples']}, D]. Set num_examples in the key to the number "
                "of real examples evaluated (fewer may exist in the split), so the cache stays truthful."
            )
        mu, sigma = gaussian_stats(features)
        self._save(path, key_json, mu, sigma, features.shape[0])
        logging.info("real statistics: cached in %s", path)
        return mu, sigma, features.shape[0]


def extract_features(
    feature_fn: Callable[[jax.Array], jax.Array],
    batches: Iterable[Mapping[str, np.ndarray] | np.ndarray],
    *,
    max_examples: int,
    mesh: Mesh | None = None,
    input_key: str = "video",
    log_every_seconds: float = 30.0,
) -> Float[np.ndarray, "n d"]:
    """Features [N, D] of the first max_examples examples of `batches`, in order.

    Args:
      feature_fn: a jitted function [B, ...] -> [B, D], e.g.
        `functools.partial(i3d.features, model=model)`. With a mesh it receives
        the batch sharded over the mesh's batch axes and jit partitions the work.
      batches: arrays [B, ...] or dicts holding them under `input_key` (what
        `videogen.data.pipeline.make_iterator` yields); this process's rows.
      max_examples: stop after this many examples (over all processes).
      mesh: shard every batch with `videogen.sharding.shard_batch`; None runs on
        the default device.
      log_every_seconds: progress (examples done / total, examples/s) interval.

    A short batch (the last one, or one the data-parallel size does not divide)
    is padded with copies of its last row up to the largest batch seen, so jit
    compiles once; padded rows are dropped. Every process must pass the same
    number of rows per batch.
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}.")
    # Rows per process that the batch axes split evenly.
    row_multiple = 1 if mesh is None else max(1, data_parallel_size(mesh) // jax.process_count())
    # Without a mesh, each process computes (and returns) only its own rows.
    processes = 1 if mesh is None else jax.process_count()
    padded_rows = 0
    chunks = []
    done = 0
    start = last_log = time.perf_counter()
    for batch in batches:
        rows = np.asarray(batch[input_key] if isinstance(batch, Mapping) else batch)
        local = rows.shape[0]
        padded_rows = max(padded_rows, math.ceil(local / row_multiple) * row_multiple)
        if local < padded_rows:
            rows = np.concatenate([rows, np.repeat(rows[-1:], padded_rows - local, axis=0)])
        if mesh is None:
            out = np.asarray(feature_fn(jnp.asarray(rows)))
        else:
            out = feature_fn(shard_batch({input_key: rows}, mesh)[input_key])
            # Every process needs all rows for the statistics; tiled keeps global row order.
            out = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        if out.ndim != 2 or out.shape[0] != padded_rows * processes:
            raise ValueError(
                f"feature_fn returned shape {out.shape} for {padded_rows} rows per process; "
                "it must return one feature vector per example, [B, D]."
            )
        # Each process's block ends with its own padding rows.
        out = out.reshape(processes, padded_rows, -1)[:, :local].reshape(-1, out.shape[1])
        take = min(out.shape[0], max_examples - done)
        chunks.append(out[:take])
        done += take
        now = time.perf_counter()
        if done >= max_examples or now - last_log >= log_every_seconds:
            logging.info(
                "features: %d/%d examples, %.2f examples/s",
                done,
                max_examples,
                done / max(now - start, 1e-9),
            )
            last_log = now
        if done >= max_examples:
            break
    if not chunks:
        raise ValueError("batches yielded nothing; check the data source and split.")
    if done < max_examples:
        logging.warning(
            "features: batches ran out after %d of max_examples=%d examples.", done, max_examples
        )
    return np.concatenate(chunks)


def _as_resolution(value: Any) -> tuple[int, ...]:
    return (int(value),) * 2 if np.isscalar(value) else tuple(int(v) for v in value)


def check_compatible(real_meta: Mapping[str, Any], generated_meta: Mapping[str, Any]) -> None:
    """Raises ValueError unless real and generated videos can be compared by FVD/FID.

    Both must state num_frames and resolution (int or (height, width)); the
    fields of MATCH_IF_GIVEN are compared when both state them.
    """
    for name, meta in (("real", real_meta), ("generated", generated_meta)):
        missing = [f for f in MATCH_FIELDS if f not in meta]
        if missing:
            raise ValueError(
                f"{name} metadata lacks {missing}; it has {sorted(meta)}. State the "
                "clip shape of both sets so that mismatches cannot pass unnoticed."
            )
    mismatches = []
    for field in MATCH_FIELDS + MATCH_IF_GIVEN:
        if field not in real_meta or field not in generated_meta:
            continue
        real, generated = real_meta[field], generated_meta[field]
        if field == "resolution":
            real, generated = _as_resolution(real), _as_resolution(generated)
        if real != generated:
            mismatches.append(f"{field}: real {real!r} vs generated {generated!r}")
    if mismatches:
        raise ValueError(
            "real statistics and generated videos differ in " + "; ".join(mismatches) + ". "
            "Generate videos with the real protocol's settings, or compute real statistics for "
            "the generated settings (a new cache key); distances across protocols are meaningless."
        )
