"""The core, for real: BPF attached to this kernel, real overlays on a
loop-mounted ext4, known workloads, and the JSON report of `ovltrace audit`."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import audit_json, by_mountpoint, sh, skip_if_hook_off_by_limit, write_file
from ovltrace.workloads import syncfs

pytestmark = pytest.mark.live

MiB = 1 << 20


def test_attribution_three_overlays(sandbox):
    a, b, c = (sandbox.add_overlay(n) for n in ("alpha", "beta", "gamma"))

    def work():
        write_file(f"{a.mountpoint}/big", 4 * MiB)            # one 4 MiB file
        for i in range(10):                                    # ten 4 KiB files
            write_file(f"{b.mountpoint}/small{i}", 4096)
        sh("sync")

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint,
                      "--overlay", c.mountpoint], work)
    ra, rb, rc = (by_mountpoint(rep, o.mountpoint) for o in (a, b, c))
    assert ra["bytes_dirtied"] == 4 * MiB
    assert ra["inodes_dirtied"] == 1
    assert ra["bytes_written_back"] == 4 * MiB
    assert rb["bytes_dirtied"] == 10 * 4096
    assert rb["inodes_dirtied"] == 10
    assert rb["bytes_written_back"] == 10 * 4096
    for key in ("bytes_dirtied", "inodes_dirtied", "bytes_written_back", "copy_ups", "writeback_errors"):
        assert rc[key] == 0, key
    assert ra["upper_dev"] == rb["upper_dev"] == sandbox.upper_dev
    assert ra["upperdir"] == a.upperdir
    # the sync is a flush of kind "sync" with both overlays as victims
    syncs = [f for f in rep["flushes"] if f["kind"] == "sync"]
    assert syncs, rep["flushes"]
    victims = {v["overlay"]: v["bytes_written_back"] for f in syncs for v in f["victims"]}
    assert victims[a.mountpoint] == 4 * MiB
    assert victims[b.mountpoint] == 10 * 4096


def test_copy_up_of_big_lower_file(sandbox):
    sandbox.make_lower_file("data/big.bin", 8 * MiB)
    a, b = sandbox.add_overlay("cu-a"), sandbox.add_overlay("cu-b")

    def work():
        with open(f"{a.mountpoint}/data/big.bin", "ab") as f:
            f.write(b"appended")

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    ra, rb = by_mountpoint(rep, a.mountpoint), by_mountpoint(rep, b.mountpoint)
    assert os.path.getsize(f"{a.upperdir}/data/big.bin") == 8 * MiB + 8
    # the copy: 8 MiB through the page cache (tracepoint path: the temp file
    # in workdir; function hook: ovl_copy_up_flags' own size), then the
    # 8-byte append dirties one more 4 KiB page of the renamed file
    assert ra["bytes_dirtied"] == 8 * MiB + 4096
    assert rb["copy_ups"] == 0 and rb["copy_up_bytes"] == 0
    skip_if_hook_off_by_limit(rep, "copy_up")
    assert ra["copy_ups"] == 1
    assert ra["copy_up_bytes"] == 8 * MiB


def test_syncfs_interference(sandbox, quiet_flusher):
    a, b = sandbox.add_overlay("writer"), sandbox.add_overlay("syncer")

    def work():
        write_file(f"{a.mountpoint}/dirty", 16 * MiB)
        assert syncfs(b.mountpoint) == 0

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    calls = [f for f in rep["flushes"] if f["kind"] == "syncfs" and f["overlay"] == b.mountpoint]
    assert len(calls) == 1, rep["flushes"]
    call = calls[0]
    assert call["ret"] == 0
    assert call["duration_seconds"] > 0
    assert call["upper_dev"] == sandbox.upper_dev
    assert call["pid"] == os.getpid()
    victims = {v["overlay"]: v["bytes_written_back"] for v in call["victims"]}
    # exactly the file a wrote: nothing else of a's was dirty, and the
    # kernel's own flusher does not run within a second at this size
    assert victims == {a.mountpoint: 16 * MiB}
    rb = by_mountpoint(rep, b.mountpoint)
    ra = by_mountpoint(rep, a.mountpoint)
    assert rb["syncfs_calls"] == 1
    assert rb["others_bytes_flushed"] == 16 * MiB
    assert ra["bytes_flushed_by_others"] == 16 * MiB
    assert ra["bytes_written_back"] == 16 * MiB


def test_unmount_flushes_the_neighbours(sandbox, quiet_flusher):
    a, b = sandbox.add_overlay("stays"), sandbox.add_overlay("leaves")

    def work():
        write_file(f"{a.mountpoint}/dirty", 32 * MiB)
        sh(f"umount '{b.mountpoint}'")
        sandbox.overlays.pop("leaves", None)

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    um = [f for f in rep["flushes"] if f["kind"] == "umount"]
    assert len(um) == 1, rep["flushes"]
    assert um[0]["overlay"] == b.mountpoint
    assert um[0]["comm"] == "umount"
    victims = {v["overlay"]: v["bytes_written_back"] for v in um[0]["victims"]}
    assert victims == {a.mountpoint: 32 * MiB}
    assert by_mountpoint(rep, b.mountpoint)["live"] is False


def test_mount_churn_while_tracing(sandbox):
    a = sandbox.add_overlay("steady")
    seen = {}

    def work():
        time.sleep(1.5)
        d = sandbox.add_overlay("short-lived")
        time.sleep(1.5)                     # picked up by the next refresh
        write_file(f"{d.mountpoint}/f", 1 * MiB)
        sh("sync")
        seen["d"] = d.mountpoint
        sandbox.remove_overlay("short-lived")
        e = sandbox.add_overlay("late")
        seen["e"] = e.mountpoint
        time.sleep(1.5)

    rep = audit_json([], work)
    mps = [o["mountpoint"] for o in rep["overlays"]]
    assert a.mountpoint in mps
    rd = by_mountpoint(rep, seen["d"])
    assert rd["bytes_dirtied"] == 1 * MiB
    assert rd["live"] is False
    assert by_mountpoint(rep, seen["e"])["live"] is True


def test_mounts_json_lists_sandbox_overlays(sandbox):
    import json
    a = sandbox.add_overlay("listed", volatile=True)
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "mounts", "--format", "json"],
                       capture_output=True, text=True, check=True)
    items = {o["mountpoint"]: o for o in json.loads(r.stdout)}
    o = items[a.mountpoint]
    assert o["upperdir"] == a.upperdir and o["workdir"] == a.workdir
    assert o["upper_dev"] == sandbox.upper_dev
    assert "volatile" in o["options"]
    assert o["container"] is None            # no runtime knows it: named by mountpoint
    assert isinstance(o["mnt_ns"], int) and o["mnt_ns"] > 0
    table = subprocess.run([sys.executable, "-m", "ovltrace.cli", "mounts"],
                           capture_output=True, text=True, check=True).stdout
    assert "listed" in table
