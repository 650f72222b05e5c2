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
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ovltrace.sandbox import Sandbox, SandboxOverlay, syncfs_path

_PR_SET_PDEATHSIG = 1
_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def syncfs(path: str) -> int:
    """syncfs(2) on a fresh fd of path: 0 or -errno (e.g. -5 for EIO)."""
    return syncfs_path(path)


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
    try:
        with open("app-state/f%04d.dat" % (i % A["files"]), "wb") as f:
            f.write(data)
    except OSError:
        pass                 # the shared fs is full or failing: an app would retry
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
    if A["tick"]:
        try:
            with open("neighbour-tick", "w") as f:
                f.write(str(i))
        except OSError:
            pass                                     # a full or failing fs: keep flushing
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
chunk = os.urandom(A["chunk_kb"] * 1024)
step = len(chunk) + A["hole_kb"] * 1024       # a hole after each chunk: one extent per chunk
fd = os.open(bytes.fromhex(A["filename"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
left, off = A["total_mb"] * 1048576, 0
while left > 0:
    view = memoryview(chunk)[:min(left, len(chunk))]
    left -= len(view)
    pos = off
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n
    off += step
# no fsync: writeback fails later, and nobody tells this process
if A["hold_fd"]:
    # Keep lost.dat open; on request run syncfs/fsync on this very fd.
    print("written", flush=True)
    for line in sys.stdin:
        op = line.strip()
        if op == "syncfs":
            r = libc.syncfs(fd)
        elif op == "fsync":
            r = libc.fsync(fd)
        else:
            print("bad-op", flush=True)
            continue
        print(0 if r == 0 else -ctypes.get_errno(), flush=True)
os.close(fd)
"""


def _spawn(sb: Sandbox, ov: SandboxOverlay, comm: str, code: str, pipes: bool = False,
           **args: object) -> subprocess.Popen:
    if sb.overlays.get(ov.name) is not ov:
        raise ValueError(f"overlay {ov.name!r} is not mounted in this sandbox")
    cgs = ([sb.cgroups[ov.name]] if ov.name in sb.cgroups else []) + sb.cgroups_v1.get(ov.name, [])
    libc = _libc()     # loaded here: the child only calls it

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for cg in cgs:
            # Join before exec, so the cgroup sees every byte it writes.
            try:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass           # a v1 controller we may not join: accounting says so

    args["comm"] = comm
    proc = subprocess.Popen([sys.executable, "-c", _PRELUDE + code, json.dumps(args)],
                            cwd=ov.mountpoint,
                            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
                            text=pipes, bufsize=1 if pipes else -1, start_new_session=True,
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
                     duration: float | None = None, tick: bool = True) -> subprocess.Popen:
    """The noisy neighbour: a tiny write (tick=False: none), then syncfs(2)
    of its overlay, in a loop."""
    return _spawn(sb, ov, "syncfs-nbr", _SYNCFS_NEIGHBOUR, interval=interval, duration=duration,
                  tick=tick)


def copy_up(sb: Sandbox, ov: SandboxOverlay, relpath: str) -> subprocess.Popen:
    """Append to a lower file (relative to the lower dir): forces a full copy-up; exits."""
    return _spawn(sb, ov, "copy-up", _COPY_UP, relpath=relpath)


def error_writer(sb: Sandbox, ov: SandboxOverlay, total_mb: int = 100, chunk_kb: int = 1024,
                 hole_kb: int = 0, hold_fd: bool = False,
                 filename: bytes = b"lost.dat") -> subprocess.Popen:
    """Write total_mb of data to lost.dat without fsync, in chunk_kb pwrites
    with a hole of hole_kb after each chunk.

    With Sandbox(backing_tmpfs_mb=...) smaller than that, writeback fails; the
    error lands on the upper fs, where other containers' syncfs may see it.
    Deterministically so with Sandbox(errors="leak") + exhaust_backing() and
    hole_kb > 0 (every hole starts a new extent, so the file needs extent-tree
    blocks, i.e. new metadata that fails too): see error_leak_scenario().

    hold_fd=False: exit when written. hold_fd=True: print "written", keep
    lost.dat open and serve held_fd_call(proc, "syncfs" | "fsync") requests
    until stdin closes (wait_written() waits for the first line).
    """
    return _spawn(sb, ov, "error-writer", _ERROR_WRITER, pipes=hold_fd, total_mb=total_mb,
                  chunk_kb=chunk_kb, hole_kb=hole_kb, hold_fd=hold_fd, filename=filename.hex())


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    if proc.stdout is None:
        raise ValueError("not a hold_fd=True error_writer")
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else None
    if not line:
        what = "no answer" if line is None else f"EOF (exit {proc.poll()})"
        raise RuntimeError(f"error-writer pid {proc.pid}: {what} within {timeout}s")
    return line.strip()


def wait_written(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until a hold_fd=True error_writer has written all its data."""
    line = _read_line(proc, timeout)
    if line != "written":
        raise RuntimeError(f"error-writer pid {proc.pid}: unexpected {line!r}")


def held_fd_call(proc: subprocess.Popen, op: str, timeout: float = 30) -> int:
    """Have a hold_fd=True error_writer run op ("syncfs" or "fsync") on the fd
    it wrote lost.dat through; returns 0 or -errno."""
    if op not in ("syncfs", "fsync"):
        raise ValueError(f"op must be 'syncfs' or 'fsync', not {op!r}")
    assert proc.stdin is not None
    proc.stdin.write(op + "\n")
    proc.stdin.flush()
    return int(_read_line(proc, timeout))


@dataclass
class LeakResult:
    """What each party saw in error_leak_scenario(), in call order.

    Return values are 0 or -errno.
    """
    upper_dev: str              # "major:minor" of the shared upper fs
    b_ino: int                  # upper-fs inode number of B's lost.dat
    backing_filled: int         # bytes the filler took from the backing tmpfs
    a_syncfs: int               # A: syncfs on a fresh fd of its overlay (A wrote nothing)
    b_syncfs_write_fd: int      # B: syncfs through the fd it wrote lost.dat with
    b_syncfs_fresh_fd: int      # B: syncfs on a fresh fd of its overlay
    b_fsync: int                # B: fsync of lost.dat (same fd): the only call that tells B
    upper_syncfs: int           # host: syncfs on a fresh fd of the upper fs itself
    seconds: float              # wall time of the whole scenario, setup and teardown included


def error_leak_scenario(sb_factory: Callable[[], Sandbox] | None = None, total_mb: int = 8,
                        before_writes: Callable[[Sandbox, SandboxOverlay, SandboxOverlay], None]
                        | None = None,
                        before_fsync: Callable[[], None] | None = None,
                        filename: bytes = b"lost.dat") -> LeakResult:
    """Deterministic "error leak": B loses data, A's syncfs gets the error.

    Recipe: overlays A and B on one upper fs (default Sandbox(errors="leak"):
    no-journal ext4 with 4 KiB blocks on a loop device whose image lives on
    a small tmpfs); sync, then fill that tmpfs to the last page. B writes
    total_mb in 64 KiB chunks with 4 KiB holes between them (one extent per
    chunk, so lost.dat needs extent-tree blocks), no fsync, and keeps the fd.
    Every new block of B's -- data and the extent-tree block -- lies in a
    never-written part of the sparse image, so its writeback fails: the data
    pages set wb errors on B's inode (filemap_set_wb_err, -ENOSPC/-EIO), the
    extent-tree block ("lost async page write") sets AS_EIO on the bdev.
    Then A calls syncfs() on its overlay: ovl_sync_fs -> sync_filesystem
    (upper) -> sync_blockdev() returns that -EIO once, so A gets -EIO.
    B then calls syncfs() (through its write fd, then a fresh fd): 0, since
    the bdev error was consumed and overlayfs never looks at the upper fs's
    s_wb_err. Only B's fsync reports the loss.

    before_writes(sb, a, b) runs after setup, right before B writes (e.g. to
    start a tracer); before_fsync() runs after the syncfs calls, right
    before B's fsync (e.g. to end a trace while B still knows nothing).
    filename: what B's file is called (any bytes: the hostile-name test).
    The sandbox is closed on return.
    """
    t0 = time.monotonic()
    sb = sb_factory() if sb_factory else Sandbox(errors="leak")
    with sb:
        a, b = sb.add_overlay("A"), sb.add_overlay("B")
        filled = sb.exhaust_backing()
        if before_writes:
            before_writes(sb, a, b)
        proc = error_writer(sb, b, total_mb=total_mb, chunk_kb=64, hole_kb=4, hold_fd=True,
                            filename=filename)
        try:
            wait_written(proc)
            b_ino = os.stat(os.path.join(os.fsencode(b.upperdir), filename)).st_ino
            a_rc = syncfs(a.mountpoint)
            b_fd_rc = held_fd_call(proc, "syncfs")
            b_fresh_rc = syncfs(b.mountpoint)
            if before_fsync:
                before_fsync()
            b_fsync_rc = held_fd_call(proc, "fsync")
            upper_rc = syncfs(sb.upper_fs)
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass                                   # close() kills it
            if proc.stdout:
                proc.stdout.close()
        upper_dev = sb.upper_dev
    return LeakResult(upper_dev=upper_dev, b_ino=b_ino, backing_filled=filled, a_syncfs=a_rc,
                      b_syncfs_write_fd=b_fd_rc, b_syncfs_fresh_fd=b_fresh_rc, b_fsync=b_fsync_rc,
                      upper_syncfs=upper_rc, seconds=time.monotonic() - t0)


# ---- instant containers: mount, write, unmount, no pause ----------------------

_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432   # x86_64
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_MOVE_MOUNT_F_EMPTY_PATH, _AT_FDCWD = 4, -100


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def mount_overlay(lower: str, upper: str, work: str, target: str, new_api: bool = False) -> None:
    """Mount an overlay straight from this process: mount(2), or the new
    API (fsopen/fsconfig/fsmount/move_mount), as runtimes do."""
    libc = _libc()
    if not new_api:
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
        _check(libc.mount(b"overlay", target.encode(), b"overlay", 0, opts), "mount")
        return
    sc = libc.syscall
    fd = _check(sc(_SYS_FSOPEN, b"overlay", 0), "fsopen")
    try:
        for k, v in (("lowerdir", lower), ("upperdir", upper), ("workdir", work)):
            _check(sc(_SYS_FSCONFIG, fd, _FSCONFIG_SET_STRING, k.encode(), v.encode(), 0), "fsconfig")
        _check(sc(_SYS_FSCONFIG, fd, _FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig create")
        mfd = _check(sc(_SYS_FSMOUNT, fd, 0, 0), "fsmount")
        try:
            _check(sc(_SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, target.encode(),
                      _MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def unmount(target: str, tries: int = 50) -> None:
    """umount(2), retried on EBUSY as containerd's unmount does (50 times):
    any concurrent path lookup through the mount (a tracer stat'ing it, a
    `ls`) holds a reference for a moment, and a plain umount then fails."""
    for _ in range(tries - 1):
        if _libc().umount2(target.encode(), 0) == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise OSError(err, f"umount: {os.strerror(err)}")
        time.sleep(0.02)
    _check(_libc().umount2(target.encode(), 0), "umount")


def instant_container(sb: Sandbox, name: str, size: int, new_api: bool = False,
                      between: Callable[[], object] | None = None) -> SandboxOverlay:
    """An overlay that lives for milliseconds: mounted, `size` bytes
    written into one new file, unmounted (which syncs the upper fs), with
    no pause anywhere (`between` runs after the write, before the unmount).
    Its directories stay, like a stopped container's."""
    ov = sb.prepare_overlay(name)
    mount_overlay(ov.lowerdir, ov.upperdir, ov.workdir, ov.mountpoint, new_api)
    try:
        fd = os.open(os.path.join(ov.mountpoint, "data"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"i" * size)
        finally:
            os.close(fd)
        if between is not None:
            between()
    finally:
        unmount(ov.mountpoint)
    return ov
