"""The one core every view reads: plain records in, snapshots out.

No BPF, no I/O, no analysis here.  The live session (session.py) and a
replayed recording feed the same `Model` with the same records, so every
output works the same on both.  What the numbers mean (interference,
stall shares, leaks, losses) is defined once, in analysis.py.

Records fed in:
  * OverlayMeta   when an overlay (or an upper filesystem) starts being watched
  * gone(key, t)  when it is unmounted
  * counters(t, {key: Counters})   cumulative counters since it was watched
  * Flush         a finished syncfs / sync / umount, with its victims
  * WbError       a writeback error on an inode of an overlay
  * ErrorReturned an fsync/fdatasync that returned an error (a failing
                  syncfs is a Flush with ret < 0)
"""
from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, fields

from .counters import Counters


@dataclass(frozen=True)
class Container:
    """Who an overlay (or a flushing process) belongs to."""
    runtime: str                  # "docker" | "podman" | "containerd" | "cri-o" | "sandbox"
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
    container: Container | None = None
    fstype: str | None = None    # upper fs type
    upper_source: str | None = None   # upper fs mount source ("/dev/loop1"), else None
    dev: str | None = None       # the overlay's own superblock dev
    first_seen: float = 0.0
    gone_at: float | None = None
    # a runtime's helper mount, not a container's root: "init" (Docker's
    # <layer>-init, mounted while creating the container), "unpack"
    # (containerd's temporary mounts); see containers.helper_of()
    helper: str | None = None

    @property
    def label(self) -> str:
        """What people call it: the container name (with the helper it is),
        else the mountpoint."""
        if self.container:
            return f"{self.container.name}/{self.helper}" if self.helper else self.container.name
        return self.mountpoint


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
    caller_container: Container | None = None
    path: str = ""               # umount: the path given
    target_dev: str | None = None
    synced_dev: str | None = None    # the sb sync_filesystem really synced (function hook)
    sb_err_advanced: bool = False    # that sb's s_wb_err moved during the flush

    @property
    def end(self) -> float:
        return self.start + self.duration


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


# ---- what the model hands out ---------------------------------------------

@dataclass
class OverlayRow:
    meta: OverlayMeta
    window: Counters             # during the snapshot window
    total: Counters              # since it was first watched
    dirty_inodes_now: int        # from the kernel's dirty-inode map
    live: bool


@dataclass
class Snapshot:
    """The model over a window [window_start, t]: counters, and the
    records that fell in it.  analysis.py turns it into numbers."""
    t: float
    window_start: float
    overlays: list[OverlayRow]
    upper_fs: list[OverlayRow]
    flushes: list[Flush]
    wb_errors: list[WbError]
    errors_returned: list[ErrorReturned]
    first_failures: dict[str, WbError]   # first writeback error per key in the window
    metas: dict[str, OverlayMeta]
    hooks: list[dict] = field(default_factory=list)
    self_stats: dict = field(default_factory=dict)
    model: "Model | None" = field(default=None, repr=False)   # for counters at any time

    @property
    def window_seconds(self) -> float:
        return max(0.0, self.t - self.window_start)

    def counters_at(self, key: str, t: float) -> Counters:
        return self.model.counters_at(key, t) if self.model else Counters()


@dataclass
class Cursor:
    """How many records of each kind a reader has consumed (Model.delta)."""
    flushes: int = 0
    wb_errors: int = 0
    errors_returned: int = 0


@dataclass
class Delta:
    """What changed since a cursor: cumulative totals now, records since."""
    now: float
    metas: dict[str, OverlayMeta]
    totals: dict[str, Counters]
    dirty_now: dict[str, int]
    flushes: list[Flush]
    wb_errors: list[WbError]
    errors_returned: list[ErrorReturned]
    hooks: list[dict]
    self_stats: dict
    cursor: Cursor


RECORD_KINDS = ("flushes", "wb_errors", "errors_returned")


class Model:
    def __init__(self, t0: float = 0.0):
        self.t0 = t0
        self.metas: dict[str, OverlayMeta] = {}
        self._samples: dict[str, list[tuple[float, Counters]]] = {}
        self._dirty_now: dict[str, int] = {}
        self._records: dict[str, list] = {k: [] for k in RECORD_KINDS}
        self._dropped: dict[str, int] = {k: 0 for k in RECORD_KINDS}   # removed from the front
        self.hooks: list[dict] = []
        self.self_stats: dict = {}
        self.now = t0
        self.max_samples = 4096     # per overlay; older ones are thinned
        self.history = 900.0        # seconds of samples kept (plus each overlay's first)
        self.max_records = 20000    # flushes / errors kept (an error storm must not eat memory)
        self.trimmed = 0            # records dropped by that cap (exact counts live in counters)
        self._first_wb_error: dict[str, WbError] = {}   # kept past the cap: leak/loss logic
        self.sink = None            # callable(type, payload): a recording listens here

    def _emit(self, kind: str, payload) -> None:
        if self.sink is not None:
            self.sink(kind, payload)

    # ---- input -----------------------------------------------------------
    def add(self, meta: OverlayMeta) -> None:
        self._emit("overlay", meta)
        self.metas[meta.key] = meta
        self._samples.setdefault(meta.key, [(meta.first_seen, Counters())])

    def gone(self, key: str, t: float) -> None:
        m = self.metas.get(key)
        if m and m.gone_at is None:
            self._emit("gone", (key, t))
            m.gone_at = t
            self._dirty_now.pop(key, None)

    def counters(self, t: float, values: dict[str, Counters],
                 dirty_now: dict[str, int] | None = None) -> None:
        self._emit("counters", (t, values, dirty_now))
        self.now = max(self.now, t)
        for key, c in values.items():
            s = self._samples.setdefault(key, [])
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
            self._dirty_now = {k: v for k, v in dirty_now.items() if k in self.metas}

    def _append(self, kind: str, item) -> None:
        records = self._records[kind]
        records.append(item)
        if len(records) > self.max_records:
            cut = len(records) - self.max_records * 3 // 4
            self._drop_front(kind, cut)
            self.trimmed += cut

    def _drop_front(self, kind: str, n: int) -> None:
        if n > 0:
            del self._records[kind][:n]
            self._dropped[kind] += n

    def flush(self, f: Flush) -> None:
        self._emit("flush", f)
        self._append("flushes", f)
        self.now = max(self.now, f.end)

    def wb_error(self, e: WbError) -> None:
        self._emit("wb_error", e)
        self._first_wb_error.setdefault(e.key, e)
        self._append("wb_errors", e)

    def error_returned(self, e: ErrorReturned) -> None:
        self._emit("error_returned", e)
        self._append("errors_returned", e)

    def prune(self, before: float, records_before: float | None = None) -> None:
        """Forget what ended before `before`: overlays gone by then and
        their samples; flushes and errors that ended before `records_before`
        (default: `before`).  Long-running views call this."""
        for key in [k for k, m in self.metas.items() if m.gone_at is not None and m.gone_at < before]:
            del self.metas[key]
            self._samples.pop(key, None)
            self._first_wb_error.pop(key, None)
        rb = before if records_before is None else records_before
        for kind in RECORD_KINDS:
            # records arrive in (nearly) time order: drop the old prefix, so
            # readers' cursors stay valid
            records = self._records[kind]
            n = 0
            while n < len(records) and _when(records[n]) < rb:
                n += 1
            self._drop_front(kind, n)
        for key, s in self._samples.items():
            i = bisect.bisect_right(s, before, key=lambda sample: sample[0])
            if i > 1:
                del s[:i - 1]             # keep the last sample at or before `before`

    def release(self, cursor: Cursor) -> None:
        """The only reader has consumed the records before `cursor`: forget
        them now, not when the retention runs out (the exporter: records
        then live one scrape interval, not two minutes)."""
        for kind in RECORD_KINDS:
            self._drop_front(kind, getattr(cursor, kind) - self._dropped[kind])

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
        s = self._samples.get(key)
        if not s:
            return Counters()
        i = bisect.bisect_right(s, t, key=lambda sample: sample[0])
        return s[i - 1][1] if i else Counters()

    def record_count(self) -> int:
        """Records ever received (a cheap 'anything new?' for views)."""
        return sum(len(self._records[k]) + self._dropped[k] for k in RECORD_KINDS)

    def snapshot(self, since: float | None = None, t: float | None = None,
                 rows: bool = True) -> Snapshot:
        """The window [since, t]; rows=False leaves out the per-overlay
        counters (a view that needs only the window's records)."""
        t = self.now if t is None else t
        start = self.t0 if since is None else since
        flushes = [f for f in self._records["flushes"] if f.end >= start and f.start <= t]
        wb_errors = [e for e in self._records["wb_errors"] if start <= e.t <= t]
        returned = [e for e in self._records["errors_returned"] if start <= e.t <= t]
        first: dict[str, WbError] = {}
        for e in wb_errors:
            first.setdefault(e.key, e)
        for key, e in self._first_wb_error.items():   # records trimmed in a storm
            if key not in first and start <= e.t <= t:
                first[key] = e

        rows_, fs_rows = [], []
        for key, meta in (self.metas.items() if rows else ()):
            if meta.first_seen > t or (meta.gone_at is not None and meta.gone_at < start):
                continue
            total = self.counters_at(key, t)
            window = total - self.counters_at(key, start)
            row = OverlayRow(meta, window, total, self._dirty_now.get(key, 0),
                             meta.gone_at is None or meta.gone_at > t)
            (rows_ if meta.kind == "overlay" else fs_rows).append(row)
        return Snapshot(t, start, rows_, fs_rows, flushes, wb_errors, returned, first,
                        self.metas, self.hooks, dict(self.self_stats), self)

    def delta(self, cursor: Cursor | None) -> Delta:
        """Totals now and the records a reader has not consumed yet (the
        exporter: a scrape costs the same after a day as after a minute)."""
        cursor = cursor or Cursor()
        new, nxt = {}, Cursor()
        for kind in RECORD_KINDS:
            seen = getattr(cursor, kind)
            records = self._records[kind]
            new[kind] = list(records[max(0, seen - self._dropped[kind]):])
            setattr(nxt, kind, self._dropped[kind] + len(records))
        totals = {k: (s[-1][1] if s else Counters()) for k, s in self._samples.items()
                  if k in self.metas}
        return Delta(self.now, dict(self.metas), totals, dict(self._dirty_now), new["flushes"],
                     new["wb_errors"], new["errors_returned"], list(self.hooks),
                     dict(self.self_stats), nxt)


def _when(record) -> float:
    return record.end if isinstance(record, Flush) else record.t


# ---- (de)serialising metadata (recordings) ---------------------------------

def meta_to_dict(m: OverlayMeta) -> dict:
    d = asdict(m)
    d["options"] = list(m.options)
    return d


def meta_from_dict(d: dict) -> OverlayMeta:
    d = dict(d)
    c = d.get("container")
    d["container"] = Container(**c) if c else None
    d["options"] = tuple(d.get("options") or ())
    known = {f.name for f in fields(OverlayMeta)}
    return OverlayMeta(**{k: v for k, v in d.items() if k in known})
