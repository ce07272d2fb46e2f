"""`videogen.allocator`: glibc keeps freed memory, so a repeated large allocation stops
page-faulting (what a train step's temporaries do)."""

import platform

import pytest

from videogen import allocator
from python_child import run_python

# A child process: a 64 MB block (glibc would mmap it) allocated, touched and freed five times;
# prints the minor page faults of the last three rounds.
_ROUNDS = r"""
import ctypes, resource
from videogen import allocator
print("set", allocator.retain_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", sum(faults[2:]))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _faults(**env) -> tuple[str, int]:
    out = run_python(_ROUNDS, **env).stdout.split()
    return out[1], int(out[3])


@glibc
def test_freed_memory_is_reused_without_page_faults():
    assert _faults() == ("True", 0)
    # The same settings as environment variables (what a process that cannot call it gets).
    assert _faults(**allocator.ENVIRONMENT, **{allocator.DISABLE_VARIABLE: "0"}) == ("False", 0)
    # glibc's default unmaps the block on free: each round faults all 16,384 pages again.
    state, faults = _faults(**{allocator.DISABLE_VARIABLE: "0"})
    assert state == "False" and faults >= 3 * (64 << 20) // 4096
