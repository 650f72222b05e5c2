"""Names a container controls reach the operator inert, live: a process
with a hostile name (ESC, BEL, `|`, `](`, a tag, invalid UTF-8) calls
syncfs and sync, and a file with a hostile name loses its data on an
error-injected upper fs.  Every output is checked: the audit table,
Markdown, JSON, the HTML as Chromium parses it, `top -b` and the curses
`top` under tmux, and the exporter's /metrics; JSON and recordings keep
the exact bytes."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Trace, free_port
from ovltrace.untrusted import decode, visible
from ovltrace.workloads import error_leak_scenario

pytestmark = pytest.mark.live

COMM = b"\x1b[2J|x](y)<s>\xff"            # 14 bytes: the kernel keeps 15
FILE = b"\x1b[31m|](y)<script>\x07\xff.dat"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")   # \t and \n are layout

HOSTILE_CALLER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)   # PR_SET_NAME
fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
libc.syncfs(fd)
libc.sync()
"""


def ovltrace(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", *args], cwd=ROOT,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert not CONTROL.search(r.stderr.decode("utf-8", "surrogateescape"))
    return r.stdout.decode("utf-8", "surrogateescape")


def pipes_per_row(md: str) -> list[int]:
    """Unescaped `|` per line of each Markdown table."""
    return [len(re.findall(r"(?<!\\)\|", line)) for line in md.splitlines()
            if line.startswith("|")]


def test_hostile_names_are_inert_everywhere(tmp_path):
    rec = tmp_path / "rec.jsonl.gz"
    port = free_port()
    state: dict = {}

    def start(sb, a, b):
        only = ["--overlay", a.mountpoint, "--overlay", b.mountpoint]
        state["a"] = a.mountpoint
        state["record"] = Trace(["record", "-o", str(rec)] + only)
        state["exporter"] = Trace(["exporter", "--web.listen-address", f"127.0.0.1:{port}"]
                                  + only)
        for t in ("record", "exporter"):
            state[t].wait_attached(120)

    def stop():
        subprocess.run([sys.executable, "-c", HOSTILE_CALLER, COMM.hex(), state["a"]],
                       check=True, timeout=60)
        time.sleep(1.5)                    # the exporter samples twice a second
        state["metrics"] = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for t in ("record", "exporter"):
            state[t].signal(signal.SIGINT)
            rc, _ = state[t].finish()
            assert rc == 0, state[t].stderr

    try:
        error_leak_scenario(filename=FILE, before_writes=start, before_fsync=stop)
    finally:
        for t in ("record", "exporter"):
            if t in state and state[t].proc.poll() is None:
                state[t].proc.kill()
    comm, shown_comm = decode(COMM), visible(decode(COMM))

    # JSON: the exact bytes, from a recording replayed anywhere
    rep = json.loads(ovltrace("audit", "--from", str(rec), "--format", "json"))
    comms = {f["comm"] for f in rep["flushes"]}
    assert comm in comms, comms
    paths = [i["path"] for e in rep["errors_by_container"] for i in e["inodes"] if i["path"]]
    assert any(p.encode("utf-8", "surrogateescape").endswith(b"/" + FILE) for p in paths), paths
    assert rep["silent_losses"], "the hostile file's loss is the silent loss"

    # the terminal table: no control byte, the name shown escaped
    table = ovltrace("audit", "--from", str(rec))
    assert not CONTROL.search(table)
    assert shown_comm[:10] in table
    assert "\\x1b[31m" in table                      # the file name, escaped

    # Markdown: no control byte, no extra cell, no live link, image or tag
    md = ovltrace("audit", "--from", str(rec), "--format", "markdown")
    assert not CONTROL.search(md)
    for block in md.split("\n\n"):
        rows = pipes_per_row(block)
        assert len(set(rows)) <= 1, block
    assert not re.search(r"(?<!\\)\]\(", md) and "<s>" not in md and "<script" not in md

    # HTML, as the browser parses it
    page = tmp_path / "report.html"
    ovltrace("audit", "--from", str(rec), "-o", str(page))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (apt-get install chromium)"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    body = re.sub(r'<script type="application/json".*?</script>', "", dom, flags=re.S)
    assert "<script" not in body and "<s>" not in body, "a name became markup"
    assert "\\x1b[2J|x](y)&lt;s&gt;\\xff" in body          # shown as text
    assert not CONTROL.search(body)

    # top -b over the recording
    frames = ovltrace("top", "--replay", str(rec), "-b", "-d", "0.5")
    assert not CONTROL.search(frames) and "SILENT LOSS" in frames

    # the curses top under tmux: the syncfs log shows the name escaped
    sock = str(tmp_path / "tmux.sock")
    cmd = f"cd {ROOT} && {sys.executable} -m ovltrace.cli top --replay {rec} -d 0.2; sleep 30"
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "120", "-y", "40", cmd],
                   check=True)
    try:
        time.sleep(2)
        subprocess.run(["tmux", "-S", sock, "send-keys", "y"], check=True)
        screen = ""
        for _ in range(50):
            time.sleep(0.2)
            screen = subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"],
                                    capture_output=True, text=True).stdout
            if "\\x1b[2J" in screen:
                break
        assert "\\x1b[2J" in screen, screen           # a raw ESC would have cleared it
        subprocess.run(["tmux", "-S", sock, "send-keys", "q"], check=True)
    finally:
        # the terminal's hangup ends top too
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)

    # /metrics: the host process's comm label, escaped and bounded
    labels = [s.labels for fam in text_string_to_metric_families(state["metrics"])
              for s in fam.samples]
    comms = {lv.get("comm") for lv in labels if lv.get("comm")}
    assert shown_comm in comms, comms
    for lv in labels:
        for v in lv.values():
            assert not CONTROL.search(v) and len(v) <= 128
