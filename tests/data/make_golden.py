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
tests/test_audit_golden.py checks what audit finds in them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def make_demo(path: str, seconds: float = 6.0) -> None:
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
    finally:
        setup.sandbox.close()


def make_leak(path: str) -> None:
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


def make_loss(path: str) -> None:
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
            time.sleep(0.5)
            a_rc = workloads.syncfs(a.mountpoint)
            time.sleep(1.0)
        finally:
            rec.stop()
    print(f"{path}: A's syncfs = {a_rc}")
    if a_rc != -5:
        raise SystemExit(f"the leak did not happen (A's syncfs = {a_rc})")


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root (real BPF and mounts)")
    which = argv or ["demo", "leak", "loss"]
    for name in which:
        path = os.path.join(HERE, f"{name}.jsonl.gz")
        {"demo": make_demo, "leak": make_leak, "loss": make_loss}[name](path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
