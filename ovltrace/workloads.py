"""Container-like workloads for a Sandbox: each is one real background process.

Every workload runs `python -c CODE` with its cwd inside the overlay's merged
dir, inside the container's cgroup2 dir if Sandbox.in_cgroup(name) made one,
as leader of its own session, with a parent-death signal (so it dies with
the process that started it, even without close()). Its comm is set to a
short workload name ("small-writer", ...), which is what BPF sees.

Note: the parent-death signal fires when the *thread* that started the
workload exits; start workloads from a long-lived thread.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys

from ovltrace.sandbox import Sandbox, SandboxOverlay

_PR_SET_PDEATHSIG = 1
_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def syncfs(path: str) -> int:
    """syncfs(2) on a fresh fd of path: 0 or -errno (e.g. -5 for EIO)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc().syncfs(fd) == 0:
            return 0
        return -ctypes.get_errno()
    finally:
        os.close(fd)


# Shared by all child programs: arguments, deadline, comm name.
_PRELUDE = r"""
import ctypes, json, os, sys, time
A = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, A["comm"].encode()[:15], 0, 0, 0)     # PR_SET_NAME
_deadline = None if A.get("duration") is None else time.monotonic() + A["duration"]
def alive():
    return _deadline is None or time.monotonic() < _deadline
def idle():
    while alive():
        time.sleep(0.2)
"""

_SMALL_WRITER = r"""
os.makedirs("app-state", exist_ok=True)
data = os.urandom(A["size"])
i = 0
while alive():
    # open("wb") truncates: a rewrite, like an app saving state or rotating logs
    with open("app-state/f%04d.dat" % (i % A["files"]), "wb") as f:
        f.write(data)
    i += 1
    time.sleep(A["interval"])
"""

_BULK_WRITER = r"""
chunk = os.urandom(A["chunk_kb"] * 1024)
left = A["total_mb"] * 1048576
with open("bulk.dat", "wb") as f:
    while left > 0 and alive():
        n = min(left, len(chunk))
        f.write(chunk[:n])
        left -= n
idle()
"""

_SYNCFS_NEIGHBOUR = r"""
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)   # one fd: sees each new wb error once
i = 0
while alive():
    with open("neighbour-tick", "w") as f:
        f.write(str(i))
    libc.syncfs(fd)                                  # flushes the whole upper fs
    i += 1
    time.sleep(A["interval"])
"""

_COPY_UP = r"""
# Opening a lower file for writing copies the whole file up first.
with open(A["relpath"], "ab") as f:
    f.write(b"appended by copy_up\n")
"""

_ERROR_WRITER = r"""
chunk = os.urandom(1048576)
with open("lost.dat", "wb") as f:
    for _ in range(A["total_mb"]):
        f.write(chunk)
# no fsync: writeback fails later, and nobody tells this process
"""


def _spawn(sb: Sandbox, ov: SandboxOverlay, comm: str, code: str, **args: object) -> subprocess.Popen:
    if sb.overlays.get(ov.name) is not ov:
        raise ValueError(f"overlay {ov.name!r} is not mounted in this sandbox")
    cg = sb.cgroups.get(ov.name)
    libc = _libc()     # loaded here: the child only calls it

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if cg:
            # Join before exec, so the cgroup sees every byte it writes.
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    args["comm"] = comm
    proc = subprocess.Popen([sys.executable, "-c", _PRELUDE + code, json.dumps(args)],
                            cwd=ov.mountpoint, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=in_child)
    sb.track(proc, ov.name)
    return proc


def small_writer(sb: Sandbox, ov: SandboxOverlay, files: int = 50, size: int = 4096,
                 interval: float = 0.05, duration: float | None = None) -> subprocess.Popen:
    """Rewrite `files` small files round-robin, one every `interval` s, no fsync."""
    return _spawn(sb, ov, "small-writer", _SMALL_WRITER, files=files, size=size,
                  interval=interval, duration=duration)


def bulk_writer(sb: Sandbox, ov: SandboxOverlay, total_mb: int = 64, chunk_kb: int = 1024,
                duration: float | None = None) -> subprocess.Popen:
    """Write one total_mb file (bulk.dat) without fsync, then idle."""
    return _spawn(sb, ov, "bulk-writer", _BULK_WRITER, total_mb=total_mb, chunk_kb=chunk_kb,
                  duration=duration)


def syncfs_neighbour(sb: Sandbox, ov: SandboxOverlay, interval: float = 0.5,
                     duration: float | None = None) -> subprocess.Popen:
    """The noisy neighbour: a tiny write, then syncfs(2) of its overlay, in a loop."""
    return _spawn(sb, ov, "syncfs-nbr", _SYNCFS_NEIGHBOUR, interval=interval, duration=duration)


def copy_up(sb: Sandbox, ov: SandboxOverlay, relpath: str) -> subprocess.Popen:
    """Append to a lower file (relative to the lower dir): forces a full copy-up; exits."""
    return _spawn(sb, ov, "copy-up", _COPY_UP, relpath=relpath)


def error_writer(sb: Sandbox, ov: SandboxOverlay, total_mb: int = 100) -> subprocess.Popen:
    """Write total_mb to lost.dat without fsync, then exit.

    With Sandbox(backing_tmpfs_mb=...) smaller than that, writeback fails with
    EIO; the error lands on the upper fs, where other containers' syncfs sees it.
    """
    return _spawn(sb, ov, "error-writer", _ERROR_WRITER, total_mb=total_mb)
