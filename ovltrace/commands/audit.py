"""`ovltrace audit` and `ovltrace record`: trace (or replay), then report."""
from __future__ import annotations

import click

from ..errors import OvltraceError
from ..report import format_for, render
from ..report.build import build_report
from ..report.gates import check_gates, parse_fail_on
from .runtime import TraceOptions, say, trace, tracing


def emit(text: str, output: str | None) -> None:
    """A rendered report to stdout, or to the file -o named."""
    if not output:
        click.echo(text)
        return
    try:
        with open(output, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as e:
        raise OvltraceError(f"cannot write {output}: {e.strerror}") from None
    say(f"wrote {output}")


def trace_and_annotate(opts: TraceOptions, duration: float | None, on_attached=None,
                       writer=None, **session_args):
    """Trace with the audit's extras (cgroup accounting, error inode
    paths) collected alongside; returns (model, extras)."""
    from ..annotate import Annotator
    with tracing(opts, **session_args) as (session, stopper):
        if writer is not None:
            session.sink = writer
        ann = Annotator(session)
        trace(session, stopper, duration, on_attached=on_attached, step=ann.step)
        model = session.finish()
        ann.finish(writer)
    return model, ann.extras()


def report_and_gate(model, extras: dict, fmt: str, output: str | None, gates: dict) -> int:
    rep = build_report(model.snapshot(), extras)
    emit(render(rep, fmt), output)
    code, why = check_gates(rep, gates)
    for line in why:
        say(f"fail-on {line}")
    return code


def run_audit(opts: TraceOptions, duration: float, fmt: str | None, source: str | None,
              output: str | None = None, fail_on: str | None = None) -> int:
    """`ovltrace audit`: trace live (or replay --from), report, check gates."""
    gates = parse_fail_on(fail_on)
    fmt = format_for(fmt, output)
    if source:
        from ..annotate import load
        header, model, extras = load(source)
        if not header.get("complete"):
            say(f"warning: {source} has no end record (cut short?); reporting what it holds")
    else:
        model, extras = trace_and_annotate(opts, duration)
    return report_and_gate(model, extras, fmt, output, gates)


def run_fleet_audit(url: str, range_seconds: float, end: float | None, selector: str | None,
                    node_label: str, auth, fmt: str | None, output: str | None,
                    fail_on: str | None) -> int:
    """`ovltrace audit --prometheus`: the fleet report (report/fleet.py)."""
    import time

    from ..fleet import collect
    from ..prometheus import Prometheus
    from ..report.fleet import build_fleet_report, fleet_gates
    from ..report.fleetview import render_fleet
    gates = parse_fail_on(fail_on)
    fmt = format_for(fmt, output)
    prom = Prometheus(url, auth)
    figs = collect(prom, range_seconds, end if end is not None else time.time(), selector,
                   node_label, stall_buckets="stall" in gates)
    rep = build_fleet_report(figs, gates)
    emit(render_fleet(rep, fmt), output)
    code, why = fleet_gates(rep, gates)
    for line in why:
        say(f"fail-on {line}")
    return code


def run_record(opts: TraceOptions, output: str, duration: float | None) -> int:
    """`ovltrace record`: every record the model gets, to a file."""
    from ..recording import RecordingWriter
    writer = RecordingWriter(output)
    try:
        # the file keeps everything; the model in memory need not
        trace_and_annotate(opts, duration, writer=writer, retention=600.0)
    finally:
        writer.close()
    say(f"wrote {output}")
    return 0
