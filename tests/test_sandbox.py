"""Live tests of the sandbox: real loop devices, filesystems, overlays, processes."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import time

import pytest

from ovltrace import workloads
from ovltrace.sandbox import Sandbox, cgroup2_root

pytestmark = pytest.mark.live
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _root() -> None:
    # Live tests must fail loudly, never skip, when they can't do their job.
    assert os.geteuid() == 0, "live sandbox tests need root"


def _mounts() -> list[tuple[str, str, str]]:
    """(major:minor, mountpoint, source) from /proc/self/mountinfo."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            rows.append((left.split()[2], left.split()[4], right.split()[1]))
    return rows


def _assert_cleaned(sb: Sandbox, image: str, loop_dev: str) -> None:
    left = [mp for _, mp, _ in _mounts() if mp == sb.root or mp.startswith(sb.root + "/")]
    assert left == []
    assert subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout == ""
    assert image not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert not os.path.exists(f"/sys/block/{os.path.basename(loop_dev)}/loop/backing_file")
    assert not os.path.exists(sb.root)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_three_overlays_on_ext4() -> None:
    sb = Sandbox()
    try:
        image, loop_dev = sb.image, sb.loop_dev
        assert loop_dev and loop_dev.startswith("/dev/loop")
        ovs = [sb.add_overlay(n) for n in ("A", "B", "C")]
        assert list(sb.overlays) == ["A", "B", "C"]
        for ov in ovs:
            assert os.path.ismount(ov.mountpoint)
            assert f"/{ov.name}/" in ov.mountpoint and ov.lowerdir == sb.lower
            _write(os.path.join(ov.mountpoint, "probe"), ov.name.encode())
        _write(os.path.join(ovs[0].mountpoint, "only-in-a"), b"x" * 1000)
        assert os.path.exists(os.path.join(ovs[0].upperdir, "only-in-a"))
        for ov in ovs[1:]:
            assert not os.path.exists(os.path.join(ov.upperdir, "only-in-a"))
            assert not os.path.exists(os.path.join(ov.mountpoint, "only-in-a"))
        assert not os.listdir(sb.lower)

        # upper_dev is the kernel's view (mountinfo) of the loop fs, also st_dev
        devs = [dev for dev, mp, src in _mounts() if mp == sb.upper_fs and src == loop_dev]
        assert devs == [sb.upper_dev]
        st = os.stat(ovs[0].upperdir)
        assert sb.upper_dev == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    finally:
        sb.close()
    _assert_cleaned(sb, image, loop_dev)
    sb.close()   # idempotent


def test_xfs() -> None:
    with Sandbox(fstype="xfs") as sb:
        image, loop_dev = sb.image, sb.loop_dev
        assert [src for _, mp, src in _mounts() if mp == sb.upper_fs] == [loop_dev]
        ov = sb.add_overlay("web", volatile=True)
        _write(os.path.join(ov.mountpoint, "f"), b"hello")
        with open(os.path.join(ov.upperdir, "f"), "rb") as f:
            assert f.read() == b"hello"
        sb.remove_overlay("web")
        assert "web" not in sb.overlays and not os.path.ismount(ov.mountpoint)
    _assert_cleaned(sb, image, loop_dev)


def test_copy_up() -> None:
    with Sandbox() as sb:
        sb.make_lower_file("opt/big.bin", 8 * MiB)
        a, b = sb.add_overlay("A"), sb.add_overlay("B")
        assert workloads.copy_up(sb, a, "opt/big.bin").wait(timeout=15) == 0
        up = os.path.join(a.upperdir, "opt/big.bin")
        assert os.path.getsize(up) >= 8 * MiB
        assert not os.path.exists(os.path.join(b.upperdir, "opt/big.bin"))
        assert os.path.getsize(os.path.join(sb.lower, "opt/big.bin")) == 8 * MiB


class _WbErrTrace:
    """filemap:filemap_set_wb_err events, in a tracefs instance of our own."""

    def __init__(self) -> None:
        self.dir = ""

    def __enter__(self) -> "_WbErrTrace":
        tracing = "/sys/kernel/tracing"
        if not os.path.isdir(os.path.join(tracing, "events")):
            subprocess.run(["mount", "-t", "tracefs", "nodev", tracing], check=True)
        self.dir = os.path.join(tracing, "instances", f"ovltrace-test-{os.getpid()}-{time.monotonic_ns()}")
        os.mkdir(self.dir)
        self._enable("1")
        return self

    def _enable(self, value: str) -> None:
        with open(os.path.join(self.dir, "events/filemap/filemap_set_wb_err/enable"), "w") as f:
            f.write(value)

    def events(self) -> list[tuple[str, int, int]]:
        """(major:minor, inode, errno) of each event so far."""
        with open(os.path.join(self.dir, "trace")) as f:
            return [(m[1], int(m[2], 16), int(m[3], 16) & 0xfff)
                    for m in re.finditer(r"dev=(\d+:\d+) ino=0x([0-9a-f]+) errseq=0x([0-9a-f]+)", f.read())]

    def __exit__(self, *exc: object) -> None:
        self._enable("0")
        os.rmdir(self.dir)


def test_writeback_error_lands_on_the_neighbour() -> None:
    """The error leak, deterministically: B loses data, A's syncfs gets EIO, B's gets 0."""
    made: list[tuple[Sandbox, str, str]] = []

    def remember(sb: Sandbox, a: object, b: object) -> None:
        assert sb.backing_exhausted and os.statvfs(sb.backing).f_bavail == 0
        made.append((sb, sb.image, sb.loop_dev))

    for run in range(3):
        with _WbErrTrace() as trace:
            r = workloads.error_leak_scenario(before_writes=remember)
            events = trace.events()
        sb, image, loop_dev = made[run]
        _assert_cleaned(sb, image, loop_dev)
        assert r.seconds < 5
        # (1) B's data really failed at writeback: wb errors on its upper inode.
        # The event carries the errseq from *before* the update (errseq_set()
        # returns the old value): 0 on an inode's first error, then its errno.
        b_errs = [e for dev, ino, e in events if dev == r.upper_dev and ino == r.b_ino]
        assert set(b_errs) - {0}, (r, events[:20])
        assert set(b_errs) - {0} <= {errno.EIO, errno.ENOSPC}, (r, events[:20])
        # (2) A wrote nothing, yet its syncfs returns EIO: the failed
        # extent-tree block of B's file (bdev AS_EIO, returned once)
        assert r.a_syncfs == -errno.EIO, r
        # (3) B is told nothing by syncfs, whichever fd it uses
        assert r.b_syncfs_write_fd == 0, r
        assert r.b_syncfs_fresh_fd == 0, r
        # Only fsync on B's own file, or a fresh fd on the upper fs itself
        # (its s_wb_err: whichever error came last), reveals the loss.
        assert r.b_fsync < 0 and r.upper_syncfs < 0, r


def test_close_kills_workloads() -> None:
    sb = Sandbox()
    try:
        a, b, c = sb.add_overlay("A"), sb.add_overlay("B"), sb.add_overlay("C")
        cg = sb.in_cgroup("A")
        assert cg and os.path.isdir(cg) and cg.endswith("/A")
        small = workloads.small_writer(sb, a, files=5, interval=0.01)
        bulk = workloads.bulk_writer(sb, b, total_mb=4)
        nbr = workloads.syncfs_neighbour(sb, c, interval=0.05)
        short = workloads.small_writer(sb, c, files=1, duration=0.3)
        procs = [small, bulk, nbr]

        deadline = time.monotonic() + 10
        want = [os.path.join(a.upperdir, "app-state", "f0004.dat"),
                os.path.join(b.upperdir, "bulk.dat"),
                os.path.join(c.upperdir, "neighbour-tick")]
        while not all(os.path.exists(p) for p in want) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(os.path.exists(p) for p in want)
        assert all(p.poll() is None for p in procs)
        with open(f"/proc/{small.pid}/cgroup") as f:
            assert f"0::{cg[len(cgroup2_root()):]}\n" in f.read()
        with open(f"/proc/{small.pid}/comm") as f:
            assert f.read().strip() == "small-writer"
        assert short.wait(timeout=10) == 0              # duration ends it by itself
    finally:
        sb.close()
    assert [p.returncode for p in procs] == [-9, -9, -9]
    assert not os.path.exists(cg)
    assert not os.path.exists(sb.root)


def test_close_unmounts_what_it_did_not_track() -> None:
    """An instant container whose workload died between mount and unmount
    (a soak saw it) is still unmounted, and the sandbox is removed."""
    from ovltrace.sandbox import mounts_under
    sb = Sandbox()
    root = sb.root
    ov = sb.prepare_overlay("orphan")
    workloads.mount_overlay(ov.lowerdir, ov.upperdir, ov.workdir, ov.mountpoint, False)
    assert ov.mountpoint in mounts_under(root)
    sb.close()
    assert mounts_under(root) == [] and not os.path.exists(root)


def test_unmount_retries_a_busy_mount() -> None:
    """A path lookup holding the mount for a moment makes umount(2) fail
    with EBUSY; the workloads' unmount retries, as containerd does."""
    import ctypes
    import errno
    import threading
    sb = Sandbox()
    try:
        ov = sb.prepare_overlay("busy")
        workloads.mount_overlay(ov.lowerdir, ov.upperdir, ov.workdir, ov.mountpoint, False)
        fd = os.open(ov.mountpoint, os.O_RDONLY)       # busy until closed
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.umount2(ov.mountpoint.encode(), 0) == -1 and ctypes.get_errno() == errno.EBUSY
        threading.Timer(0.2, os.close, [fd]).start()
        workloads.unmount(ov.mountpoint)
        assert not os.path.ismount(ov.mountpoint)
    finally:
        sb.close()
