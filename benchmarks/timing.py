"""How the benchmarks time a call: the fastest of several runs, each waited for.

On a shared machine the fastest run is the one least disturbed by other work, so it is
the figure to compare; the runs before it (``warmup``) compile and fill caches.
"""

from __future__ import annotations

import time

import jax


def best_of(fn, *args, repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Seconds of the fastest of ``repeats`` runs of ``fn(*args)`` after ``warmup`` untimed
    ones, each waited for with `jax.block_until_ready`, and the last run's output."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got {repeats}, {warmup}.")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, out


def best_seconds(fn, *args, repeats: int, warmup: int = 1) -> float:
    """`best_of`'s seconds."""
    return best_of(fn, *args, repeats=repeats, warmup=warmup)[0]
