"""Keeping freed host memory for reuse (glibc), so that a train step does not page-fault.

XLA:CPU allocates each step's temporaries afresh (792 MB for the 17x64x64 tokenizer step
of benchmarks/tokenizer_vs_peer.py). glibc serves blocks that large with `mmap` and returns
them with `munmap`, so every step faults in some 200,000 fresh pages: 0.5-1.6 s of system
time in a 3 s step, and most of its run-to-run spread (BUILD_NOTES.md, issue 19). With one
malloc arena, no `mmap` for large blocks and no trimming, freed blocks stay in the heap and
the next step reuses them: after a few steps the step runs with no page faults at all.

The price: the process keeps its high-water mark of heap memory instead of returning it to
the system between steps, which a training process reaches anyway. Entry points call
`retain_freed_memory` first thing, before any thread allocates (an arena, once made, stays).
`VIDEOGEN_RETAIN_MEMORY=0` leaves glibc's defaults; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

DISABLE_VARIABLE = "VIDEOGEN_RETAIN_MEMORY"
# mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER = -1  # as M_TRIM_THRESHOLD: never give the heap's top back to the system
# The same settings as glibc reads them from the environment when a process starts, for a
# process that cannot call `retain_freed_memory` (benchmarks/tokenizer_vs_peer.py's peer).
# Its trim threshold is a size, not a flag: "never" is a size no heap reaches.
ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**62),
}


def retain_freed_memory() -> bool:
    """Sets glibc's malloc to keep and reuse freed memory; returns whether it did."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER))
    done = all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
    if not done:
        logging.warning("glibc's mallopt refused a setting; freed memory may still be unmapped.")
    return done
