"""`ovltrace top` without BPF: rendering, keys and batch frames on a
hand-built Model (and on a recording of it, through the real CLI)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from ovltrace.model import Container, Counters, ErrorReturned, Flush, Model, OverlayMeta, Victim, WbError
from ovltrace.recording import RecordingWriter, apply, read_records
from ovltrace.analysis import percentile
from ovltrace.views.top import (COLUMN_KEYS, UIState, handle_key, render, render_batch,
                                visible_rows)
from ovltrace.views.topui import Frames

MiB = 1 << 20
LONG_ID = "3f2a9c1be07d4a55f1c0aa93e0d1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3"
MOUNTS = {
    "o1": "/srv/x/webshop/merged",
    "o2": "/srv/x/syncer/merged",
    "o3": "/srv/x/batch/merged",
    "o4": f"/var/lib/docker/overlay2/{LONG_ID}/merged",
    "o5": "/srv/x/cache/merged",
}
HOOKS = [{"name": n, "what": n, "mechanism": "tracepoint", "reason": None}
         for n in ("inode_dirty", "folio_dirty", "writeback", "wb_error", "syncfs")] + \
        [{"name": "fsync", "what": "fsync", "mechanism": None, "reason": "member missing"}]


def c(**kw) -> Counters:
    return Counters(**kw)


def build_model(sink=None) -> Model:
    """Five overlays on upper fs 7:0, frames at t=10 and t=12:
      batch   dirties 8 MiB/s, writes back 4 MiB/s
      webshop 64 KiB/s, 2 copy-ups in the interval
      syncer  4 syncfs calls, flushes of 0.1, 0.2, 0.4 s that wrote back
              others' data (batch 6 MiB, webshop 1 MiB)
      cache   a writeback error; webshop's syncfs got EIO -> a leak
      o4      a docker overlay with no known container (long id)."""
    m = Model(0.0)
    m.sink = sink
    m.set_hooks(HOOKS)
    for key, mp in MOUNTS.items():
        m.add(OverlayMeta(key=key, kind="overlay", mountpoint=mp, upper_dev="7:0",
                          upperdir=mp.replace("merged", "diff"), fstype="ext4", first_seen=0.0,
                          container=Container("docker", "c0ffee" * 10, "batch-job")
                          if key == "o3" else None))
    m.add(OverlayMeta(key="fs1", kind="upperfs", mountpoint="/srv/x/upper", upper_dev="7:0",
                      fstype="ext4", first_seen=0.0))
    zero = {k: Counters() for k in list(MOUNTS) + ["fs1"]}
    m.counters(0.0, zero)
    at10 = {"o1": c(bytes_dirtied=MiB, inodes_dirtied=10, bytes_written_back=MiB, copy_ups=1),
            "o2": c(syncfs_calls=10), "o3": c(bytes_dirtied=40 * MiB, bytes_written_back=30 * MiB),
            "o4": Counters(), "o5": c(bytes_dirtied=MiB), "fs1": Counters()}
    m.counters(10.0, at10, {"o1": 3, "o3": 1})
    at12 = {"o1": c(bytes_dirtied=MiB + 128 * 1024, inodes_dirtied=12, bytes_written_back=2 * MiB,
                    copy_ups=3, syncfs_calls=1, errors_returned=1),
            "o2": c(syncfs_calls=14),
            "o3": c(bytes_dirtied=56 * MiB, bytes_written_back=38 * MiB),
            "o4": Counters(),
            "o5": c(bytes_dirtied=2 * MiB, bytes_written_back=MiB, writeback_errors=1),
            "fs1": c(bytes_written_back=MiB)}
    for i, d in enumerate((0.1, 0.2, 0.4)):
        m.flush(Flush(kind="syncfs", pid=4242, tid=4242, comm="syncfs-loop", start=10.2 + i * 0.5,
                      duration=d, ret=0, target="o2", upper_dev="7:0",
                      victims=[Victim("o3", 2 * MiB), Victim("o2", 4096)]
                      + ([Victim("o1", MiB)] if i == 2 else [])))
    m.wb_error(WbError(11.0, "o5", 77, 5))
    m.flush(Flush(kind="syncfs", pid=99, tid=99, comm="app", start=11.5, duration=0.01, ret=-5,
                  target="o1", upper_dev="7:0", victims=[]))
    m.error_returned(ErrorReturned(11.51, "o1", "syncfs", 5, 99, "app"))
    m.counters(12.0, at12, {"o1": 4, "o3": 2, "o5": 1})
    return m


@pytest.fixture
def data():
    m = build_model()
    f = Frames(m, started=1_700_000_000.0)
    f.t_prev = 10.0
    return f.next(12.0)


def row(data, key):
    return next(r for r in data.rows if r.key == key)


def test_collect_rates_and_stalls(data):
    assert data.interval == 2.0
    assert {r.key for r in data.rows} == set(MOUNTS)           # the upper fs rest is no row
    b, s, w = row(data, "o3"), row(data, "o2"), row(data, "o1")
    assert b.dirtied_rate == 8 * MiB and b.written_rate == 4 * MiB
    assert w.copyup_rate == 1.0 and w.dirty_inodes == 4
    assert s.syncfs_rate == 2.0
    assert s.stall_p99 == 0.4 and s.stall_max == 0.4 and s.flushes == 3
    assert s.flushed_others == 7 * MiB                          # its own 4 KiB not counted
    assert b.flushed_by_others == 6 * MiB
    assert row(data, "o5").errors == 1 and w.errors == 1
    fs = data.fs[0]
    assert fs.upper_dev == "7:0" and fs.overlays == 5 and fs.mountpoint == "/srv/x/upper"
    assert fs.wb_rate == (MiB + 8 * MiB + MiB + MiB) / 2       # overlays + rest of the fs
    assert fs.dirty_inodes == 7 and fs.errors == 1


def test_percentile_nearest_rank():
    assert percentile([], 99) is None
    assert percentile([0.5], 99) == 0.5
    assert percentile([float(i) for i in range(1, 201)], 99) == 198.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_main_screen_80x24(data):
    st_ = UIState()
    screen = render(data, st_, 80, 24)
    assert len(screen.lines) == 24
    assert all(len(l) <= 80 for l in screen.lines)
    text = "\n".join(screen.lines)
    names = [l.split()[1] if l.startswith(">") else l.split()[0]
             for l in screen.lines if re.match(r"^[> ] \S", l)][1:]
    assert names[0] == "syncer"                    # the only one with a stall
    assert {"webshop", "batch-job", "cache", "syncer"} <= set(names)
    long_name = [n for n in names if "~" in n]
    assert long_name and long_name[0].startswith(LONG_ID[:4]) and long_name[0].endswith(LONG_ID[-4:])
    assert "hooks: 5/6 on via tracepoint; OFF: fsync" in text
    assert "7:0 ext4 /srv/x/upper" in text
    assert screen.lines[-1].startswith("q:quit")
    sel = [i for i, s in screen.styles.items() if s == "selected"]
    assert len(sel) == 1 and screen.lines[sel[0]].startswith("> syncer")


def test_sort_keys_change_order(data):
    st_ = UIState()
    first = lambda: visible_rows(data, st_)[0].meta.label
    assert first() == "/srv/x/syncer/merged"
    handle_key(st_, ">", data)
    assert st_.sort == "others" and first() == "/srv/x/syncer/merged"
    handle_key(st_, "<", data)
    handle_key(st_, "<", data)
    handle_key(st_, "<", data)
    assert st_.sort == "copyups" and first() == "/srv/x/webshop/merged"
    st_.sort = "dirty"
    assert first() == "batch-job"
    handle_key(st_, "r", data)
    assert visible_rows(data, st_)[-1].meta.label == "batch-job"
    st_ = UIState(sort="name")
    labels = [r.meta.label for r in visible_rows(data, st_)]
    assert labels == sorted(labels, key=str.lower)
    for _ in COLUMN_KEYS:                             # s cycles through every column
        handle_key(st_, "s", data)
    assert st_.sort == "name"


def test_filter_pause_quit_and_selection(data):
    st_ = UIState()
    for k in "/web":
        handle_key(st_, k, data)
    assert st_.editing == "web"
    assert "filter (Enter to apply" in render(data, st_).lines[-1]
    handle_key(st_, "\n", data)
    assert st_.filter == "web" and st_.editing is None
    screen = "\n".join(render(data, st_).lines)
    assert "webshop" in screen and "syncer" not in screen and "filter 'web'" in screen
    handle_key(st_, "\x1b", data)                    # Esc clears the filter on the table
    assert st_.filter == ""
    handle_key(st_, "j", data)
    handle_key(st_, "KEY_DOWN", data)
    handle_key(st_, "k", data)
    assert st_.selected == 1
    key = st_.selected_key
    st_.sort = "name"                                # the cursor follows the overlay
    render(data, st_)
    assert st_.selected_key == key
    fresh = UIState()                                # untouched cursor: stays on the top row
    render(data, fresh)
    fresh.sort = "name"
    render(data, fresh)
    assert fresh.selected == 0 and fresh.selected_key == visible_rows(data, fresh)[0].key
    handle_key(st_, " ", data)
    assert st_.paused and "PAUSED" in render(data, st_).lines[0]
    handle_key(st_, "p", data)
    assert not st_.paused
    handle_key(st_, "q", data)
    assert st_.quit


def test_screens(data):
    st_ = UIState()
    handle_key(st_, "y", data)
    text = "\n".join(render(data, st_, 80, 24).lines)
    assert st_.screen == "syncfs"
    assert "syncer" in text and "batch-job 66%, webshop 33%" in text
    wide = "\n".join(render(data, st_, 120, 24).lines)
    assert "batch-job 2.0M 66%, webshop 1.0M 33%" in wide and "batch-job 2.0M 99%" in wide
    assert "EIO" in text                              # the failed syncfs of webshop
    handle_key(st_, "x", data)
    text = "\n".join(render(data, st_, 80, 24).lines)
    assert re.search(r"syncer\s+6\.0M\s+1\.0M", text), text
    assert re.search(r"syncer -> batch-job\s+6\.0M\s+3", text)
    handle_key(st_, "e", data)
    text = "\n".join(render(data, st_, 80, 24).lines)
    assert "LEAK: webshop got EIO from syncfs; the lost data was cache's" in text
    assert "WBERR  cache: 1 x EIO on 1 inode" in text
    handle_key(st_, "t", data)
    handle_key(st_, "\n", data)                       # detail of the selected (syncer)
    text = "\n".join(render(data, st_, 80, 24).lines)
    assert st_.screen == "detail" and "/srv/x/syncer/merged" in text
    assert "3 flushes called, p99 400.0ms" in text and "Its flushes:" in text
    handle_key(st_, "?", data)
    assert "this help" in "\n".join(render(data, st_, 80, 24).lines)
    handle_key(st_, "\x1b", data)
    assert st_.screen == "main"


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 200), h=st.integers(1, 80), screen=st.sampled_from(
    ["main", "syncfs", "matrix", "errors", "detail", "help"]), sel=st.integers(0, 10))
def test_any_size_fits(w, h, screen, sel):
    m = build_model()
    f = Frames(m)
    f.t_prev = 10.0
    d = f.next(12.0)
    s = render(d, UIState(screen=screen, selected=sel), w, h)
    assert len(s.lines) == max(h, 8)
    assert all(len(l) <= max(w, 40) for l in s.lines)


def parse_human(text: str) -> float:
    if text in ("0", "-"):
        return 0.0
    mult = {"B": 1, "K": 1024, "M": MiB, "G": 1 << 30}[text[-1]]
    return float(text[:-1]) * mult


def parse_frames(out: str) -> list[dict]:
    """{name: {column: text}} per frame of `top -b` output."""
    frames = []
    for chunk in out.split("ovltrace top - ")[1:]:
        lines = chunk.splitlines()
        hi = next(i for i, l in enumerate(lines) if l.lstrip().startswith("NAME"))
        cols = lines[hi].replace("*", "").replace("^", "").split()
        rows = {}
        for l in lines[hi + 1:]:
            if not l.strip():
                break
            parts = l.split()
            rows[parts[0]] = dict(zip(cols, parts))
        frames.append({"title": lines[0], "rows": rows, "text": chunk})
    return frames


def check_frame_against_model(frame: dict, model: Model, t0: float, t1: float) -> None:
    snap = model.snapshot(since=t0, t=t1)
    dt = t1 - t0
    assert len(frame["rows"]) == len(snap.overlays)
    for r in snap.overlays:
        from ovltrace.format import display_name
        got = frame["rows"][display_name(r.meta, 40)]
        for col, value in (("DIRTY/s", r.window.bytes_dirtied / dt),
                           ("WBACK/s", r.window.bytes_written_back / dt)):
            assert parse_human(got[col]) == pytest.approx(value, rel=0.05, abs=1), (col, got)
        assert float(got["SYNC/s"]) == pytest.approx(r.window.syncfs_calls / dt, abs=0.05)
        assert float(got["CPUP/s"]) == pytest.approx(r.window.copy_ups / dt, abs=0.05)
        assert int(got["INODES"]) == r.dirty_inodes_now
        assert int(got["ERR"]) == r.total.writeback_errors + r.total.errors_returned


def test_batch_frame_matches_model(data):
    m = build_model()
    out = render_batch(data, UIState())
    frames = parse_frames(out)
    assert len(frames) == 1
    check_frame_against_model(frames[0], m, 10.0, 12.0)
    assert any(n.startswith(LONG_ID[:8]) for n in frames[0]["rows"])
    assert "STALL99" in out and "LEAK: webshop" in out
    assert "flushes in the last 2.0s:" in out


def model_until(path: str, t: float) -> Model:
    """The recording replayed into a fresh model up to time t (what the
    model looked like then; 'dirty now' is not kept as history)."""
    header, records = read_records(path)
    m = Model(0.0)
    for rec in records:
        when = rec.get("t", rec.get("start", 0.0) + rec.get("duration", 0.0))
        if rec["type"] == "overlay":
            when = rec["meta"]["first_seen"]
        if when <= t:
            apply(m, rec)
    return m


def test_replay_batch_through_cli(tmp_path):
    """A recording of the hand-built model, replayed by the real CLI in
    batch mode: every frame agrees with the model at that frame's time."""
    path = str(tmp_path / "rec.jsonl")
    w = RecordingWriter(path)
    m = build_model(sink=w)
    w.close(12.0)
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "top", "--replay", path, "-b",
                        "-d", "2", "-n", "6", "--sort", "dirty"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    frames = parse_frames(r.stdout)
    # recording clock: first sample at t=0, frames at 2, 4, ... 12, then it ends
    assert len(frames) == 6
    for i, fr in enumerate(frames):
        t1 = 2.0 * (i + 1)
        check_frame_against_model(fr, model_until(path, t1), t1 - 2.0, t1)
        assert "sort DIRTY/s" in fr["title"]
    assert list(frames[-1]["rows"])[0] == "batch-job"
    assert "replay ended" in frames[-1]["title"]


def test_cli_errors_are_one_line(tmp_path):
    def run(*args, **kw):
        return subprocess.run([sys.executable, "-m", "ovltrace.cli", "top", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    r = run("--replay", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and r.stderr.startswith("ovltrace: error: cannot read")
    assert "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    r = run("--replay", str(bad), "-b")
    assert r.returncode == 1 and "not an ovltrace recording" in r.stderr
    r = run("--sort", "nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    good = tmp_path / "good.jsonl"
    w = RecordingWriter(str(good))
    build_model(sink=w)
    w.close(12.0)
    r = run("--replay", str(good))                    # no terminal, no -b
    assert r.returncode == 1 and "top needs a terminal" in r.stderr
