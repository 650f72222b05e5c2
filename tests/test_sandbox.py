"""Live tests of the sandbox: real loop devices, filesystems, overlays, processes."""
from __future__ import annotations

import errno
import os
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


def test_writeback_error_lands_on_the_neighbour() -> None:
    sb = Sandbox(size_mb=256, backing_tmpfs_mb=48)
    try:
        image, loop_dev = sb.image, sb.loop_dev
        a, b = sb.add_overlay("A"), sb.add_overlay("B")
        # B's writes all "succeed": the loss only happens at writeback.
        assert workloads.error_writer(sb, b, total_mb=100).wait(timeout=15) == 0

        # A wrote nothing, yet its syncfs flushes B's data. What A sees is the
        # upper fs's sync_filesystem() result: -EIO when a *metadata* block
        # (the extent-tree block of B's file) failed to reach the full tmpfs.
        # That depends on I/O ordering (about half of the runs), hence 0 or -EIO.
        rc_a = workloads.syncfs(a.mountpoint)
        assert rc_a in (0, -errno.EIO)
        # That bdev error is test-and-clear: whoever comes next sees nothing,
        # including B, whose data was lost.
        assert workloads.syncfs(b.mountpoint) == 0
        assert workloads.syncfs(a.mountpoint) == 0
        # The data writeback error itself (ENOSPC from the loop device) is only
        # in the upper fs's own errseq: a fresh fd on it sees it, once.
        assert workloads.syncfs(sb.upper_fs) == -errno.ENOSPC
        assert workloads.syncfs(sb.upper_fs) == 0
        st = os.statvfs(sb.backing)
        assert st.f_bavail == 0                      # the tmpfs really is full
    finally:
        sb.close()
    _assert_cleaned(sb, image, loop_dev)


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
