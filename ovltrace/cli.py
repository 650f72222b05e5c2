"""Command line: thin wrappers around the session, the model and the views."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import click

from .errors import OvltraceError

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(text or "")
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (examples: 10s, 500ms, 2m, 1h)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value <= 0:
        raise click.BadParameter("the duration must be more than zero")
    return value


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


def say(msg: str) -> None:
    print(f"ovltrace: {msg}", file=sys.stderr, flush=True)


class Stopper:
    """SIGINT/SIGTERM end a trace cleanly: the loop notices, prints its
    result and detaches.  A second signal exits at once (the kernel drops
    our programs with the process).  SIGHUP asks for a reload: mounts,
    container state and cgroups are read again, tracing goes on."""

    def __init__(self):
        self.stopped = False
        self.signum = None
        self.reload = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        return self

    def _handle(self, signum, _frame):
        if self.stopped:
            raise SystemExit(128 + signum)
        self.stopped = True
        self.signum = signum

    def _hangup(self, _signum, _frame):
        self.reload = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def trace_for(session, duration: float | None, stopper: Stopper, on_attached=None,
              step=None) -> None:
    """Attach, print the banner, run until the duration has passed or a
    signal arrived."""
    session.start()
    hooks = session.probes.enabled_hooks()
    n = sum(1 for w in session.watched.values() if w.ov is not None)
    say(f"tracing {len(hooks)} hooks on {n} overlays"
        + (f" for {duration:g}s" if duration else "") + "... Ctrl-C to end.")
    if on_attached:
        on_attached()
    end = time.monotonic() + duration if duration else None
    while not stopper.stopped and (end is None or time.monotonic() < end):
        timeout = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
        session.step(timeout)
        if stopper.reload:
            stopper.reload = False
            session.reload()
            say("SIGHUP: reloaded mounts, container state and cgroups")
        if step:
            step()


EPILOG_MAIN = """\b
Examples:
  ovltrace doctor                       # what this kernel allows, hooks used
  ovltrace mounts                       # overlays, upper fs, containers
  ovltrace audit --duration 30s         # who dirties, who flushes whom
  ovltrace audit -d 10s --format json   # the same as JSON (schema v1)
  ovltrace demo                         # sandbox containers + live audit
"""


@click.group(epilog=EPILOG_MAIN, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ovltrace")
@click.option("--hooks", type=click.Choice(["auto", "functions", "tracepoints"]), default=None,
              envvar="OVLTRACE_HOOKS",
              help="auto: per hook fentry, else kprobe, else tracepoint; functions: fail "
                   "unless function hooks attach; tracepoints: tracepoint path only "
                   "[env OVLTRACE_HOOKS; default auto]. Example: ovltrace --hooks "
                   "tracepoints audit")
def cli(hooks):
    """See which container dirties, flushes and breaks the overlayfs upper
    filesystem that all containers on a host share."""
    if hooks:
        os.environ["OVLTRACE_HOOKS"] = hooks     # read by probes.Probes


btf_option = click.option("--btf", metavar="PATH", envvar="OVLTRACE_BTF",
                          help="BTF file with the kernel's types [env OVLTRACE_BTF; "
                               "default /sys/kernel/btf/vmlinux].")
overlay_option = click.option("--overlay", "overlays", multiple=True, metavar="MOUNTPOINT",
                              help="Trace only this overlay (repeatable).")
ebpf_option = click.option("--ebpf", is_flag=True, help="Print the BPF program and exit.")


@cli.command(epilog="""\b
Examples:
  ovltrace doctor                 # on this host
  ovltrace doctor --btf /tmp/vmlinux.btf
""")
@btf_option
def doctor(btf):
    """What this kernel allows, and which hook ovltrace uses for what."""
    from .doctor import run_doctor
    sys.exit(run_doctor(btf))


@cli.command(epilog="""\b
Examples:
  ovltrace mounts
  ovltrace mounts --format json
""")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@overlay_option
def mounts(fmt, overlays):
    """List overlay mounts (all mount namespaces) with upper fs and container."""
    from tabulate import tabulate

    from .containers import Resolver
    from .mounts import UnknownOverlayError, discover
    from .views.common import short_name
    try:
        found = discover(only=list(overlays) or None)
    except UnknownOverlayError as e:
        raise OvltraceError(str(e)) from None
    resolver = Resolver()
    resolver.refresh()
    items = []
    for ov in found:
        d = ov.to_json()
        c = resolver.for_overlay(ov)
        d["container"] = c.to_json() if c else None
        items.append(d)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    rows = [[(d["container"] or {}).get("name") or short_name(d["mountpoint"], 16),
             d["mountpoint"] if len(d["mountpoint"]) <= 34 else "…" + d["mountpoint"][-33:],
             f"{d['upper_dev'] or '-'} {d.get('upper_fstype') or ''}".strip(),
             ",".join(d["options"]) or "-"] for d in items]
    click.echo(tabulate(rows, headers=["NAME", "MOUNTPOINT", "UPPER FS", "OPTIONS"],
                        tablefmt="simple", disable_numparse=True) if rows else "no overlay mounts")


@cli.command(epilog="""\b
Examples:
  ovltrace audit                         # trace 10s, print a table
  ovltrace audit -d 1m --format json     # one minute, JSON (schema v1)
  ovltrace audit --overlay /var/lib/docker/overlay2/ID/merged
  ovltrace audit --ebpf                  # print the BPF program
  ovltrace audit --from rec.jsonl.gz -o report.html     # offline HTML page
  ovltrace audit --from rec.jsonl.gz --format markdown
  ovltrace audit -d 1m --fail-on 'leak,silent-loss,stall>2s'  # CI gate

\b
Exit status: 0 ok, 1 error, 2 bad usage; with --fail-on, the sum of
4 (leak), 8 (silent-loss), 16 (stall) for the gates that tripped.
""")
@click.option("-d", "--duration", type=Duration(), default="10s", show_default=True,
              help="How long to trace (10s, 500ms, 2m); Ctrl-C ends early.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "html"]),
              default=None, help="Report format [default: from -o's extension, else table].")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE, not stdout.")
@click.option("--fail-on", metavar="GATES", callback=lambda c, p, v: _check_fail_on(v),
              help="Comma list of leak, silent-loss, stall>DURATION: exit non-zero when seen.")
@click.option("--from", "source", metavar="FILE",
              help="Report on a recording (see 'record') instead of tracing.")
@overlay_option
@btf_option
@ebpf_option
def audit(duration, fmt, output, fail_on, source, overlays, btf, ebpf):
    """Trace for a while, then report per container: dirtying, writeback,
    copy-ups, flushes (syncfs, sync, umount) and whose data they wrote back,
    writeback errors, error leaks and silent data loss; findings with advice,
    and what cgroup accounting charged beside it."""
    if ebpf:
        print_ebpf(btf)
        return
    from .views.audit import run_audit
    sys.exit(run_audit(duration, fmt, source, overlays, btf, output, fail_on))


def _check_fail_on(value):
    from .views.audit import parse_fail_on
    parse_fail_on(value)          # raises click.BadParameter (exit 2)
    return value


@cli.command(epilog="""\b
Examples:
  ovltrace record -o incident.jsonl.gz -d 5m   # record five minutes
  ovltrace audit --from incident.jsonl.gz      # report on it, anywhere
""")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Where to write (JSON lines; gzip when it ends in .gz).")
@click.option("-d", "--duration", type=Duration(), default=None,
              help="How long to record [default: until Ctrl-C].")
@overlay_option
@btf_option
def record(output, duration, overlays, btf):
    """Record what the probes see to a file, for 'audit --from' and
    'top --replay' on any host (no root or BPF needed there)."""
    from .recording import RecordingWriter
    from .session import Session
    writer = RecordingWriter(output)
    try:
        # the file keeps everything; the model in memory need not
        with Stopper() as stopper, Session(btf=btf, only=list(overlays) or None,
                                           retention=600.0) as session:
            session.sink = writer
            from .annotate import Annotator     # cgroup accounting, error inode paths
            annotator = Annotator(session)
            trace_for(session, duration, stopper, step=annotator.step)
            session.finish()
            annotator.finish(writer)
    finally:
        writer.close()
    say(f"wrote {output}")


@cli.command(epilog="""\b
Examples:
  ovltrace demo                        # 4 sandbox containers, 10s audit
  ovltrace demo --inject-errors        # plus a writeback error storm
  ovltrace demo -n 8 -d 20s --format json
""")
@click.option("-n", "--containers", type=click.IntRange(2, 2000), default=4, show_default=True)
@click.option("-d", "--duration", type=Duration(), default="10s", show_default=True)
@click.option("--inject-errors", is_flag=True, help="Make one container hit writeback errors.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "html"]),
              default=None, help="Report format [default: table, or from -o's extension].")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE.")
@btf_option
def demo(containers, duration, inject_errors, fmt, output, btf):
    """Build sandbox containers (overlays on a loop-mounted ext4), run a mix
    of writers, a syncfs-calling neighbour and a copy-up, and audit them."""
    from .demo import run_demo
    from .views.audit import format_for
    sys.exit(run_demo(containers, duration, inject_errors, format_for(fmt, output), btf, output))


@cli.command(epilog="""\b
Examples:
  ovltrace top                          # full screen, refresh every 1s
  ovltrace top -d 2 --sort dirty        # every 2s, biggest dirtier first
  ovltrace top -b -n 5 > top.log        # five plain text frames
  ovltrace top --replay incident.jsonl.gz   # a recording, at its pace
\b
Keys: arrows/jk move, s < > sort, / filter, space/p pause, y syncfs log,
x interference, e errors, Enter detail, ? help, q quit.
""")
@click.option("-d", "--delay", type=Duration(), default="1s", show_default=True,
              help="Seconds between refreshes (1, 0.5, 2s).")
@click.option("-b", "--batch", is_flag=True, help="Plain text frames on stdout, like top -b.")
@click.option("-n", "--iterations", type=click.IntRange(1), default=None,
              help="Stop after this many frames.")
@click.option("--replay", metavar="FILE", help="Show a recording (see 'record') instead.")
@click.option("--sort", type=click.Choice(["name", "inodes", "dirty", "wback", "copyups", "syncfs",
                                           "stall", "others", "errors"], case_sensitive=False),
              default="stall", show_default=True, help="Initial sort column.")
@overlay_option
@btf_option
@ebpf_option
def top(delay, batch, iterations, replay, sort, overlays, btf, ebpf):
    """Live per-container view of the shared upper filesystem: who dirties
    it, whose syncfs stalls whom, who got someone else's EIO."""
    if ebpf:
        print_ebpf(btf)
        return
    from .views.topui import run_top
    run_top(delay, batch, iterations, replay, list(overlays), btf, sort.lower())


@cli.command(epilog="""\b
Examples:
  ovltrace exporter                       # localhost:19435/metrics
  ovltrace exporter --web.listen-address :19435   # all interfaces
  ovltrace exporter --top-n 20 --labels container,pod,namespace,device
  ovltrace exporter --bpf-stats                 # + BPF cost per event
  curl -s localhost:19435/metrics | grep ^ovltrace_overlay_dirtied
""")
@click.option("--web.listen-address", "listen", default="localhost:19435", show_default=True,
              metavar="HOST:PORT", help="Where to serve (':19435' = all interfaces).")
@click.option("--web.telemetry-path", "telemetry_path", default="/metrics", show_default=True,
              metavar="PATH", help="Path of the metrics page.")
@click.option("--labels", default="container,container_id,pod,namespace,runtime,mountpoint,device",
              show_default=True, metavar="LIST",
              help="Overlay labels to keep (container and device always stay).")
@click.option("--top-n", type=click.IntRange(1), default=100, show_default=True,
              help="Overlays with series of their own; the rest fold into container=\"other\".")
@click.option("--pair-limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Caller/victim pairs with series of their own.")
@click.option("--series-limit", type=click.IntRange(100), default=20000, show_default=True,
              help="Hard cap on samples per scrape.")
@click.option("--rank-interval", type=Duration(), default="60s", show_default=True,
              help="How often the top-N overlays are re-chosen.")
@click.option("--gone-ttl", type=Duration(), default="60s", show_default=True,
              help="Keep an unmounted overlay's series this long (at least 10s).")
@click.option("--bpf-stats", is_flag=True,
              help="Set kernel.bpf_stats_enabled=1 while running (BPF cost per event).")
@click.option("-d", "--duration", type=Duration(), default=None,
              help="Stop after this long [default: until Ctrl-C].")
@overlay_option
@btf_option
def exporter(listen, telemetry_path, labels, top_n, pair_limit, series_limit, rank_interval,
             gone_ttl, bpf_stats, duration, overlays, btf):
    """Serve Prometheus metrics: per-container dirtying, writeback, flush
    interference, error leaks and silent losses, plus the exporter's cost."""
    from .views.exporter import ExporterConfig, run_exporter
    try:
        config = ExporterConfig(tuple(l.strip() for l in labels.split(",") if l.strip()),
                                top_n, pair_limit, series_limit, rank_interval, max(10.0, gone_ttl))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--labels") from None
    sys.exit(run_exporter(listen, telemetry_path, config, list(overlays) or None, btf, bpf_stats,
                          duration))


def print_ebpf(btf):
    from .probes import Probes
    click.echo(Probes(btf).source())


def main(argv=None) -> int:
    if not (sys.argv[1:] if argv is None else argv):
        click.echo(cli.get_help(click.Context(cli, info_name="ovltrace")))
        return 0
    try:
        cli.main(args=argv, prog_name="ovltrace", standalone_mode=False)
        return 0
    except click.UsageError as e:
        hint = f" (see 'ovltrace {e.ctx.info_name} --help')" if e.ctx and e.ctx.parent else ""
        say(f"error: {e.format_message()}{hint}")
        return 2
    except click.Abort:
        say("aborted")
        return 130
    except OvltraceError as e:
        say(f"error: {e}")
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:          # a bug: one line, the traceback on request
        if os.environ.get("OVLTRACE_DEBUG"):
            raise
        say(f"internal error: {type(e).__name__}: {e} (set OVLTRACE_DEBUG=1 for the traceback)")
        return 70


if __name__ == "__main__":
    sys.exit(main())
