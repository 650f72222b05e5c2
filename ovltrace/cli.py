"""Command line: parsing only.  Each command runs in ovltrace/commands/;
nothing imports this module."""
from __future__ import annotations

import os
import sys

import click

from . import __version__
from .commands.runtime import TraceOptions, say
from .errors import OvltraceError
from .format import parse_duration
from .views.metrics import DEFAULT_PORT


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


EPILOG_MAIN = """\b
Examples:
  ovltrace doctor                       # what this kernel allows, hooks used
  ovltrace mounts                       # overlays, upper fs, containers
  ovltrace audit --duration 30s         # who dirties, who flushes whom
  ovltrace audit -d 10s --format json   # the same as JSON (schema v2)
  ovltrace demo                         # sandbox containers + live audit
"""


@click.group(epilog=EPILOG_MAIN, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovltrace")
@click.option("--hooks", type=click.Choice(["auto", "functions", "fentry", "kprobes", "tracepoints"]),
              default="auto", envvar="OVLTRACE_HOOKS",
              help="auto: per hook fentry, else kprobe, else tracepoint; functions: fail "
                   "unless function hooks attach; fentry, kprobes: every function hook on "
                   "that mechanism only, or fail (a hook it cannot reach on this kernel for "
                   "a documented reason uses its tracepoint stand-in, see doctor); "
                   "tracepoints: tracepoint path only [env OVLTRACE_HOOKS; default auto]. "
                   "Example: ovltrace --hooks tracepoints audit")
@click.pass_context
def cli(ctx, hooks):
    """See which container dirties, flushes and breaks the overlayfs upper
    filesystem that all containers on a host share."""
    ctx.obj = hooks


def options(ctx, btf=None, overlays=()) -> TraceOptions:
    """The global --hooks with a command's --btf and --overlay."""
    return TraceOptions(btf=btf, hooks=ctx.find_root().obj or "auto", overlays=tuple(overlays))


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
@click.pass_context
def doctor(ctx, btf):
    """What this kernel allows, and which hook ovltrace uses for what."""
    from .commands.doctor import run_doctor
    sys.exit(run_doctor(options(ctx, btf)))


@cli.command(epilog="""\b
Examples:
  ovltrace mounts
  ovltrace mounts --format json
""")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--overlay", "overlays", multiple=True, metavar="MOUNTPOINT",
              help="List only this overlay (repeatable).")
def mounts(fmt, overlays):
    """List overlay mounts (all mount namespaces) with upper fs and container."""
    from .commands.mounts import run_mounts
    run_mounts(fmt, list(overlays))


@cli.command(epilog="""\b
Examples:
  ovltrace audit                         # trace 10s, print a table
  ovltrace audit -d 1m --format json     # one minute, JSON (schema v2)
  ovltrace audit --overlay /var/lib/docker/overlay2/ID/merged
  ovltrace audit --ebpf                  # print the BPF program
  ovltrace audit --from rec.jsonl.gz -o report.html     # offline HTML page
  ovltrace audit --from rec.jsonl.gz --format markdown
  ovltrace audit -d 1m --fail-on 'leak,silent-loss,stall>2s'  # CI gate
  ovltrace audit --prometheus http://prom:9090 --range 24h  # the fleet
  ovltrace audit --prometheus http://prom:9090 --range 7d \\
      --selector '{cluster="prod"}' --fail-on leak,silent-loss

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
@click.option("--prometheus", "prom_url", metavar="URL",
              help="Fleet report: read every node's exporter series from this Prometheus "
                   "(or Thanos/Mimir/Cortex) instead of tracing.")
@click.option("--range", "range_", type=Duration(), default="24h", show_default=True,
              help="With --prometheus: the window, ending at --end (30m, 24h, 7d).")
@click.option("--end", "end", metavar="TIME", callback=lambda c, p, v: _check_time(v),
              help="With --prometheus: the window's end, Unix seconds or "
                   "YYYY-MM-DDTHH:MM:SSZ [default: now].")
@click.option("--selector", metavar="'{...}'",
              help="With --prometheus: label matchers added to every query, e.g. "
                   "'{cluster=\"prod\"}'.")
@click.option("--node-label", default="node", show_default=True,
              help="With --prometheus: the label naming a node (falls back to instance).")
@click.option("--bearer-token-file", metavar="FILE", help="With --prometheus: send this token.")
@click.option("--basic-auth-user", metavar="USER", help="With --prometheus: basic auth user.")
@click.option("--basic-auth-password-file", metavar="FILE",
              help="With --prometheus: basic auth password, read from FILE.")
@click.option("--ca-file", metavar="FILE", help="With --prometheus: CA to verify the server.")
@click.option("--cert-file", metavar="FILE", help="With --prometheus: client certificate.")
@click.option("--key-file", metavar="FILE", help="With --prometheus: the certificate's key.")
@click.option("--insecure-skip-verify", is_flag=True,
              help="With --prometheus: do not verify the server's certificate.")
@click.pass_context
def audit(ctx, duration, fmt, output, fail_on, source, overlays, btf, ebpf, prom_url, range_,
          end, selector, node_label, bearer_token_file, basic_auth_user,
          basic_auth_password_file, ca_file, cert_file, key_file, insecure_skip_verify):
    """Trace for a while, then report per container: dirtying, writeback,
    copy-ups, flushes (syncfs, sync, umount) and whose data they wrote back,
    writeback errors, error leaks and silent data loss; findings with advice,
    and what cgroup accounting charged beside it.  With --prometheus, the
    same findings for every node the exporters run on, by workload."""
    if ebpf:
        print_ebpf(btf)
        return
    if prom_url:
        clash = [o for o, v in (("--from", source), ("--overlay", overlays), ("--btf", btf))
                 if v]
        src = ctx.get_parameter_source("duration")
        if src is not None and src.name != "DEFAULT":
            clash.append("--duration")
        if clash:
            raise click.UsageError(f"--prometheus reads a window from Prometheus: "
                                   f"{', '.join(clash)} does not apply (use --range)")
        from .commands.audit import run_fleet_audit
        from .prometheus import Auth
        auth = Auth(bearer_token_file, basic_auth_user, basic_auth_password_file, ca_file,
                    cert_file, key_file, insecure_skip_verify)
        sys.exit(run_fleet_audit(prom_url, range_, end, selector, node_label, auth, fmt,
                                 output, fail_on))
    from .commands.audit import run_audit
    sys.exit(run_audit(options(ctx, btf, overlays), duration, fmt, source, output, fail_on))


def _check_time(value):
    """--end: Unix seconds or an ISO 8601 UTC time -> Unix seconds."""
    if value is None:
        return None
    import calendar
    import time
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give Unix seconds or "
                                 "YYYY-MM-DDTHH:MM:SSZ") from None


def _check_fail_on(value):
    from .report.gates import GateError, parse_fail_on
    try:
        parse_fail_on(value)
    except GateError as e:
        raise click.BadParameter(str(e)) from None      # exit 2
    return value


@cli.command(epilog="""\b
Examples:
  ovltrace record -o incident.jsonl.gz -d 5m   # record five minutes
  ovltrace audit --from incident.jsonl.gz      # report on it, anywhere
""")
@click.option("-o", "--output", metavar="FILE",
              help="Where to write (JSON lines; gzip when it ends in .gz). Required.")
@click.option("-d", "--duration", type=Duration(), default=None,
              help="How long to record [default: until Ctrl-C].")
@overlay_option
@btf_option
@ebpf_option
@click.pass_context
def record(ctx, output, duration, overlays, btf, ebpf):
    """Record what the probes see to a file, for 'audit --from' and
    'top --replay' on any host (no root or BPF needed there)."""
    if ebpf:
        print_ebpf(btf)
        return
    if not output:
        raise click.UsageError("Missing option '-o' / '--output'.")
    from .commands.audit import run_record
    sys.exit(run_record(options(ctx, btf, overlays), output, duration))


@cli.command(epilog="""\b
Examples:
  ovltrace demo                        # 4 sandbox containers, 10s audit
  ovltrace demo --inject-errors        # plus a writeback error storm
  ovltrace demo -n 8 -d 20s --format json
""")
@click.option("-n", "--containers", type=click.IntRange(2, 2000), default=4, show_default=True,
              help="Sandbox containers to make (2-2000).")
@click.option("-d", "--duration", type=Duration(), default="10s", show_default=True,
              help="How long to trace them (10, 30s, 2m).")
@click.option("--inject-errors", is_flag=True, help="Make one container hit writeback errors.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "html"]),
              default=None, help="Report format [default: table, or from -o's extension].")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE.")
@btf_option
@ebpf_option
@click.pass_context
def demo(ctx, containers, duration, inject_errors, fmt, output, btf, ebpf):
    """Build sandbox containers (overlays on a loop-mounted ext4), run a mix
    of writers, a syncfs-calling neighbour and a copy-up, and audit them."""
    if ebpf:
        print_ebpf(btf)
        return
    from .commands.demo import run_demo
    from .report import format_for
    sys.exit(run_demo(options(ctx, btf), containers, duration, inject_errors,
                      format_for(fmt, output), output))


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
@click.pass_context
def top(ctx, delay, batch, iterations, replay, sort, overlays, btf, ebpf):
    """Live per-container view of the shared upper filesystem: who dirties
    it, whose syncfs stalls whom, who got someone else's EIO."""
    if ebpf:
        print_ebpf(btf)
        return
    from .commands.top import run_top
    run_top(options(ctx, btf, overlays), delay, batch, iterations, replay, sort.lower())


def _check_listen(ctx, param, value):
    from .commands.exporter import parse_listen_address
    try:
        parse_listen_address(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None       # exit 2, like every usage error
    return value


@cli.command(epilog="""\b
Examples:
  ovltrace exporter                       # localhost:19435/metrics
  ovltrace exporter --web.listen-address :19435   # all interfaces
  ovltrace exporter --top-n 20 --labels container,pod,namespace,device
  ovltrace exporter --bpf-stats                 # + BPF cost per event
  ovltrace exporter --web.config.file web.yml   # TLS, basic auth (docs/exporter.md)
  curl -s localhost:19435/metrics | grep ^ovltrace_overlay_dirtied
""")
@click.option("--web.listen-address", "listen", default=f"localhost:{DEFAULT_PORT}",
              show_default=True, metavar="HOST:PORT", callback=_check_listen,
              help=f"Where to serve (':{DEFAULT_PORT}' = all interfaces).")
@click.option("--web.telemetry-path", "telemetry_path", default="/metrics", show_default=True,
              metavar="PATH", help="Path of the metrics page.")
@click.option("--web.config.file", "web_config_file", metavar="FILE",
              help="TLS and basic auth, in exporter-toolkit's format (docs/exporter.md: Securing the "
                   "exporter).")
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
              help="Keep an unmounted overlay's series this long (at least 10s: less is raised).")
@click.option("--bpf-stats", is_flag=True,
              help="Set kernel.bpf_stats_enabled=1 while running (BPF cost per event).")
@click.option("-d", "--duration", type=Duration(), default=None,
              help="Stop after this long [default: until Ctrl-C].")
@overlay_option
@btf_option
@ebpf_option
@click.pass_context
def exporter(ctx, listen, telemetry_path, web_config_file, labels, top_n, pair_limit, series_limit, rank_interval,
             gone_ttl, bpf_stats, duration, overlays, btf, ebpf):
    """Serve Prometheus metrics: per-container dirtying, writeback, flush
    interference, error leaks and silent losses, plus the exporter's cost."""
    if ebpf:
        print_ebpf(btf)
        return
    from .commands.exporter import run_exporter
    from .views.exporter import ExporterConfig
    if gone_ttl < MIN_GONE_TTL:
        say(f"--gone-ttl {gone_ttl:g}s raised to {MIN_GONE_TTL:g}s, the least that outlasts "
            "an unmount's flush")
        gone_ttl = MIN_GONE_TTL
    try:
        config = ExporterConfig(tuple(l.strip() for l in labels.split(",") if l.strip()),
                                top_n, pair_limit, series_limit, rank_interval, gone_ttl)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--labels") from None
    sys.exit(run_exporter(options(ctx, btf, overlays), listen, telemetry_path, config, bpf_stats,
                          duration, web_config_file))


MIN_GONE_TTL = 10.0


def print_ebpf(btf):
    from .probes import Probes
    click.echo(Probes(btf).source())


GLOBAL_OPTIONS = ("--hooks", "--version")


def usage_hint(e: click.UsageError) -> str:
    """Where to look next: the command's help, the global option's place."""
    msg = e.format_message()
    if e.ctx is None or e.ctx.parent is None:
        return " (see 'ovltrace --help')"
    name = e.ctx.info_name
    for opt in GLOBAL_OPTIONS:
        if f"No such option: {opt}" in msg or f"No such option '{opt}'" in msg:
            return f" ({opt} goes before the command: 'ovltrace {opt} ... {name}')"
    return f" (see 'ovltrace {name} --help')"


def main(argv=None) -> int:
    if not (sys.argv[1:] if argv is None else argv):
        click.echo(cli.get_help(click.Context(cli, info_name="ovltrace")))
        return 0
    try:
        cli.main(args=argv, prog_name="ovltrace", standalone_mode=False)
        return 0
    except click.UsageError as e:
        say(f"error: {e.format_message()}{usage_hint(e)}")
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
