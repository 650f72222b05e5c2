"""Paths the core tests do not take, live and exact: an xfs upper fs, a
volatile overlay, an overlay that lives in another mount namespace, and
fsync/fdatasync writeback in the writer's own context."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import audit_json, by_mountpoint, write_file
from ovltrace.sandbox import Sandbox
from ovltrace.workloads import syncfs

pytestmark = pytest.mark.live

MiB = 1 << 20


def test_xfs_upper_flush_victims_are_exact(quiet_flusher):
    with Sandbox(fstype="xfs", size_mb=512) as sb:
        a, b = sb.add_overlay("xa"), sb.add_overlay("xb")

        def work():
            write_file(f"{a.mountpoint}/dirty", 16 * MiB)
            assert syncfs(b.mountpoint) == 0

        rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    calls = [f for f in rep["flushes"] if f["kind"] == "syncfs"]
    assert len(calls) == 1 and calls[0]["upper_dev"] == sb.upper_dev
    assert {v["overlay"]: v["bytes_written_back"] for v in calls[0]["victims"]} == \
        {a.mountpoint: 16 * MiB}
    ra = by_mountpoint(rep, a.mountpoint)
    assert ra["bytes_dirtied"] == 16 * MiB and ra["inodes_dirtied"] == 1
    assert {u["fstype"] for u in rep["upper_filesystems"]} == {"xfs"}


def test_volatile_overlay_is_traced_and_its_syncfs_flushes_nothing(sandbox):
    v, n = sandbox.add_overlay("vol", volatile=True), sandbox.add_overlay("nbr")

    def work():
        write_file(f"{n.mountpoint}/dirty", 8 * MiB)
        write_file(f"{v.mountpoint}/own", 4 * MiB)
        assert syncfs(v.mountpoint) == 0      # volatile: overlayfs skips the upper sync

    rep = audit_json(["--overlay", v.mountpoint, "--overlay", n.mountpoint], work)
    rv = by_mountpoint(rep, v.mountpoint)
    assert "volatile" in rv["options"]
    assert rv["bytes_dirtied"] == 4 * MiB and rv["syncfs_calls"] == 1
    calls = [f for f in rep["flushes"] if f["kind"] == "syncfs"]
    assert len(calls) == 1 and calls[0]["victims"] == []
    assert by_mountpoint(rep, n.mountpoint)["bytes_flushed_by_others"] == 0


def test_overlay_in_another_mount_namespace(sandbox):
    """A container's overlay lives in its own mount namespace: traced (not
    only listed), with its bytes exact."""
    ov = sandbox.add_overlay("inner")
    target = f"{sandbox.root}/ns-merged"
    os.makedirs(target, exist_ok=True)
    opts = f"lowerdir={ov.lowerdir},upperdir={ov.upperdir}-ns,workdir={ov.workdir}-ns"
    os.makedirs(f"{ov.upperdir}-ns")
    os.makedirs(f"{ov.workdir}-ns")
    # mount in a new mount namespace, private to it, and keep it alive there
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o {opts} {target} && echo up && exec sleep 600"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
        assert ns != os.readlink("/proc/self/ns/mnt")
        assert not os.path.ismount(target)            # not in ours

        def work():
            # write from inside its namespace
            subprocess.run(["nsenter", f"--mount=/proc/{proc.pid}/ns/mnt", "sh", "-c",
                            f"head -c {3 * MiB} /dev/zero > {target}/f && sync"], check=True)

        rep = audit_json([], work)
        rows = [o for o in rep["overlays"] if o["mountpoint"] == target]
        assert len(rows) == 1, [o["mountpoint"] for o in rep["overlays"]]
        row = rows[0]
        assert str(row["mnt_ns"]) in ns
        assert row["bytes_dirtied"] == 3 * MiB and row["bytes_written_back"] == 3 * MiB
        assert row["upperdir"] == f"{ov.upperdir}-ns"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("call", ["fsync", "fdatasync"])
def test_fsync_in_the_writers_own_context(sandbox, call):
    """fsync/fdatasync write back in the caller's own context, with no
    writeback tracepoint on that path: the call is counted, the bytes it
    writes are not in bytes_written_back (the README says so)."""
    a = sandbox.add_overlay("fs")

    def work():
        fd = os.open(f"{a.mountpoint}/db", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * (2 * MiB))
            getattr(os, call)(fd)
        finally:
            os.close(fd)
        time.sleep(0.2)

    rep = audit_json(["--overlay", a.mountpoint], work)
    ra = by_mountpoint(rep, a.mountpoint)
    assert ra["fsync_calls"] == 1
    assert ra["bytes_dirtied"] == 2 * MiB
    assert ra["bytes_written_back"] == 0
    assert rep["flushes"] == []                   # an fsync is not a flush of others
