"""bench.runtime: the allocator setting the trainer and evaluator apply."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from bench.runtime import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates a 16 MiB block with glibc's malloc and prints how many bytes glibc's own count of
# mmapped memory (mallinfo2().hblkhd, glibc >= 2.33) grew by, with or without the setting.
_PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "1":
    from bench.runtime import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
libc.malloc(16 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def test_keep_freed_memory_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("BENCH_MALLOC_TUNING", "0")
    assert keep_freed_memory.__wrapped__() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """glibc's default: a 16 MiB block is above the 128 KiB mmap threshold (mallopt(3)), so it
    gets its own mapping; with the setting it comes from the heap, and freeing it keeps it there."""
    def mmapped(flag: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PROBE, flag], check=True,
                             capture_output=True, text=True)
        return int(out.stdout.strip())

    assert mmapped("0") >= 16 << 20
    assert mmapped("1") == 0
