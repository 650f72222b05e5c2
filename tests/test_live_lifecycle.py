"""Attach/detach for real: nothing stays in the kernel after ovltrace
exits, however it exits; bad input gives one line and a non-zero exit."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import OVLTRACE, ROOT, Trace, by_mountpoint, our_bpf_programs, write_file

pytestmark = pytest.mark.live


def _run(args, **kw):
    return subprocess.run(OVLTRACE + args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


def _wait_gone(timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = our_bpf_programs()
        if not left:
            return []
        time.sleep(0.2)
    return our_bpf_programs()


@pytest.mark.parametrize("how", ["duration", "SIGINT", "SIGTERM"])
def test_no_program_left_after_exit(how):
    assert _wait_gone() == [], "programs of an earlier run still loaded"
    t = Trace(["audit", "--format", "json", "-d", "2s" if how == "duration" else "120s"])
    t.wait_attached()
    loaded = our_bpf_programs()
    assert len(loaded) >= 8, loaded             # the check below can fail
    if how != "duration":
        t.signal(getattr(signal, how))
    rc, out = t.finish()
    assert rc == 0, t.stderr
    assert '"version": 2' in out                  # the report is still printed
    assert _wait_gone() == []


def test_killed_hard_leaves_nothing():
    t = Trace(["audit", "-d", "120s"])
    t.wait_attached()
    assert our_bpf_programs()
    t.proc.kill()
    t.finish()
    assert _wait_gone() == []


def _one_line_error(r, *words):
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert err[0].startswith("ovltrace: error:"), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def test_not_root_names_the_privilege():
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                       + OVLTRACE + ["audit", "-d", "1s"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "HOME": "/tmp"})
    _one_line_error(r, "root", "CAP_BPF")


def test_missing_btf():
    _one_line_error(_run(["audit", "-d", "1s", "--btf", "/missing"]), "/missing")


def test_corrupt_btf(tmp_path):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x9f\xeb\x01\x00" + b"\0" * 40)
    _one_line_error(_run(["audit", "-d", "1s", "--btf", str(bad)]), "BTF")


def test_unknown_overlay():
    _one_line_error(_run(["audit", "-d", "1s", "--overlay", "/definitely/not/an/overlay"]),
                    "not an overlay")


@pytest.mark.parametrize("args,word", [
    (["audit", "-d", "ten"], "duration"),
    (["audit", "-d", "0"], "duration"),
    (["audit", "-d", "-5s"], "duration"),
    (["audit", "--format", "xml"], "format"),
    (["mounts", "--format", "yaml"], "format"),
    (["audit", "--from", "/no/such/recording"], "/no/such/recording"),
])
def test_bad_flags(args, word):
    _one_line_error(_run(args), word)


def test_mounts_tracefs_itself():
    """tracefs is not mounted on a fresh machine: ovltrace mounts it."""
    tracefs = "/sys/kernel/tracing"
    if os.path.isdir(f"{tracefs}/events"):
        subprocess.run(["umount", tracefs], check=True)
    assert not os.path.isdir(f"{tracefs}/events")
    r = _run(["audit", "-d", "1s", "--format", "json"])
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(f"{tracefs}/events")


def test_ebpf_prints_the_program():
    r = _run(["audit", "--ebpf"])
    assert r.returncode == 0, r.stderr
    assert "RAW_TRACEPOINT_PROBE(writeback_mark_inode_dirty)" in r.stdout
    assert "#define OFF_inode_i_sb" in r.stdout


@pytest.mark.parametrize("command", [["audit", "-d", "120s", "--format", "json"],
                                     ["exporter", "--web.listen-address", "127.0.0.1:0"]])
def test_sighup_reloads_and_keeps_tracing(command, sandbox):
    ov = sandbox.add_overlay("hup")
    t = Trace(command + ["--overlay", ov.mountpoint])
    t.wait_attached()
    t.signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while time.monotonic() < end and not any("reloaded" in l for l in t.stderr_lines):
        time.sleep(0.1)
    assert any("reloaded" in l for l in t.stderr_lines), t.stderr
    assert t.proc.poll() is None                 # still running
    assert our_bpf_programs()
    # ...and still tracing: a write after the reload is counted, exactly
    write_file(f"{ov.mountpoint}/after-hup", 1 << 20)
    time.sleep(1.0)                              # counters are sampled twice a second
    if command[0] == "exporter":
        url = next(re.search(r"(http://\S+/metrics)", l).group(1) for l in t.stderr_lines
                   if "serving metrics" in l)
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        dirtied = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ovltrace_overlay_dirtied_bytes_total{")
                   and f'mountpoint="{ov.mountpoint}"' in line]
        assert dirtied == [1 << 20], dirtied
    t.signal(signal.SIGTERM)
    rc, out = t.finish()
    assert rc == 0, t.stderr
    if command[0] == "audit":
        assert by_mountpoint(json.loads(out), ov.mountpoint)["bytes_dirtied"] == 1 << 20
    assert _wait_gone() == []

