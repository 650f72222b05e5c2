"""An error storm for real: thousands of writeback errors on one container
(a tmpfs-backed upper fs that is full), while another container on another
upper fs writes known data.  Counts must stay exact; the rare-event channel
may overflow but says so."""
from __future__ import annotations

import re

import pytest

from conftest import audit_json, by_mountpoint, sh, wb_error_counter, write_file
from ovltrace.sandbox import Sandbox
from ovltrace.workloads import error_writer

pytestmark = pytest.mark.live

KiB = 1024


def test_error_storm_keeps_counts_exact(quiet_flusher):
    # quiet_flusher: a periodic writeback after ovltrace detached (a
    # metadata block retried) would add errors only bpftrace, still
    # running, counts: 12,988 against 12,985 in one CI run
    with Sandbox(errors="leak", size_mb=512, backing_tmpfs_mb=48) as bad, \
            Sandbox(size_mb=256) as good:
        victim = bad.add_overlay("stormy")
        calm = good.add_overlay("calm")
        bad.exhaust_backing()
        bt = wb_error_counter(bad.upper_dev)     # an independent count of the same events
        try:
            def work():
                p = error_writer(bad, victim, total_mb=160, chunk_kb=64, hole_kb=4)
                for i in range(64):
                    write_file(f"{calm.mountpoint}/f{i}", 16 * KiB)
                p.wait(60)
                sh("sync")                      # sync(2) reports no errors to anyone

            rep = audit_json(["--overlay", victim.mountpoint, "--overlay", calm.mountpoint],
                             work)
        finally:
            bt.send_signal(2)
            out, _ = bt.communicate(timeout=30)
        m = re.search(r"@n: (\d+)", out)
        assert m, out
        kernel_count = int(m.group(1))
        rv, rc = by_mountpoint(rep, victim.mountpoint), by_mountpoint(rep, calm.mountpoint)
        print(f"storm: {kernel_count} errors in the kernel, ovltrace counted {rv['writeback_errors']}, "
              f"{len(rep['writeback_errors'])} error records, dropped events {rep['self']['error_events_dropped']}, "
              f"self {({k: v for k, v in rep['self'].items() if not isinstance(v, dict)})}, "
              f"fs rest {[u['outside_overlays']['writeback_errors'] for u in rep['upper_filesystems']]}")
        assert kernel_count > 1000
        # counters are exact: every error the kernel ran our program for,
        # and the kernel counts the ones it skipped (our program was running
        # on that CPU when an I/O completion raised another)
        missed = sum(n for prog, n in rep["self"]["recursion_misses"].items()
                     if "filemap_set_wb_err" in prog)
        assert rv["writeback_errors"] + missed == kernel_count
        assert len(rep["writeback_errors"]) + rep["self"]["error_events_dropped"] == \
            rv["writeback_errors"]
        assert rep["self"]["events_dropped"] == 0             # flushes never crowded out
        assert rc["bytes_dirtied"] == 64 * 16 * KiB           # the neighbour is unaffected
        assert rc["writeback_errors"] == 0
        assert [l["overlay"] for l in rep["silent_losses"]] == [victim.mountpoint]
