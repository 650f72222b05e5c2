"""`make install` for real, into a scratch prefix: the launcher runs the
installed copy (not the checkout, not whatever sits in the caller's
directory), and the installed unit's own ExecStart, run with the unit's
capabilities, serves exact bytes for real overlays; `make uninstall`
leaves nothing behind."""
from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, our_bpf_programs, start_exporter, write_file
from test_deploy import unit_caps
from test_image_live import metrics
from test_privileges_live import setpriv

pytestmark = pytest.mark.live

MiB = 1 << 20


def make(target: str, dirs: dict[str, Path]) -> str:
    args = [f"{k}={v}" for k, v in dirs.items()]
    p = subprocess.run(["make", "-s", target, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"make {target}: {p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture
def installed(tmp_path):
    dirs = {"PREFIX": tmp_path / "usr", "LIBDIR": tmp_path / "opt" / "ovltrace",
            "UNITDIR": tmp_path / "systemd"}
    make("install", dirs)
    try:
        yield dirs
    finally:
        make("uninstall", dirs)


def unit_exec_start(unit: Path) -> list[str]:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("$OVLTRACE_EXPORTER_ARGS", ""))


def test_the_launcher_runs_the_installed_copy(installed, tmp_path):
    launcher = installed["PREFIX"] / "bin" / "ovltrace"
    # packages of the same name where the user stands, and on PYTHONPATH,
    # must not be imported (the launcher runs as root)
    for where in ("cwd", "pythonpath"):
        decoy = tmp_path / where / "ovltrace"
        decoy.mkdir(parents=True)
        (decoy / "__init__.py").write_text(f"raise SystemExit('decoy in {where} imported')\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "pythonpath")}
    p = subprocess.run([str(launcher), "audit", "--ebpf"], cwd=tmp_path / "cwd", env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "/* ---- ovltrace.bpf.c ---- */" in p.stdout and "RAW_TRACEPOINT_PROBE" in p.stdout
    p = subprocess.run([str(launcher), "--version"], cwd=tmp_path / "cwd", env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("ovltrace, version "), p
    # and the checkout is not what it ran: the installed tree has no checkout files
    assert sorted(x.name for x in installed["LIBDIR"].iterdir()) == ["bpf", "ovltrace"]


def test_the_installed_unit_serves_exact_bytes(installed, sandbox):
    unit = installed["UNITDIR"] / "ovltrace-exporter.service"
    argv = unit_exec_start(unit)
    assert argv[0] == str(installed["PREFIX"] / "bin" / "ovltrace")
    port = free_port()
    argv = [a if not a.startswith("--web.listen-address") else
            f"--web.listen-address=127.0.0.1:{port}" for a in argv]
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    caps = unit_caps("CapabilityBoundingSet")
    proc, lines, serving = start_exporter([*setpriv(caps), *argv], cwd="/")
    try:
        assert serving and proc.poll() is None, "\n".join(lines)
        write_file(f"{a.mountpoint}/big", 2 * MiB)
        write_file(f"{b.mountpoint}/small", 12288)
        want = {a.mountpoint: 2 * MiB, b.mountpoint: 12288}
        deadline, got = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            got = {mp: v for (mp, _c, _r), v in metrics(port).items() if mp in want}
            if got == want:
                break
            time.sleep(1)
        else:
            pytest.fail(f"installed exporter: {got} != {want}\n" + "\n".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)        # the unit's KillSignal
        proc.wait(60)
    assert proc.returncode == 0, "\n".join(lines)
    assert our_bpf_programs() == []


def test_uninstall_leaves_nothing(tmp_path):
    dirs = {"PREFIX": tmp_path / "usr", "LIBDIR": tmp_path / "opt" / "ovltrace",
            "UNITDIR": tmp_path / "systemd"}
    make("install", dirs)
    assert (dirs["LIBDIR"] / "bpf" / "ovltrace.bpf.c").is_file()
    man = dirs["PREFIX"] / "share" / "man" / "man8"
    assert sorted(p.name for p in man.iterdir()) == sorted(p.name for p in (ROOT / "man").glob("*.8"))
    make("uninstall", dirs)
    left = [str(p) for p in tmp_path.rglob("*") if p.is_file()]
    assert left == [], left
    shutil.rmtree(tmp_path / "usr", ignore_errors=True)
