"""Live audit: real BPF, real sandbox containers in their own cgroups."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import OVLTRACE, ROOT, Trace
from ovltrace import workloads

pytestmark = pytest.mark.live


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "tests/data/make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_live_audit_findings_and_cgroups(sandbox, quiet_flusher):
    nbr, bulk = sandbox.add_overlay("nbr"), sandbox.add_overlay("bulk")
    for name in ("nbr", "bulk"):
        sandbox.in_cgroup(name)
    t = Trace(["audit", "--format", "json", "-d", "600s", "--fail-on", "leak,silent-loss",
               "--overlay", nbr.mountpoint, "--overlay", bulk.mountpoint])
    t.wait_attached()
    workloads.bulk_writer(sandbox, bulk, total_mb=48, duration=5)
    end = time.monotonic() + 30
    while not (os.path.exists(f"{bulk.upperdir}/bulk.dat")
               and os.path.getsize(f"{bulk.upperdir}/bulk.dat") == 48 << 20):
        assert time.monotonic() < end, "the bulk writer did not write its 48 MiB"
        time.sleep(0.1)
    workloads.syncfs_neighbour(sandbox, nbr, interval=0.3, duration=2).wait(30)
    t.signal(signal.SIGINT)                 # end on the work, not on a clock
    rc, out = t.finish()
    assert rc == 0, t.stderr
    rep = json.loads(out)
    assert rep["report"]["source"] == "live"
    ids = {f["id"] for f in rep["findings"]}
    assert "syncfs-flushes-others" in ids, rep["findings"]
    cells = {(c["caller"], c["victim"]): c["bytes"] for c in rep["interference"]}
    # the neighbour's syncfs wrote back all of bulk's data, exactly
    assert cells.get(("nbr", "bulk"), 0) == 48 << 20
    # each workload's own cgroup2 dir was found and read
    cg = {c["name"]: c for c in rep["cgroup_accounting"]["containers"]}
    for name in ("nbr", "bulk"):
        assert sandbox.cgroups[name].endswith(cg[name]["v2"]["cgroup"]), cg[name]
        v2 = cg[name]["v2"]
        # either the controller is there and read, or it is named as missing
        assert ("wbytes" in v2) != ("io" in v2["missing"])
        assert ("file_dirty_peak" in v2) != ("memory" in v2["missing"])
    # beside the kernel's accounting, ovltrace's own figures for the same cgroup
    assert cg["bulk"]["ovltrace_bytes_dirtied"] == 48 << 20
    assert cg["bulk"]["ovltrace_bytes_written_back"] == 48 << 20
    assert cg["nbr"]["ovltrace_bytes_dirtied"] == by_name(rep, "nbr")["bytes_dirtied"]


def by_name(rep: dict, name: str) -> dict:
    return {o["name"]: o for o in rep["overlays"]}[name]


def test_record_then_audit_elsewhere_shows_loss_with_paths(tmp_path):
    rec = tmp_path / "loss.jsonl.gz"
    _make_golden().make_loss(str(rec))
    # the sandbox is gone now: paths and cgroups come from the recording
    out = subprocess.run(OVLTRACE + ["audit", "--from", str(rec), "--format", "json",
                                     "--fail-on", "leak,silent-loss"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 + 8, out.stderr
    rep = json.loads(out.stdout)
    ids = {f["id"] for f in rep["findings"]}
    assert {"error-leak", "silent-data-loss"} <= ids
    b = {e["name"]: e for e in rep["errors_by_container"]}["B"]
    assert b["silent_loss"] and b["inodes"][0]["path"].endswith("/B/diff/lost.dat")
    assert not os.path.exists(b["inodes"][0]["path"])
