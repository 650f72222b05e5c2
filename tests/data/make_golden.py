#!/usr/bin/env python3
"""Re-make the golden recordings in tests/data from the live demo (root, BPF).

    sudo .venv/bin/python tests/data/make_golden.py            # both
    sudo .venv/bin/python tests/data/make_golden.py demo       # one

Each runs the real `ovltrace record` (a subprocess) while real sandbox
containers work, so the files are what a user's recording looks like:
  demo.jsonl.gz  the demo mix: webshop (small writer), syncer (syncfs in a
                 loop), batch (bulk writer, no fsync), cache (copy-up of a
                 32 MiB lower file, then small writes); each in its own cgroup.
  leak.jsonl.gz  the deterministic error leak (workloads.error_leak_scenario):
                 B's writes fail at writeback, A's syncfs gets EIO, B is told
                 nothing by syncfs (its fsync then reports the loss).
  loss.jsonl.gz  the same upper fs, but B writes and exits without fsync:
                 A's syncfs gets B's EIO (a leak) and B is never told (a
                 silent loss).
Each scenario also records its truth (what the workload did, measured
on its own, beside the recording: <name>.truth.json), and the script
checks the recording against it before writing anything: a golden that
disagrees with its own scenario is never written (check_against_truth;
tests/test_audit_golden.py runs the same check on the files, and fails
when a golden is older than the counter schema or the recording format).
Re-make them whenever those change.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

BANNER = "ovltrace: tracing"


class Recorder:
    """`ovltrace record -o path --overlay ...` until stop()."""

    def __init__(self, path: str, mountpoints: list[str]):
        args = [sys.executable, "-m", "ovltrace.cli", "record", "-o", path]
        for mp in mountpoints:
            args += ["--overlay", mp]
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.attached = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.attached.wait(90):
            self.proc.kill()
            raise SystemExit(f"recorder did not attach: {self.lines}")

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if line.startswith(BANNER):
                self.attached.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(120)
        if rc != 0:
            raise SystemExit(f"recorder exited {rc}: {self.lines}")


MiB = 1 << 20


def make_demo(path: str, seconds: float = 6.0) -> dict:
    from ovltrace import demo
    setup = demo.build(4)
    try:
        rec = Recorder(path, setup.mountpoints)
        try:
            # syncfs every 0.3s: a clear "syncfs in a loop" neighbour
            demo.start_workload(setup, duration=seconds, syncfs_interval=0.3)
            time.sleep(seconds + 0.5)
        finally:
            rec.stop()
        print(f"{path}: roles {setup.roles}")
        ovs = {o.name: o for o in setup.overlays}
        # the truth, from the files themselves: batch wrote bulk.dat once,
        # cache copied up the big lower file
        return {"batch": {"bytes_dirtied": os.path.getsize(f"{ovs['batch'].upperdir}/bulk.dat")},
                "cache": {"copy_ups": 1,
                          "copy_up_bytes": os.path.getsize(
                              os.path.join(setup.sandbox.lower, demo.BIG_LOWER))}}
    finally:
        setup.sandbox.close()


def make_leak(path: str) -> dict:
    from ovltrace import workloads
    from ovltrace.sandbox import Sandbox
    rec: list[Recorder] = []

    def factory() -> Sandbox:
        sb = Sandbox(errors="leak")
        close = sb.close

        def stop_then_close():
            # stop recording while the overlays still exist, so the
            # recorder can resolve the failed inodes to paths
            if rec:
                rec.pop().stop()
            close()
        sb.close = stop_then_close
        return sb

    def before_writes(sb, a, b):
        sb.in_cgroup(a.name)
        sb.in_cgroup(b.name)
        rec.append(Recorder(path, [a.mountpoint, b.mountpoint]))

    result = workloads.error_leak_scenario(factory, before_writes=before_writes)
    print(f"{path}: {result}")
    if result.a_syncfs != -5:
        raise SystemExit(f"the leak did not happen (A's syncfs = {result.a_syncfs})")
    return {"B": {"bytes_dirtied": 8 * MiB, "ino": result.b_ino, "silent_loss": False},
            "A": {"bytes_dirtied": 0, "syncfs_errno": 5}}


def make_loss(path: str) -> dict:
    from ovltrace import workloads
    from ovltrace.sandbox import Sandbox
    with Sandbox(errors="leak") as sb:
        a, b = sb.add_overlay("A"), sb.add_overlay("B")
        sb.in_cgroup("A")
        sb.in_cgroup("B")
        sb.exhaust_backing()
        rec = Recorder(path, [a.mountpoint, b.mountpoint])
        try:
            # A writes nothing (any new block would fail too); B writes, exits
            proc = workloads.error_writer(sb, b, total_mb=8, chunk_kb=64, hole_kb=4)
            proc.wait(60)
            b_ino = os.stat(f"{b.upperdir}/lost.dat").st_ino
            time.sleep(0.5)
            a_rc = workloads.syncfs(a.mountpoint)
            time.sleep(1.0)
        finally:
            rec.stop()
    print(f"{path}: A's syncfs = {a_rc}")
    if a_rc != -5:
        raise SystemExit(f"the leak did not happen (A's syncfs = {a_rc})")
    return {"B": {"bytes_dirtied": 8 * MiB, "ino": b_ino, "silent_loss": True},
            "A": {"bytes_dirtied": 0, "syncfs_errno": 5}}


def check_against_truth(rep: dict, truth: dict) -> list[str]:
    """What in an audit report of a golden disagrees with its scenario's
    truth (exact where the truth is exact)."""
    bad = []
    rows = {o["name"]: o for o in rep["overlays"]}
    for name, want in truth.items():
        row = rows.get(name)
        if row is None:
            bad.append(f"{name}: not in the report")
            continue
        for key in ("bytes_dirtied", "copy_ups", "copy_up_bytes"):
            if key in want and row[key] != want[key]:
                bad.append(f"{name}: {key} {row[key]} != {want[key]}")
        if "ino" in want:
            inos = {e["ino"] for e in rep["writeback_errors"] if e["name"] == name}
            if inos != {want["ino"]}:
                bad.append(f"{name}: writeback errors on inodes {inos}, not {want['ino']}")
            others = {e["name"] for e in rep["writeback_errors"]} - {name}
            if others:
                bad.append(f"writeback errors also on {others}")
        if "silent_loss" in want:
            lost = name in {l["name"] for l in rep["silent_losses"]}
            if lost != want["silent_loss"]:
                bad.append(f"{name}: silent loss {lost}, the scenario says {want['silent_loss']}")
        if "syncfs_errno" in want:
            leaks = {(l["victim"], l["source"], l["errno"]) for l in rep["leaks"]}
            srcs = [n for n, w in truth.items() if "ino" in w]
            if leaks != {(name, s, want["syncfs_errno"]) for s in srcs}:
                bad.append(f"leaks {leaks}: the scenario handed {name} errno "
                           f"{want['syncfs_errno']} from {srcs}")
    if "batch" in truth:            # the syncer's syncfs wrote back all of batch's data
        pairs = {(c["caller"], c["victim"]): c["bytes"] for c in rep["interference"]}
        want = truth["batch"]["bytes_dirtied"]
        if pairs.get(("syncer", "batch")) != want:
            bad.append(f"syncer -> batch {pairs.get(('syncer', 'batch'))} != {want}")
    return bad


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root (real BPF and mounts)")
    which = argv or ["demo", "leak", "loss"]
    for name in which:
        tmp = tempfile.mkdtemp(prefix="ovltrace-golden.")
        try:
            path = os.path.join(tmp, f"{name}.jsonl.gz")
            truth = {"demo": make_demo, "leak": make_leak, "loss": make_loss}[name](path)
            r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--from", path,
                                "--format", "json"], cwd=ROOT, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{name}: audit --from failed: {r.stderr}")
            bad = check_against_truth(json.loads(r.stdout), truth)
            if bad:
                raise SystemExit(f"{name}: the recording disagrees with its scenario, not "
                                 "written: " + "; ".join(bad))
            dst = os.path.join(HERE, f"{name}.jsonl.gz")
            shutil.move(path, dst)
            with open(os.path.join(HERE, f"{name}.truth.json"), "w") as f:
                json.dump(truth, f, indent=1)
                f.write("\n")
            print(f"wrote {dst} ({os.path.getsize(dst)} bytes), checked against {truth}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
