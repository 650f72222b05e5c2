"""The CLI's rough edges, each as a user meets it: every usage error is one
line, a hint, and exit 2; doctor tells a non-root user to run as root
before judging the kernel; --ebpf works on every command that loads BPF;
a clamped value says so; every option has help."""
from __future__ import annotations

import os
import subprocess

import click
import pytest

from conftest import OVLTRACE
from ovltrace.cli import cli


def run(args: list[str], timeout: float = 120):
    return subprocess.run(OVLTRACE + args, capture_output=True, text=True, timeout=timeout)


USAGE = [
    (["frobnicate"], "No such command 'frobnicate'", "(see 'ovltrace --help')"),
    (["audit", "--hooks", "tracepoints"], "No such option",
     "(--hooks goes before the command: 'ovltrace --hooks ... audit')"),
    (["exporter", "--web.listen-address", "nonsense"], "'nonsense' is not HOST:PORT",
     "(see 'ovltrace exporter --help')"),
    (["exporter", "--web.listen-address", "localhost:99999"], "not a port number",
     "(see 'ovltrace exporter --help')"),
    (["exporter", "--labels", "foo"], "unknown label 'foo'", "(see 'ovltrace exporter --help')"),
    (["record"], "Missing option '-o' / '--output'", "(see 'ovltrace record --help')"),
    (["top", "--version"], "No such option", "(--version goes before the command"),
    (["audit", "-d", "soon"], "soon", "(see 'ovltrace audit --help')"),
]


@pytest.mark.parametrize("args,says,hint", USAGE, ids=[" ".join(a) for a, _, _ in USAGE])
def test_a_usage_error_is_one_line_a_hint_and_exit_2(args, says, hint):
    r = run(args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ovltrace: error: ") and says in lines[0] and hint in lines[0], lines


def test_doctor_tells_a_user_without_privileges_to_run_as_root(monkeypatch, capsys):
    """As a user without CAP_BPF (what privileges.tracing_refusal says
    then) and who cannot read tracefs: run as root first, no verdict on
    the kernel.  (In-process: the test runs as root; a real user could
    not import a clone in root's home.)"""
    from ovltrace.commands import doctor
    from ovltrace.commands.runtime import TraceOptions
    from ovltrace.privileges import tracing_refusal
    refusal = tracing_refusal(have=set())
    monkeypatch.setattr(doctor, "tracing_refusal", lambda: refusal)
    monkeypatch.setattr(doctor, "effective", lambda: set())
    real_access = os.access
    monkeypatch.setattr(doctor.os, "access",
                        lambda p, m: False if p == doctor.TRACEFS else real_access(p, m))
    assert doctor.run_doctor(TraceOptions()) == 1
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last == f"verdict: run as root first: {refusal}", last
    assert refusal.startswith("tracing needs CAP_BPF")
    assert "nothing can be traced" not in out             # no blame on the kernel
    assert "not readable by this user" in out             # tracefs: not "not mounted"
    assert "hooks (mode" not in out                       # no guesses about hooks


@pytest.mark.live
@pytest.mark.parametrize("command", ["audit", "top", "record", "exporter", "demo"])
def test_ebpf_prints_the_program_on_every_command_that_loads_it(command):
    r = run([command, "--ebpf"])
    assert r.returncode == 0, r.stderr
    assert "RAW_TRACEPOINT_PROBE(writeback_mark_inode_dirty)" in r.stdout
    assert "#define OFF_inode_i_ino" in r.stdout          # with this kernel's layout


@pytest.mark.live
def test_a_clamped_gone_ttl_says_so():
    r = run(["exporter", "--gone-ttl", "1s", "-d", "1s", "--web.listen-address", "127.0.0.1:0"])
    assert r.returncode == 0, r.stderr
    assert "--gone-ttl 1s raised to 10s" in r.stderr.splitlines()[0]


def test_every_option_has_help():
    def walk(cmd: click.Command, path: str):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                yield path, p
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    bare = [f"{path} {p.opts[0]}" for path, p in walk(cli, "ovltrace") if not (p.help or "").strip()
            and p.name not in ("help", "version")]
    assert bare == []
