"""`ovltrace top` for real: a terminal (tmux), real BPF, the demo's
sandbox containers running their workload."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BANNER, ROOT, Trace
from ovltrace.demo import build, start_workload

pytestmark = pytest.mark.live

DEMO = ["webshop", "syncer", "batch", "cache"]


@pytest.fixture(scope="module")
def demo():
    """The demo's containers; the tests start the workload once top traces,
    so its writes are seen however slow the compile was."""
    setup = build(4)
    try:
        yield setup
    finally:
        setup.sandbox.close()


class Tmux:
    """One tmux server (own socket, no user config) with a shell in a pane."""

    def __init__(self, width: int = 110, height: int = 32):
        self.sock = f"ovltrace-test-{os.getpid()}-{time.monotonic_ns()}"
        self.tmp = tempfile.mkdtemp(prefix="ovltrace-top-")
        self.err = os.path.join(self.tmp, "stderr")
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                   "env -i PATH=/usr/bin:/bin TERM=screen HOME=/root PS1='$ ' bash --norc --noprofile")

    def _tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"tmux {args}: {r.stderr}"
        return r.stdout

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)

    def key(self, *names: str) -> None:
        for n in names:
            self._tmux("send-keys", "-t", "t", n)
            time.sleep(0.05)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def wait(self, pred, timeout: float = 30, what: str = "") -> str:
        end = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{s}\nstderr:\n"
                                     f"{self.stderr()}")
            time.sleep(0.2)

    def stderr(self) -> str:
        try:
            with open(self.err) as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux():
    t = Tmux()
    try:
        yield t
    finally:
        t.close()


def top_command(demo, *extra: str, err: str) -> str:
    args = [sys.executable, "-m", "ovltrace.cli", "top", *extra]
    for mp in demo.mountpoints:
        args += ["--overlay", mp]
    return f"cd {shlex.quote(str(ROOT))} && {shlex.join(args)} 2>{shlex.quote(err)}; echo TOP-EXIT=$?"


def table(screen: str) -> list[list[str]]:
    """The rows of the container table: [name, col, col, ...]."""
    lines = screen.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.lstrip().startswith("NAME"))
    except StopIteration:
        return []
    rows = []
    for l in lines[start + 1:]:
        if not re.match(r"^[> ] \S", l) or l.startswith("q:quit"):
            break
        rows.append(l[2:].split())
    return rows


def start_top(tmux: Tmux, demo, *extra: str) -> str:
    tmux.type(top_command(demo, "-d", "0.5", *extra, err=tmux.err))
    tmux.key("Enter")
    end = time.monotonic() + 90
    while BANNER not in tmux.stderr():
        assert "error" not in tmux.stderr(), tmux.stderr()
        assert time.monotonic() < end, f"no banner; stderr: {tmux.stderr()}\n{tmux.screen()}"
        time.sleep(0.2)
    start_workload(demo)
    return tmux.wait(lambda s: {r[0] for r in table(s)} >= set(DEMO), 20, "the demo containers")


def parse_size(text: str) -> float:
    if text == "0":
        return 0.0
    return float(text[:-1]) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]]


def test_top_screen_keys_and_exit(tmux, demo):
    screen = start_top(tmux, demo)
    assert "ovltrace top" in screen and "hooks:" in screen and "sort STALL99" in screen
    assert BANNER in tmux.stderr()

    # the syncfs neighbour ranks first by syncfs stall
    screen = tmux.wait(lambda s: table(s) and table(s)[0][0] == "syncer"
                       and table(s)[0][6] != "-", 30, "syncer first with a stall")
    assert all(r[6] == "-" for r in table(screen)[1:]), screen

    # its victims in the syncfs pane, with their share
    tmux.key("y")
    screen = tmux.wait(lambda s: re.search(r"syncfs syncer .*(webshop|batch|cache)[^,]* \d+%", s),
                       30, "syncer's victims in the syncfs log")
    assert "VICTIMS" in screen

    # the interference matrix has syncer as a caller
    tmux.key("x")
    tmux.wait(lambda s: re.search(r"syncer -> (webshop|batch|cache)", s), 20, "the matrix")
    tmux.key("t")
    tmux.wait(lambda s: "NAME" in s and "q:quit" in s, 10, "the table again")

    # sort: '<' four times from STALL99 is DIRTY/s, twice more is NAME
    tmux.key("<", "<", "<", "<")
    screen = tmux.wait(lambda s: "sort DIRTY/s" in s and "DIRTY/s*" in s, 10, "sort DIRTY/s")
    rates = [parse_size(r[2]) for r in table(screen)]
    assert rates == sorted(rates, reverse=True), screen
    tmux.key("<", "<")
    screen = tmux.wait(lambda s: "sort NAME" in s, 10, "sort NAME")
    assert [r[0] for r in table(screen)] == sorted(DEMO), screen
    tmux.key("s")
    tmux.wait(lambda s: "sort INODES" in s, 10, "s: next column")

    # filter
    tmux.key("/")
    tmux.type("web")
    tmux.key("Enter")
    screen = tmux.wait(lambda s: "filter 'web'" in s and [r[0] for r in table(s)] == ["webshop"],
                       10, "only webshop")
    assert "syncer" not in "\n".join(" ".join(r) for r in table(screen))
    tmux.key("Escape")
    tmux.wait(lambda s: len(table(s)) == 4 and "filter" not in s.splitlines()[0], 10, "filter cleared")

    # pause, detail, help
    tmux.key("Space")
    tmux.wait(lambda s: "PAUSED" in s.splitlines()[0], 10, "PAUSED")
    tmux.key("p")
    tmux.wait(lambda s: "PAUSED" not in s.splitlines()[0], 10, "resumed")
    tmux.key("g", "Enter")
    tmux.wait(lambda s: "mountpoint" in s and "/merged" in s and "upperdir" in s, 10, "detail")
    tmux.key("?")
    tmux.wait(lambda s: "this help" in s, 10, "help")
    tmux.key("Escape")

    # q exits, the shell works and the terminal is sane again
    tmux.key("q")
    tmux.wait(lambda s: "TOP-EXIT=0" in s, 20, "top to exit")
    stty = os.path.join(tmux.tmp, "stty")
    tmux.type(f"stty -a > {stty}; echo STTY-DONE")
    tmux.key("Enter")
    screen = tmux.wait(lambda s: re.search(r"^STTY-DONE", s, re.M), 10, "stty")
    assert "stty -a >" in screen                              # what was typed is echoed
    with open(stty) as f:
        flags = set(f.read().replace(";", " ").split())
    assert {"icanon", "echo", "isig", "icrnl", "opost"} <= flags, flags
    assert "Traceback" not in tmux.stderr()


def test_top_resize_80x24(tmux, demo):
    start_top(tmux, demo)
    for w, h in ((80, 24), (50, 12), (80, 24)):
        tmux.resize(w, h)
        time.sleep(0.3)
    screen = tmux.wait(lambda s: len(table(s)) == 4, 10, "the table at 80x24")
    lines = screen.split("\n")
    assert len(lines) >= 24 and all(len(l) <= 80 for l in lines)
    assert "STALL99" in screen and "ERR" in screen          # every column fits in 80
    assert {r[0] for r in table(screen)} == set(DEMO)
    assert all(len(r) == 9 for r in table(screen)), screen
    assert "q:quit" in lines[23]                               # the footer on the last line
    tmux.key("y")
    tmux.wait(lambda s: "VICTIMS" in s, 10, "the syncfs log at 80x24")
    tmux.key("q")
    tmux.wait(lambda s: "TOP-EXIT=0" in s, 20, "top to exit")


def test_top_batch_live(demo):
    """-b -n: plain frames on stdout, nothing else there, banner on stderr."""
    args = [sys.executable, "-m", "ovltrace.cli", "top", "-b", "-n", "3", "-d", "1"]
    for mp in demo.mountpoints:
        args += ["--overlay", mp]
    t = Trace(args[3:])
    t.wait_attached(120)
    start_workload(demo)
    rc, out = t.finish()
    r = subprocess.CompletedProcess(args, rc, out, t.stderr)
    assert r.returncode == 0, r.stderr
    assert BANNER in r.stderr and "Traceback" not in r.stderr
    frames = r.stdout.split("ovltrace top - ")
    assert frames[0] == "" and len(frames) == 4, r.stdout
    for f in frames[1:]:
        assert "4 overlays" in f.splitlines()[0]
        rows = table(f)
        assert {row[0] for row in rows} == set(DEMO), f
    last = {row[0]: row for row in table(frames[-1])}
    assert float(last["syncer"][5]) > 0                      # SYNC/s: it calls syncfs
    assert last["syncer"][6] != "-"                          # and has a stall p99
    assert re.search(r"syncfs syncer", frames[-1]) or re.search(r"syncfs syncer", frames[-2])
