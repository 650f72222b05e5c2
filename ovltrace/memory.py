"""Keeping a long-running view's memory to what it holds.

bcc compiles in-process with clang/LLVM.  After the compile, libLLVM's
and libclang's pages stay mapped and resident (about 90 MiB of
file-backed RSS with Debian 12's LLVM 14) though nothing runs them again
(loading, attaching, reading maps and ring buffers is libbcc alone), and
glibc keeps the compiler's freed heap.  release_compiler() unmaps the
pages of those libraries that are still exactly the file's (no private
copy in them: smaps "Anonymous: 0 kB"), with MADV_DONTNEED: the pages stay
in the page cache, the process no longer maps them, and one is faulted
back in from the cache if ever used again (no I/O, no reclaim: unlike
MADV_PAGEOUT, which also evicts them).  trim() gives glibc's free heap
back (malloc_trim); the session calls it now and then, since a scrape of
a thousand containers allocates and frees tens of MiB at a time.
Both are optimisations: any failure is ignored.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

MADV_DONTNEED = 4
COMPILER_LIBS = ("/libLLVM", "/libclang")


@functools.cache
def _libc():
    # once: find_library runs ldconfig in a subprocess, and trim() runs every 10 s
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def trim() -> None:
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def clean_compiler_mappings(smaps: str = "/proc/self/smaps") -> list[tuple[int, int]]:
    """(start, end) of the compiler libraries' mappings that are not
    writable and hold no private (anonymous) page: dropping those loses
    nothing.  RELRO segments (relocated, then made read-only) hold private
    pages and are left alone."""
    out: list[tuple[int, int]] = []
    cur = None
    with open(smaps) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and not parts[0].endswith(":"):
                cur = None
                if len(parts) >= 6 and "w" not in parts[1] and any(l in parts[5] for l in COMPILER_LIBS):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    cur = (start, end)
            elif parts[0] == "Anonymous:" and cur is not None:
                if int(parts[1]) == 0:
                    out.append(cur)
                cur = None
    return out


def release_compiler() -> None:
    """After the BPF programs are loaded: what only the compile needed."""
    try:
        libc = _libc()
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start, end in clean_compiler_mappings():
            libc.madvise(start, end - start, MADV_DONTNEED)
    except (OSError, AttributeError, ValueError):
        pass
    trim()
