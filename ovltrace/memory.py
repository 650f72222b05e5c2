"""Give back what only the BPF compile needed.

bcc compiles in-process with clang/LLVM.  Afterwards libLLVM's and
libclang's code stays resident (about 85 MiB of file-backed RSS on
Debian 12's LLVM 14) and glibc keeps the compiler's freed heap (about
25 MiB), though neither is used again: loading and attaching the
compiled programs, reading maps and ring buffers is libbcc alone.  The
heap goes back to the kernel with malloc_trim(0), the library pages with
madvise(MADV_PAGEOUT) (Linux 5.4+; a page faults back in if ever used
again, so this can cost time, never correctness).
"""
from __future__ import annotations

import ctypes
import ctypes.util

MADV_PAGEOUT = 21
COMPILER_LIBS = ("/libLLVM", "/libclang")


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def release_compile_memory() -> None:
    try:
        libc = _libc()
        libc.malloc_trim(0)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                # read-only (code, constants) mappings only: written private
                # pages are anonymous and would need swap
                if len(parts) < 6 or "w" in parts[1] or not any(l in parts[5] for l in COMPILER_LIBS):
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                libc.madvise(start, end - start, MADV_PAGEOUT)   # EINVAL before 5.4: no harm
    except (OSError, AttributeError, ValueError):
        pass                      # an optimisation: never a reason to fail
