"""The one core every view reads: plain data in, snapshots out.

No BPF and no I/O here.  The live session (session.py) and a replayed
recording feed the same `Model` with the same records, so every view works
the same on both.

Records fed in:
  * OverlayMeta   when an overlay (or an upper filesystem) starts being watched
  * gone(key, t)  when it is unmounted
  * counters(t, {key: Counters})   cumulative counters since it was watched
  * Flush         a finished syncfs / sync / umount, with its victims
  * WbError       a writeback error on an inode of an overlay
  * ErrorReturned a syncfs/fsync/fdatasync that returned an error
"""
from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, fields

SCHEMA_VERSION = 1

COUNTER_FIELDS = ("inodes_dirtied", "bytes_dirtied", "bytes_written_back", "copy_ups",
                  "copy_up_bytes", "writeback_errors", "fsync_calls", "syncfs_calls",
                  "errors_returned", "dirty_calls_pages", "dirty_calls_sync",
                  "dirty_calls_datasync", "dirty_calls_time",
                  # exact with the ovl_copy_up_flags / sync_filesystem hooks (issue 4);
                  # appended, so older recordings still read
                  "copy_ups_metadata_only", "copy_up_failures", "copy_up_ns", "sb_errseq_advances")


@dataclass(slots=True)
class Counters:
    inodes_dirtied: int = 0
    bytes_dirtied: int = 0
    bytes_written_back: int = 0
    copy_ups: int = 0
    copy_up_bytes: int = 0
    writeback_errors: int = 0
    fsync_calls: int = 0
    syncfs_calls: int = 0
    errors_returned: int = 0
    dirty_calls_pages: int = 0
    dirty_calls_sync: int = 0
    dirty_calls_datasync: int = 0
    dirty_calls_time: int = 0
    copy_ups_metadata_only: int = 0
    copy_up_failures: int = 0
    copy_up_ns: int = 0
    sb_errseq_advances: int = 0

    def __sub__(self, other: "Counters") -> "Counters":
        return Counters(*(max(0, getattr(self, f) - getattr(other, f)) for f in COUNTER_FIELDS))

    def __add__(self, other: "Counters") -> "Counters":
        return Counters(*(getattr(self, f) + getattr(other, f) for f in COUNTER_FIELDS))


@dataclass(frozen=True)
class ContainerRef:
    runtime: str
    id: str
    name: str
    pod: str | None = None
    namespace: str | None = None

    def to_json(self) -> dict:
        d = {"runtime": self.runtime, "id": self.id, "name": self.name}
        if self.pod:
            d["pod"] = self.pod
        if self.namespace:
            d["namespace"] = self.namespace
        return d


@dataclass
class OverlayMeta:
    key: str                     # unique for this incarnation of the mount
    kind: str                    # "overlay" or "upperfs" (the rest of an upper fs)
    mountpoint: str
    upper_dev: str               # "major:minor"
    mnt_ns: int = 0
    upperdir: str | None = None
    workdir: str | None = None
    options: tuple[str, ...] = ()
    container: ContainerRef | None = None
    fstype: str | None = None    # upper fs type
    dev: str | None = None       # the overlay's own superblock dev
    first_seen: float = 0.0
    gone_at: float | None = None

    @property
    def label(self) -> str:
        """What people call it: the container name, else the mountpoint."""
        return self.container.name if self.container else self.mountpoint


@dataclass(slots=True)
class Victim:
    key: str
    bytes_written_back: int


@dataclass
class Flush:
    kind: str                    # syncfs | sync | umount
    pid: int
    tid: int
    comm: str
    start: float                 # seconds on the session clock
    duration: float
    ret: int
    target: str | None           # overlay key the call targeted (syncfs/umount of an overlay)
    upper_dev: str | None        # upper fs it flushed (None: sync, all of them)
    victims: list[Victim] = field(default_factory=list)
    caller_container: ContainerRef | None = None
    path: str = ""               # umount: the path given
    target_dev: str | None = None
    synced_dev: str | None = None    # the sb sync_filesystem really synced (function hook)
    sb_err_advanced: bool = False    # that sb's s_wb_err moved during the flush


@dataclass
class WbError:
    t: float
    key: str
    ino: int
    errno: int


@dataclass
class ErrorReturned:
    t: float
    key: str                     # overlay the caller's fd belongs to
    call: str                    # syncfs | fsync | fdatasync
    errno: int
    pid: int
    comm: str


# ---- snapshot (what views read) -------------------------------------------

@dataclass
class OverlayRow:
    meta: OverlayMeta
    window: Counters             # during the snapshot window
    total: Counters              # since it was first watched
    dirty_inodes_now: int
    live: bool
    stall_caused: float = 0.0    # seconds other overlays' data made its flushes wait (see flushes)
    flushed_for_others: int = 0  # bytes of others written back by its flushes
    flushed_by_others: int = 0   # bytes of its data written back by others' flushes


@dataclass
class Leak:
    victim: str                  # overlay key handed the error
    source: str                  # overlay key whose inode failed
    errno: int
    t: float
    call: str = "syncfs"


@dataclass
class SilentLoss:
    key: str
    writeback_errors: int
    errnos: list[int]


@dataclass
class Snapshot:
    t: float
    window_start: float
    overlays: list[OverlayRow]
    upper_fs: list[OverlayRow]
    flushes: list[Flush]
    wb_errors: list[WbError]
    errors_returned: list[ErrorReturned]
    leaks: list[Leak]
    silent_losses: list[SilentLoss]
    metas: dict[str, OverlayMeta]
    hooks: list[dict] = field(default_factory=list)
    self_stats: dict = field(default_factory=dict)

    @property
    def window_seconds(self) -> float:
        return max(0.0, self.t - self.window_start)

    def label(self, key: str | None) -> str | None:
        if key is None:
            return None
        m = self.metas.get(key)
        return m.mountpoint if m else key

    def name(self, key: str | None) -> str:
        if key is None:
            return "-"
        m = self.metas.get(key)
        return m.label if m else key

    def interference(self) -> dict[tuple[str, str], tuple[int, float, int]]:
        """(caller, victim) -> (bytes written back, stall seconds, flushes).
        The caller is the overlay a flush targeted, else the caller's
        container name, else its comm."""
        out: dict[tuple[str, str], tuple[int, float, int]] = {}
        for f in self.flushes:
            caller = flush_caller(f)
            for v in f.victims:
                b, s, n = out.get((caller, v.key), (0, 0.0, 0))
                out[(caller, v.key)] = (b + v.bytes_written_back, s + f.duration, n + 1)
        return out


def flush_caller(f: Flush) -> str:
    if f.target:
        return f.target
    if f.caller_container:
        return f"container:{f.caller_container.name}"
    return f"pid:{f.pid}:{f.comm}"


class Model:
    def __init__(self, t0: float = 0.0):
        self.t0 = t0
        self.metas: dict[str, OverlayMeta] = {}
        self.samples: dict[str, list[tuple[float, Counters]]] = {}
        self.dirty_now: dict[str, int] = {}
        self.flushes: list[Flush] = []
        self.wb_errors: list[WbError] = []
        self.errors_returned: list[ErrorReturned] = []
        self.hooks: list[dict] = []
        self.self_stats: dict = {}
        self.now = t0
        self.max_samples = 4096     # per overlay; older ones are thinned
        self.history = 900.0        # seconds of samples kept (plus each overlay's first)
        self.max_records = 20000    # flushes / errors kept (an error storm must not eat memory)
        self.trimmed = 0            # records dropped by that cap (exact counts live in counters)
        self.first_wb_error: dict[str, WbError] = {}   # kept past the cap: leak/loss logic
        self.sink = None            # callable(type, payload): a recording listens here

    def _emit(self, kind: str, payload) -> None:
        if self.sink is not None:
            self.sink(kind, payload)

    # ---- input -----------------------------------------------------------
    def add(self, meta: OverlayMeta) -> None:
        self._emit("overlay", meta)
        self.metas[meta.key] = meta
        self.samples.setdefault(meta.key, [(meta.first_seen, Counters())])

    def gone(self, key: str, t: float) -> None:
        m = self.metas.get(key)
        if m and m.gone_at is None:
            self._emit("gone", (key, t))
            m.gone_at = t
            self.dirty_now.pop(key, None)

    def counters(self, t: float, values: dict[str, Counters],
                 dirty_now: dict[str, int] | None = None) -> None:
        self._emit("counters", (t, values, dirty_now))
        self.now = max(self.now, t)
        for key, c in values.items():
            s = self.samples.setdefault(key, [])
            if s and s[-1][1] == c and len(s) > 1 and s[-2][1] == c:
                s[-1] = (t, c)            # unchanged: move the last sample
            else:
                s.append((t, c))
            if len(s) > 2 and s[1][0] < t - self.history:
                # windows reach back `history` at most, or to the start
                i = bisect.bisect_left(s, t - self.history, key=lambda sample: sample[0])
                del s[1:max(1, i - 1)]
            if len(s) > self.max_samples:
                del s[1:len(s) // 2:2]    # keep the first, thin the old half
        if dirty_now is not None:
            self.dirty_now = {k: v for k, v in dirty_now.items() if k in self.metas}

    def _append(self, records: list, item) -> None:
        records.append(item)
        if len(records) > self.max_records:
            cut = len(records) - self.max_records * 3 // 4
            del records[:cut]
            self.trimmed += cut

    def flush(self, f: Flush) -> None:
        self._emit("flush", f)
        self._append(self.flushes, f)
        self.now = max(self.now, f.start + f.duration)

    def wb_error(self, e: WbError) -> None:
        self._emit("wb_error", e)
        self.first_wb_error.setdefault(e.key, e)
        self._append(self.wb_errors, e)

    def error_returned(self, e: ErrorReturned) -> None:
        self._emit("error_returned", e)
        self._append(self.errors_returned, e)

    def prune(self, before: float, records_before: float | None = None) -> None:
        """Forget what ended before `before`: overlays gone by then and
        their samples; flushes and errors that ended before `records_before`
        (default: `before`).  Long-running views call this."""
        for key in [k for k, m in self.metas.items() if m.gone_at is not None and m.gone_at < before]:
            del self.metas[key]
            self.samples.pop(key, None)
            self.first_wb_error.pop(key, None)
        rb = before if records_before is None else records_before
        self.flushes = [f for f in self.flushes if f.start + f.duration >= rb]
        self.wb_errors = [e for e in self.wb_errors if e.t >= rb]
        self.errors_returned = [e for e in self.errors_returned if e.t >= rb]
        for key, s in self.samples.items():
            i = bisect.bisect_right(s, before, key=lambda sample: sample[0])
            if i > 1:
                del s[:i - 1]             # keep the last sample at or before `before`

    def set_self_stats(self, t: float, stats: dict) -> None:
        self._emit("self", (t, stats))
        self.self_stats = stats

    def set_hooks(self, hooks: list[dict]) -> None:
        self._emit("hooks", hooks)
        self.hooks = hooks

    def tick(self, t: float) -> None:
        self.now = max(self.now, t)

    # ---- output ----------------------------------------------------------
    def counters_at(self, key: str, t: float) -> Counters:
        """Cumulative counters of `key` as of time t (last sample <= t)."""
        s = self.samples.get(key)
        if not s:
            return Counters()
        i = bisect.bisect_right(s, t, key=lambda sample: sample[0])
        return s[i - 1][1] if i else Counters()

    def snapshot(self, since: float | None = None, t: float | None = None) -> Snapshot:
        t = self.now if t is None else t
        start = self.t0 if since is None else since
        flushes = [f for f in self.flushes if f.start + f.duration >= start and f.start <= t]
        wb_errors = [e for e in self.wb_errors if start <= e.t <= t]
        returned = [e for e in self.errors_returned if start <= e.t <= t]
        flushes_returned = [ErrorReturned(f.start + f.duration, f.target, "syncfs", -f.ret, f.pid, f.comm)
                            for f in flushes if f.ret < 0 and f.target and f.kind == "syncfs"]

        rows, fs_rows = [], []
        for key, meta in self.metas.items():
            if meta.first_seen > t or (meta.gone_at is not None and meta.gone_at < start):
                continue
            total = self.counters_at(key, t)
            window = total - self.counters_at(key, start)
            row = OverlayRow(meta, window, total, self.dirty_now.get(key, 0),
                             meta.gone_at is None or meta.gone_at > t)
            (rows if meta.kind == "overlay" else fs_rows).append(row)

        by_key = {r.meta.key: r for r in rows + fs_rows}
        for f in flushes:
            caller = by_key.get(f.target) if f.target else None
            for v in f.victims:
                if v.key == f.target:
                    continue
                if caller:
                    caller.flushed_for_others += v.bytes_written_back
                victim = by_key.get(v.key)
                if victim:
                    victim.flushed_by_others += v.bytes_written_back
            if caller and any(v.key != f.target and v.bytes_written_back for v in f.victims):
                caller.stall_caused += f.duration

        leaks, losses = self._errors(rows, wb_errors, returned + flushes_returned, start, t)
        return Snapshot(t, start, rows, fs_rows, flushes, wb_errors, returned + flushes_returned,
                        leaks, losses, self.metas, self.hooks, dict(self.self_stats))

    def _errors(self, rows, wb_errors, returned, start: float, t: float):
        """Leaks: an error handed to an overlay whose own inodes had none,
        while others on its upper fs had some.  Silent losses: overlays
        whose inodes failed writeback and who were never handed an error."""
        failed: dict[str, list[WbError]] = {}
        for e in wb_errors:
            failed.setdefault(e.key, []).append(e)
        for key, e in self.first_wb_error.items():   # records trimmed in a storm
            if key not in failed and start <= e.t <= t:
                failed[key] = [e]
        leaks: list[Leak] = []
        seen: set = set()
        for r in returned:
            if (r.key, r.t, r.call) in seen:
                continue                  # the same call, reported twice
            seen.add((r.key, r.t, r.call))
            if r.key in failed or r.call != "syncfs":
                continue
            meta = self.metas.get(r.key)
            if not meta:
                continue
            for src, errs in failed.items():
                sm = self.metas.get(src)
                if sm and sm.upper_dev == meta.upper_dev and errs[0].t <= r.t:
                    leaks.append(Leak(r.key, src, r.errno, r.t, r.call))
        handed = {r.key for r in returned}
        counted = {r.meta.key: r.window.writeback_errors for r in rows}
        losses = []
        for key, errs in failed.items():
            meta = self.metas.get(key)
            if key not in handed and meta is not None and meta.kind == "overlay":
                n = max(len(errs), counted.get(key, 0))     # counters are exact, records capped
                losses.append(SilentLoss(key, n, sorted({e.errno for e in errs})))
        return leaks, losses


# ---- JSON (schema version 1; keys may be added, never renamed) -------------

def counters_json(c: Counters) -> dict:
    return asdict(c)


def snapshot_json(s: Snapshot) -> dict:
    def ov(row: OverlayRow) -> dict:
        m = row.meta
        d = {
            "mountpoint": m.mountpoint, "mnt_ns": m.mnt_ns, "upperdir": m.upperdir,
            "workdir": m.workdir, "upper_dev": m.upper_dev, "options": list(m.options),
            "container": m.container.to_json() if m.container else None,
            "inodes_dirtied": row.window.inodes_dirtied,
            "bytes_dirtied": row.window.bytes_dirtied,
            "bytes_written_back": row.window.bytes_written_back,
            "copy_ups": row.window.copy_ups, "copy_up_bytes": row.window.copy_up_bytes,
            "writeback_errors": row.window.writeback_errors,
            "dirty_inodes_now": row.dirty_inodes_now,
            "dirty_calls": {"pages": row.window.dirty_calls_pages, "sync": row.window.dirty_calls_sync,
                            "datasync": row.window.dirty_calls_datasync, "time": row.window.dirty_calls_time},
            "copy_ups_metadata_only": row.window.copy_ups_metadata_only,
            "copy_up_failures": row.window.copy_up_failures,
            "copy_up_seconds": round(row.window.copy_up_ns / 1e9, 6),
            "fsync_calls": row.window.fsync_calls, "syncfs_calls": row.window.syncfs_calls,
            "errors_returned": row.window.errors_returned,
            "flushed_for_others_bytes": row.flushed_for_others,
            "flushed_by_others_bytes": row.flushed_by_others,
            "stall_caused_seconds": round(row.stall_caused, 6),
            "live": row.live,
        }
        return d

    def fl(f: Flush) -> dict:
        return {
            "kind": f.kind, "pid": f.pid, "tid": f.tid, "comm": f.comm,
            "overlay": s.label(f.target), "upper_dev": f.upper_dev,
            "container": f.caller_container.to_json() if f.caller_container else
            (s.metas[f.target].container.to_json() if f.target in s.metas and s.metas[f.target].container else None),
            "synced_dev": f.synced_dev, "sb_err_advanced": f.sb_err_advanced,
            "start": round(f.start - s.window_start, 6),
            "duration_seconds": round(f.duration, 6), "ret": f.ret, "path": f.path or None,
            "victims": [{"overlay": s.label(v.key), "bytes_written_back": v.bytes_written_back}
                        for v in f.victims],
        }

    return {
        "version": SCHEMA_VERSION,
        "window_seconds": round(s.window_seconds, 3),
        "overlays": [ov(r) for r in s.overlays],
        "upper_filesystems": [{"upper_dev": r.meta.upper_dev, "mountpoint": r.meta.mountpoint,
                               "fstype": r.meta.fstype,
                               "outside_overlays": counters_json(r.window),
                               "overlays": sum(1 for o in s.overlays if o.meta.upper_dev == r.meta.upper_dev)}
                              for r in s.upper_fs],
        "flushes": [fl(f) for f in s.flushes],
        "writeback_errors": [{"overlay": s.label(e.key), "ino": e.ino, "errno": e.errno,
                              "t": round(e.t - s.window_start, 6)} for e in s.wb_errors],
        "errors_returned": [{"overlay": s.label(e.key), "call": e.call, "errno": e.errno, "pid": e.pid,
                             "comm": e.comm, "t": round(e.t - s.window_start, 6)} for e in s.errors_returned],
        "leaks": [{"victim": s.label(l.victim), "source": s.label(l.source), "errno": l.errno,
                   "call": l.call} for l in s.leaks],
        "silent_losses": [{"overlay": s.label(l.key), "writeback_errors": l.writeback_errors,
                           "errnos": l.errnos} for l in s.silent_losses],
        "hooks": s.hooks,
        "self": s.self_stats,
    }


def meta_to_dict(m: OverlayMeta) -> dict:
    d = asdict(m)
    d["options"] = list(m.options)
    return d


def meta_from_dict(d: dict) -> OverlayMeta:
    d = dict(d)
    c = d.get("container")
    d["container"] = ContainerRef(**c) if c else None
    d["options"] = tuple(d.get("options") or ())
    known = {f.name for f in fields(OverlayMeta)}
    return OverlayMeta(**{k: v for k, v in d.items() if k in known})
