"""Real "sandbox containers": overlay mounts sharing one loop-backed upper fs.

Used by the demo and the live tests. Everything a Sandbox creates (tmpfs,
image file, loop device, mounts, cgroups, workload processes, directories)
is undone by close(), which also runs from __exit__ (errors, Ctrl-C) and,
as a safety net, at interpreter exit.

Layout under root:
    backing/            tmpfs holding the image (only with backing_tmpfs_mb)
        filler          fills that tmpfs to the last page (exhaust_backing())
    upper.img           sparse image (or backing/upper.img)
    upper-fs/           the mounted upper filesystem (shared by all overlays)
        <name>/diff     an overlay's upperdir
        <name>/work     an overlay's workdir
    lower/              shared lower dir, on the host fs
    <name>/merged       an overlay's mountpoint
"""
from __future__ import annotations

import atexit
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .containers import cgroup2_root
from .mounts import parse_mountinfo

MiB = 1024 * 1024
_RESERVED = {"backing", "upper.img", "upper-fs", "lower"}
_CGROUP_PARENT = "ovltrace-sandbox"


@dataclass
class SandboxOverlay:
    name: str
    mountpoint: str
    upperdir: str
    workdir: str
    lowerdir: str
    volatile: bool


def _log(msg: str) -> None:
    print(f"ovltrace.sandbox: {msg}", file=sys.stderr)


def _run(cmd: list[str], timeout: float = 60) -> str:
    """Run a command; raise RuntimeError carrying its stderr on failure."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def mountinfo() -> list[tuple[str, str, str]]:
    """(major:minor, mountpoint, fstype) for each line of /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        return [(m.dev, m.mountpoint, m.fstype) for m in parse_mountinfo(f.read())]


def mounts_under(path: str) -> list[str]:
    """Mountpoints at or below path (deepest first, so they can be unmounted in order)."""
    path = os.path.realpath(path)
    found = [mp for _, mp, _ in mountinfo() if mp == path or mp.startswith(path + "/")]
    return sorted(found, key=len, reverse=True)


def syncfs_path(path: str) -> int:
    """syncfs(2) on a fresh fd of path: 0 or -errno (e.g. -5 for EIO)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) == 0:
            return 0
        return -ctypes.get_errno()
    finally:
        os.close(fd)


class Sandbox:
    """A loop-backed upper filesystem plus overlay "containers" on top of it."""

    def __init__(self, root: str | None = None, fstype: str = "ext4", size_mb: int | None = None,
                 backing_tmpfs_mb: int | None = None, errors: str | None = None) -> None:
        """size_mb: image size (default 512, or 64 with errors="leak").

        errors="leak": an upper fs built to make writeback errors deterministic
        (see error_leak_scenario() in workloads): ext4 without a journal, 4 KiB
        blocks (one block = one page of the backing tmpfs), mounted
        errors=continue, image on a backing tmpfs (default 32 MiB). Call
        exhaust_backing() once the overlays exist: from then on every block
        of the upper fs that was never written before fails at writeback.
        """
        if fstype not in ("ext4", "xfs"):
            raise ValueError(f"unsupported fstype {fstype!r} (ext4 or xfs)")
        if errors not in (None, "leak"):
            raise ValueError(f"unsupported errors mode {errors!r} (None or 'leak')")
        if errors == "leak":
            if fstype != "ext4":
                raise ValueError("errors='leak' needs fstype='ext4'")
            if backing_tmpfs_mb is None:
                backing_tmpfs_mb = 32
        if size_mb is None:
            size_mb = 64 if errors == "leak" else 512
        self.errors = errors
        self.backing_exhausted = False
        self.fstype = fstype
        self.size_mb = size_mb
        self.backing_tmpfs_mb = backing_tmpfs_mb
        self.overlays: dict[str, SandboxOverlay] = {}
        self.cgroups: dict[str, str] = {}          # name -> cgroup2 dir
        self.cgroups_v1: dict[str, list[str]] = {}  # name -> v1 memory/blkio dirs (hybrid hosts)
        self.loop_dev: str | None = None
        self.upper_dev = ""
        self._procs: list[tuple[subprocess.Popen, str]] = []   # (process, overlay name)
        self._cg_dir: str | None = None
        self._closed = False
        self._old_sigterm = None
        self._created_root = root is None or not os.path.exists(root)
        if root is None:
            root = tempfile.mkdtemp(dir="/run", prefix="ovltrace-sandbox-")
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self.backing = os.path.join(self.root, "backing")
        self.upper_fs = os.path.join(self.root, "upper-fs")
        self.lower = os.path.join(self.root, "lower")
        img_dir = self.backing if backing_tmpfs_mb else self.root
        self.image = os.path.join(img_dir, "upper.img")
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        if self.backing_tmpfs_mb:
            # The image is bigger than this tmpfs: writes past its size fail
            # only when the loop device writes them back (EIO, "lost async page write").
            os.mkdir(self.backing)
            _run(["mount", "-t", "tmpfs", "-o", f"size={self.backing_tmpfs_mb}m,mode=0700",
                  "ovltrace-backing", self.backing])
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb * MiB)        # sparse
        self.loop_dev = self._attach_loop()
        if self.errors == "leak":
            # No journal: metadata goes straight from the bdev page cache to
            # its final block (no jbd2 checkpoint that could abort the fs).
            # 4 KiB blocks: a block never shares a tmpfs page with another,
            # so "never written" means "no page in the tmpfs yet".
            _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096",
                  "-E", "lazy_itable_init=0", self.loop_dev], timeout=120)
        elif self.fstype == "ext4":
            # No lazy init: all metadata is written now, so on a small backing
            # tmpfs only file data (not metadata) can hit the full tmpfs later.
            _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                  self.loop_dev], timeout=120)
        else:
            _run(["mkfs.xfs", "-q", "-f", self.loop_dev], timeout=120)
        os.mkdir(self.upper_fs)
        mount = ["mount", "-t", self.fstype]
        if self.errors == "leak":
            mount += ["-o", "errors=continue"]     # metadata errors must not remount ro
        _run(mount + [self.loop_dev, self.upper_fs])
        self.upper_dev = self._dev_of(self.upper_fs)
        os.mkdir(self.lower)

    def _attach_loop(self) -> str:
        # Other sandboxes may grab the same free loop device concurrently: retry.
        for attempt in range(5):
            try:
                return _run(["losetup", "--find", "--show", self.image]).strip()
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    @staticmethod
    def _dev_of(mountpoint: str) -> str:
        devs = [dev for dev, mp, _ in mountinfo() if mp == mountpoint]
        if not devs:
            raise RuntimeError(f"{mountpoint} not found in /proc/self/mountinfo")
        return devs[-1]                           # last = topmost mount

    # ---- context manager -------------------------------------------------
    def __enter__(self) -> "Sandbox":
        # SIGTERM would kill us without cleanup: turn it into SystemExit so
        # __exit__ runs (only if nobody else handles SIGTERM).
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)

    # ---- content ---------------------------------------------------------
    def make_lower_file(self, relpath: str, size: int) -> str:
        """Create <lower>/relpath with size bytes of random-ish data, fsynced.

        Best called before add_overlay(): overlayfs does not expect its lower
        layers to change while mounted.
        """
        path = os.path.join(self.lower, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        block = os.urandom(min(size, MiB))
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())
        return path

    def exhaust_backing(self) -> int:
        """Fill the backing tmpfs completely; returns the bytes the filler took.

        First syncs the upper fs (so the overlays' dirs made so far are on
        "disk"; raises if that sync reports an error). Afterwards every write
        of the loop device to a page of the image that was never written
        before fails (ENOSPC in the loop driver): new file data fails, and so
        does new *metadata* (extent-tree blocks, new directory blocks), which
        ext4 writes through the bdev page cache; that sets AS_EIO on the
        bdev mapping, which the next sync_blockdev() of the upper fs -- the
        next syncfs() of any overlay on it -- returns once, as -EIO.
        Blocks written before (inode tables, bitmaps, superblock, existing
        dirs) still succeed. Add all overlays before calling this.
        """
        if not self.backing_tmpfs_mb:
            raise RuntimeError("exhaust_backing() needs Sandbox(backing_tmpfs_mb=...)")
        rc = syncfs_path(self.upper_fs)
        if rc != 0:
            raise RuntimeError(f"syncfs({self.upper_fs}) = {rc} before exhausting the backing tmpfs")
        filled = 0
        path = os.path.join(self.backing, "filler")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (MiB, 4096):               # big steps, then the last pages
                block = b"\xa5" * size
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    filled += n
                    if n < size:                  # short write: the tmpfs just filled up
                        break
        finally:
            os.close(fd)
        st = os.statvfs(self.backing)
        if st.f_bavail != 0:
            raise RuntimeError(f"backing tmpfs not full after filling: {st.f_bavail} blocks free")
        self.backing_exhausted = True
        return filled

    def prepare_overlay(self, name: str, volatile: bool = False) -> SandboxOverlay:
        """An overlay's upper, work and mount directories, made; not mounted."""
        if not name or "/" in name or name.startswith(".") or name in _RESERVED:
            raise ValueError(f"bad overlay name {name!r}")
        if name in self.overlays:
            raise ValueError(f"overlay {name!r} exists")
        base = os.path.join(self.upper_fs, name)
        ov = SandboxOverlay(name=name, mountpoint=os.path.join(self.root, name, "merged"),
                            upperdir=os.path.join(base, "diff"), workdir=os.path.join(base, "work"),
                            lowerdir=self.lower, volatile=volatile)
        for d in (ov.upperdir, ov.workdir, ov.mountpoint):
            os.makedirs(d, exist_ok=True)
        return ov

    def add_overlay(self, name: str, volatile: bool = False, metacopy: bool = False,
                    index: bool = False) -> SandboxOverlay:
        ov = self.prepare_overlay(name, volatile)
        opts = [f"lowerdir={ov.lowerdir}", f"upperdir={ov.upperdir}", f"workdir={ov.workdir}",
                # explicit, so kernel config defaults don't change behaviour
                f"metacopy={'on' if metacopy else 'off'}", f"index={'on' if index else 'off'}"]
        if volatile:
            opts.append("volatile")
        _run(["mount", "-t", "overlay", "overlay", "-o", ",".join(opts), ov.mountpoint])
        self.overlays[name] = ov
        return ov

    def remove_overlay(self, name: str) -> None:
        """Stop the overlay's workloads and unmount it (syncs the whole upper fs).

        Its upper/work dirs stay, like a stopped container's.
        """
        ov = self.overlays[name]
        self._kill([p for p, n in self._procs if n == name])
        _run(["umount", ov.mountpoint], timeout=300)
        del self.overlays[name]

    # ---- cgroups and processes ------------------------------------------
    def in_cgroup(self, name: str) -> str | None:
        """Create (once) a cgroup2 dir for container `name`; None without cgroup2.

        Path: <cgroup2>/ovltrace-sandbox/<sandbox-id>/<name>; the per-sandbox
        level keeps concurrent sandboxes with equal names apart, the leaf is
        the container name.
        """
        if name in self.cgroups:
            return self.cgroups[name]
        cg_root = cgroup2_root()
        if cg_root is None:
            return None
        if self._cg_dir is None:
            self._cg_dir = os.path.join(cg_root, _CGROUP_PARENT, os.path.basename(self.root))
            os.makedirs(self._cg_dir, exist_ok=True)
        path = os.path.join(self._cg_dir, name)
        os.makedirs(path, exist_ok=True)
        self.cgroups[name] = path
        # On hybrid hosts the memory and io controllers live in cgroup v1:
        # a v1 cgroup of its own per container there too, so the kernel's
        # per-cgroup dirty/writeback accounting can be compared.
        for ctrl in ("memory", "blkio"):
            v1 = f"/sys/fs/cgroup/{ctrl}"
            if os.path.isfile(os.path.join(v1, "cgroup.procs")) and not _is_cgroup2(v1):
                leaf = os.path.join(v1, _CGROUP_PARENT, os.path.basename(self.root), name)
                try:
                    os.makedirs(leaf, exist_ok=True)
                    self.cgroups_v1.setdefault(name, []).append(leaf)
                except OSError:
                    pass
        return path

    def track(self, proc: subprocess.Popen, overlay_name: str) -> None:
        """Register a workload process so remove_overlay()/close() kill it."""
        self._procs.append((proc, overlay_name))

    def _kill(self, procs: list[subprocess.Popen]) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)   # workloads lead their own session
                except ProcessLookupError:
                    pass
                except OSError:
                    p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _log(f"pid {p.pid} did not die")
        self._procs = [(p, n) for p, n in self._procs if p not in procs]

    # ---- teardown --------------------------------------------------------
    def close(self) -> None:
        """Undo everything; idempotent, never raises (problems go to stderr)."""
        if self._closed:
            return
        self._closed = True
        main = threading.current_thread() is threading.main_thread()
        # A second Ctrl-C must not leave mounts behind: defer it until we're done.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) \
            if main else None
        try:
            self._teardown()
        finally:
            atexit.unregister(self.close)
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _step(self, what: str, fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:  # noqa: BLE001 - close() must go on
            _log(f"cleanup: {what}: {e}")
            return False

    def _umount(self, path: str) -> None:
        """umount with retries (EBUSY from dying processes), lazy as last resort."""
        for attempt in range(5):
            r = subprocess.run(["umount", path], capture_output=True, text=True, timeout=300)
            if r.returncode == 0 or not os.path.ismount(path):
                return
            time.sleep(0.1 * (attempt + 1))
        _log(f"cleanup: umount {path} busy ({r.stderr.strip()}); lazy unmount")
        _run(["umount", "-l", path])

    def _teardown(self) -> None:
        self._step("kill workloads", self._kill, [p for p, _ in self._procs])
        for name in reversed(list(self.overlays)):
            if self._step(f"umount overlay {name}", self._umount, self.overlays[name].mountpoint):
                del self.overlays[name]
        # what was mounted here untracked (an instant container whose
        # workload died between its mount and its unmount), deepest first
        keep = {os.path.realpath(p) for p in (self.root, self.upper_fs, self.backing)}
        for path in mounts_under(self.root):
            if path not in keep:
                self._step(f"umount {path}", self._umount, path)
        v1 = [p for paths in self.cgroups_v1.values() for p in paths]
        v1_parents = sorted({os.path.dirname(p) for p in v1})
        for path in list(self.cgroups.values()) + ([self._cg_dir] if self._cg_dir else []) + v1 + v1_parents:
            self._step(f"rmdir cgroup {path}", _rmdir_cgroup, path)
        self.cgroups.clear()
        self.cgroups_v1.clear()
        # The shared parent goes only when no other sandbox uses it.
        if self._cg_dir:
            try:
                os.rmdir(os.path.dirname(self._cg_dir))
            except OSError:
                pass
        if os.path.ismount(self.upper_fs):
            self._step("umount upper fs", self._umount, self.upper_fs)
        if self.loop_dev:
            # After a lazy umount the device is still busy; -d then detaches it
            # automatically once the last user goes (autoclear).
            if self._step(f"losetup -d {self.loop_dev}", _run, ["losetup", "-d", self.loop_dev]):
                self.loop_dev = None
        if os.path.ismount(self.backing):
            self._step("umount backing tmpfs", self._umount, self.backing)
        left = mounts_under(self.root)
        if left:
            # rmtree would walk into them (and delete through an overlay).
            _log(f"cleanup: not removing {self.root}: still mounted: {left}")
        elif self._created_root:
            self._step(f"rm -r {self.root}", shutil.rmtree, self.root)
        else:
            self._step(f"clean {self.root}", self._remove_own_files)

    def _remove_own_files(self) -> None:
        """For a caller-supplied root: remove only what we made inside it."""
        subs = [self.lower, self.upper_fs, self.backing, self.image]
        subs += [os.path.join(self.root, n) for n in os.listdir(self.root)
                 if os.path.isdir(os.path.join(self.root, n, "merged"))]
        for sub in subs:
            if os.path.isdir(sub):
                shutil.rmtree(sub)
            elif os.path.exists(sub):
                os.unlink(sub)


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _is_cgroup2(path: str) -> bool:
    return os.path.exists(os.path.join(path, "cgroup.controllers"))


def _rmdir_cgroup(path: str) -> None:
    # Killed tasks leave the cgroup asynchronously: EBUSY for a moment.
    for attempt in range(20):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 19:
                raise
            time.sleep(0.05)
