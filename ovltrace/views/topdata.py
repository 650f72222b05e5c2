"""What `ovltrace top` shows, as data: one frame's rates, flush figures
and error log, from model snapshots through analysis.py (the same pairs,
stall shares and leak rule as the audit and the exporter).  top.py turns
a frame into lines; topui.py paints them."""
from __future__ import annotations

from dataclasses import dataclass

from .. import analysis
from ..counters import Counters
from ..format import display_name, errno_name
from ..model import Flush, Model, OverlayMeta
from ..untrusted import visible

STALL_WINDOW = 60.0      # seconds of flushes behind STALL99 and OTHERS


# ---- data -------------------------------------------------------------------

@dataclass
class TopRow:
    key: str
    meta: OverlayMeta
    live: bool
    dirty_inodes: int            # dirty upper inodes now
    dirtied_rate: float          # bytes/s dirtied this interval
    written_rate: float          # bytes/s written back this interval
    copyup_rate: float           # copy-ups/s
    syncfs_rate: float           # syncfs calls/s
    stall_p99: float | None      # p99 duration of flushes it called (window), None: none
    stall_max: float | None
    flushes: int                 # flushes it called (window)
    flushed_others: int          # bytes of others written back by its flushes (window)
    flushed_by_others: int       # bytes of its data others' flushes wrote back (window)
    waited: float                # its flushes' time spent on others' data (window)
    made_wait: float             # others' flushes' time spent on its data (window)
    errors: int                  # writeback errors + errors handed to it, since start
    total: Counters

    @property
    def container(self) -> str:
        return self.meta.container.name if self.meta.container else ""


@dataclass
class FsSummary:
    upper_dev: str
    fstype: str
    mountpoint: str
    overlays: int
    dirty_inodes: int            # dirty now, from the kernel's dirty-inode map
    wb_rate: float
    syncfs_rate: float
    errors: int


@dataclass
class ErrorLog:
    events: list[tuple[float, str]]      # (t, text), newest first
    leaks: list[str]
    losses: list[str]


@dataclass
class TopData:
    t: float                     # model time of this frame
    interval: float              # seconds since the previous frame
    window: float                # seconds of flushes in `flushes`
    rows: list[TopRow]
    fs: list[FsSummary]
    flushes: list[Flush]         # in the stall window, newest first
    metas: dict[str, OverlayMeta]
    hooks: list[dict]
    wall: float | None = None    # wall-clock time of the frame (title)
    errlog: ErrorLog | None = None
    note: str = ""               # "replay 12/60s", "end of recording"...
    interference: analysis.Interference | None = None    # of `flushes`
    lifecycle: analysis.Lifecycle | None = None          # container starts/stops in `flushes`

    def by_key(self) -> dict[str, TopRow]:
        return {r.key: r for r in self.rows}


def collect(model: Model, t_prev: float | None, t: float | None = None,
            window: float = STALL_WINDOW, wall: float | None = None) -> TopData:
    """One frame: rates over [t_prev, t], flush figures over the last
    `window` seconds (analysis.interference: the same pairs and stall
    shares as the audit and the exporter), dirty state now."""
    t = model.now if t is None else t
    t_prev = model.t0 if t_prev is None else min(t_prev, t)
    dt = t - t_prev
    w_start = max(model.t0, t - window)
    recent = model.snapshot(since=t_prev, t=t)            # rates
    win = model.snapshot(since=w_start, t=t, rows=False)  # flushes
    flushes = sorted(win.flushes, key=lambda f: -f.end)
    inter = analysis.interference(flushes, win.metas)
    life = analysis.lifecycle(flushes, win.metas)

    rows: list[TopRow] = []
    fs: dict[str, FsSummary] = {}
    for r in recent.overlays + recent.upper_fs:
        meta, w = r.meta, r.window
        s = fs.get(meta.upper_dev)
        if s is None:
            s = fs[meta.upper_dev] = FsSummary(meta.upper_dev, meta.fstype or "", "", 0, 0,
                                               0.0, 0.0, 0)
        s.dirty_inodes += r.dirty_inodes_now
        s.wb_rate += analysis.rate(w, dt, "bytes_written_back")
        s.syncfs_rate += analysis.rate(w, dt, "syncfs_calls")
        s.errors += r.total.writeback_errors
        if meta.kind != "overlay":
            s.mountpoint = meta.mountpoint
            continue
        s.overlays += 1
        p = inter.parties.get(meta.key) or analysis.PartyStall(meta.key)
        d = p.flush_durations
        rows.append(TopRow(
            key=meta.key, meta=meta, live=r.live, dirty_inodes=r.dirty_inodes_now,
            dirtied_rate=analysis.rate(w, dt, "bytes_dirtied"),
            written_rate=analysis.rate(w, dt, "bytes_written_back"),
            copyup_rate=analysis.rate(w, dt, "copy_ups"),
            syncfs_rate=analysis.rate(w, dt, "syncfs_calls"),
            stall_p99=analysis.percentile(d, 99), stall_max=max(d) if d else None,
            flushes=len(d), flushed_others=p.others_bytes_flushed,
            flushed_by_others=p.bytes_flushed_by_others,
            waited=p.waited_on_others_seconds, made_wait=p.made_others_wait_seconds,
            errors=r.total.writeback_errors + r.total.errors_returned, total=r.total))
    return TopData(t=t, interval=dt, window=t - w_start, rows=rows, fs=list(fs.values()),
                   flushes=flushes, metas=win.metas, hooks=model.hooks, wall=wall,
                   interference=inter, lifecycle=life)


class ErrorTracker:
    """The error and leak log since the start.  Leak detection needs a
    whole-session snapshot; errors are rare, so it is recomputed only when
    a new record arrived."""

    def __init__(self):
        self._seen = None
        self._log: ErrorLog | None = None

    def log(self, model: Model, t: float) -> ErrorLog:
        seen = model.record_count()
        if seen != self._seen or self._log is None:
            self._seen = seen
            self._log = build_error_log(model.snapshot(since=model.t0, t=t))
        return self._log


def build_error_log(snap) -> ErrorLog:
    errs = analysis.errors(snap)
    if not (snap.wb_errors or errs.returned):
        return ErrorLog([], [], [])
    metas = snap.metas

    def nm(key):
        return _name(metas, key, 14)

    events: list[tuple[float, str]] = []
    per_key: dict[tuple[str, int], list] = {}
    for e in snap.wb_errors:
        per_key.setdefault((e.key, e.errno), []).append(e)
    for (key, err), es in per_key.items():
        inodes = len({e.ino for e in es})
        events.append((es[-1].t, f"WBERR  {nm(key)}: {len(es)} x {errno_name(err)} on "
                                 f"{inodes} inode{'s' if inodes != 1 else ''}"))
    for e in errs.returned:
        events.append((e.t, f"RETURN {nm(e.key)}: {e.call} -> {errno_name(e.errno)} "
                            f"({e.pid}/{visible(e.comm)})"))
    events.sort(key=lambda ev: -ev[0])
    leaks = list(dict.fromkeys(
        f"LEAK: {nm(l.victim)} got {errno_name(l.errno)} from {l.call}; "
        f"the lost data was {nm(l.source)}'s" for l in errs.leaks))
    losses = [f"SILENT LOSS: {nm(s.key)} lost data ({s.writeback_errors} writeback errors, "
              f"{','.join(errno_name(e) for e in s.errnos)}), never told" for s in errs.losses]
    return ErrorLog(events, leaks, losses)


# ---- names -------------------------------------------------------------------

def _name(metas: dict, key: str | None, width: int, flushes=()) -> str:
    """A party's name (analysis.party_name) in `width` columns."""
    if key in metas:
        return display_name(metas[key], width)
    return _fit(analysis.party_name(key, metas, flushes), width)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"
