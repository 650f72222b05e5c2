"""`ovltrace demo`: sandbox containers doing realistic things, audited live."""
from __future__ import annotations

import sys

from .. import demo
from .audit import emit, trace_and_annotate
from .runtime import TraceOptions, say
from ..report import render
from ..report.build import build_report


def run_demo(opts: TraceOptions, n: int, duration: float, inject_errors: bool, fmt: str,
             output: str | None = None) -> int:
    say(f"building {n} sandbox containers on a loop-mounted ext4"
        + (" (tmpfs-backed: writeback errors will happen)" if inject_errors else ""))
    setup = demo.build(n, inject_errors)
    try:
        for ov in setup.overlays:
            say(f"  {ov.name:<10} {ov.mountpoint}")
        model, extras = trace_and_annotate(
            TraceOptions(opts.btf, opts.hooks, tuple(setup.mountpoints)), duration,
            on_attached=lambda: demo.start_workload(setup, inject_errors, duration))
        roles = ", ".join(f"{k}={v}" for k, v in setup.roles.items())
        say(f"workloads: {roles}")
        emit(render(build_report(model.snapshot(), extras), fmt), output)
        sys.stdout.flush()
    finally:
        say("tearing down the sandbox")
        setup.sandbox.close()
    return 0
