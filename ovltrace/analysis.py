"""Every derived number, defined once; every output reads it from here.

Input is a model Snapshot (or, for the exporter, one flush or one error
at a time through the same rules).  Nothing here formats text, except
party_name(): a display name (terminal-safe, see untrusted.py).

Parties.  A flush (syncfs, sync, umount) is charged to its CALLER: the
overlay it targeted (syncfs on an overlay's fd, umount of an overlay);
else the overlay of the caller's container (a `sync` run inside it);
else the caller's container by id; else the host process by name.
`caller_key()` gives that key; `name()` what people call it.

Stall.  A flush that took D seconds and wrote back B bytes, b of them
victim V's, spent D x b / B of its time on V's data: V's SHARE.  The
shares of one flush add up to D (own data and data outside any overlay
included), never to N x D.  Interference pairs (caller -> victim) are the
shares of OTHER overlays' data; a caller "waited on others" for the sum
of its pairs' seconds, a victim "made others wait" for the sum of the
pairs it is the victim of.  A flush that wrote nothing back has no share.

Leaks.  An error returned by syncfs to an overlay whose own inodes had no
writeback error (in the window), while another overlay on the same upper
fs had one before: a leak from that source.  Silent loss: an overlay
whose inodes failed writeback and that was never handed an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .counters import COPY_UP_LATENCY_BUCKETS, Counters
from .format import display_name
from .model import ErrorReturned, Flush, OverlayMeta, Snapshot, WbError
from .untrusted import visible

TIMELINE_POINTS = 120


# ---- parties -----------------------------------------------------------------

def caller_key(f: Flush, by_container: dict[str, str] | None = None) -> str:
    """The party a flush is charged to (see the module doc).
    by_container: container id -> its overlay key (container_overlays())."""
    if f.target:
        return f.target
    c = f.caller_container
    if c is not None:
        if by_container and c.id in by_container:
            return by_container[c.id]
        return f"container:{c.id}"
    return f"process:{f.comm}"


def container_overlays(metas: dict[str, OverlayMeta]) -> dict[str, str]:
    """container id -> the key of its overlay (the newest, if several)."""
    out = {}
    for key, m in metas.items():
        if m.kind == "overlay" and m.container is not None:
            prev = out.get(m.container.id)
            if prev is None or metas[prev].first_seen <= m.first_seen:
                out[m.container.id] = key
    return out


def party_name(key: str | None, metas: dict[str, OverlayMeta], flushes=()) -> str:
    """What people call a party: container name, else the distinctive part
    of the mountpoint, else the process name."""
    if key is None:
        return "-"
    if key.startswith("process:"):
        return visible(key.split(":", 1)[1])
    if key.startswith("container:"):
        cid = key.split(":", 1)[1]
        for f in flushes:
            if f.caller_container is not None and f.caller_container.id == cid:
                return visible(f.caller_container.name)
        return visible(cid[:12])
    return display_name(metas.get(key), 40) if key in metas else key


# ---- one flush ---------------------------------------------------------------

@dataclass(frozen=True)
class Share:
    victim: str                  # overlay or upper fs key
    bytes: int
    seconds: float               # the flush's duration x this victim's byte share


def shares(f: Flush) -> list[Share]:
    """Each victim's share of one flush's time (they sum to its duration)."""
    total = sum(v.bytes_written_back for v in f.victims)
    if total <= 0:
        return []
    return [Share(v.key, v.bytes_written_back, f.duration * v.bytes_written_back / total)
            for v in f.victims if v.bytes_written_back > 0]


def others_shares(f: Flush, caller: str, metas: dict[str, OverlayMeta]) -> list[Share]:
    """The shares of other overlays' data: the flush's interference pairs."""
    return [s for s in shares(f) if s.victim != caller
            and (m := metas.get(s.victim)) is not None and m.kind == "overlay"]


# ---- interference over a window ------------------------------------------------

@dataclass
class Pair:
    caller: str
    victim: str
    bytes: int = 0
    flushes: int = 0
    stall_seconds: float = 0.0


@dataclass
class PartyStall:
    """One party's flush figures: as a caller and as a victim."""
    key: str
    flushes: int = 0                     # flushes it called
    syncfs_calls: int = 0
    own_bytes_flushed: int = 0           # its own data its flushes wrote back
    others_bytes_flushed: int = 0        # other overlays' data its flushes wrote back
    waited_on_others_seconds: float = 0.0
    bytes_flushed_by_others: int = 0     # its data written back by others' flushes
    made_others_wait_seconds: float = 0.0
    flush_durations: list[float] = field(default_factory=list)


@dataclass
class Interference:
    pairs: dict[tuple[str, str], Pair]
    parties: dict[str, PartyStall]
    callers: dict[int, str]              # id(flush) -> its caller key

    def caller(self, f: Flush) -> str:
        return self.callers[id(f)]


def interference(flushes: list[Flush], metas: dict[str, OverlayMeta]) -> Interference:
    by_container = container_overlays(metas)
    pairs: dict[tuple[str, str], Pair] = {}
    parties: dict[str, PartyStall] = {}
    callers: dict[int, str] = {}

    def party(k: str) -> PartyStall:
        p = parties.get(k)
        if p is None:
            p = parties[k] = PartyStall(k)
        return p

    for f in flushes:
        caller = caller_key(f, by_container)
        callers[id(f)] = caller
        c = party(caller)
        c.flushes += 1
        c.syncfs_calls += f.kind == "syncfs"
        c.flush_durations.append(f.duration)
        for s in shares(f):
            if s.victim == caller:
                c.own_bytes_flushed += s.bytes
        for s in others_shares(f, caller, metas):
            p = pairs.get((caller, s.victim))
            if p is None:
                p = pairs[(caller, s.victim)] = Pair(caller, s.victim)
            p.bytes += s.bytes
            p.flushes += 1
            p.stall_seconds += s.seconds
            c.others_bytes_flushed += s.bytes
            c.waited_on_others_seconds += s.seconds
            v = party(s.victim)
            v.bytes_flushed_by_others += s.bytes
            v.made_others_wait_seconds += s.seconds
    return Interference(pairs, parties, callers)


# ---- container lifecycle ---------------------------------------------------------
# Starting or stopping a container unmounts an overlay (the container's
# own root at stop; a runtime's helper mount while it creates one), and
# every such unmount syncs the whole upper fs: the container pays for its
# neighbours' dirty data.  A lifecycle flush is an umount flush of an
# overlay that a runtime owns; its step says which moment it was.

HELPER_STEPS = {"init": "create", "unpack": "unpack"}
HELPER_RUNTIMES = {"init": "docker", "unpack": "containerd"}


def lifecycle_step(f: Flush, metas: dict[str, OverlayMeta]) -> tuple[str, str] | None:
    """(runtime, step) when `f` is a container lifecycle flush: "create"
    (a helper mount used while creating it), "unpack" (an image's layers),
    "stop" (its own root unmounted); None otherwise."""
    if f.kind != "umount" or f.target is None or f.ret < 0:
        return None                       # (a failed unmount synced nothing)
    m = metas.get(f.target)
    if m is None or m.kind != "overlay":
        return None
    if m.helper in HELPER_STEPS:
        runtime = m.container.runtime if m.container else HELPER_RUNTIMES[m.helper]
        return runtime, HELPER_STEPS[m.helper]
    if m.container is not None:
        return m.container.runtime, "stop"
    return None


@dataclass
class LifecycleEvent:
    flush: Flush
    key: str                     # the overlay unmounted (named after its container)
    runtime: str
    step: str
    volatile: bool               # mounted volatile: its unmount syncs nothing
    own_bytes: int
    others: list[Share]          # the neighbours' data it wrote back, and the time it took

    @property
    def others_bytes(self) -> int:
        return sum(s.bytes for s in self.others)

    @property
    def others_seconds(self) -> float:
        return sum(s.seconds for s in self.others)


@dataclass
class Neighbour:
    key: str
    bytes: int = 0
    seconds: float = 0.0
    events: int = 0              # lifecycle flushes that wrote its data back
    callers: set[str] = field(default_factory=set)    # overlays whose start/stop paid
    runtimes: set[str] = field(default_factory=set)
    steps: set[str] = field(default_factory=set)
    # what those callers' start/stop flushes spent on all neighbours' data:
    # the whole from which this neighbour's share is taken
    callers_others_seconds: float = 0.0


@dataclass
class Lifecycle:
    events: list[LifecycleEvent]
    neighbours: list[Neighbour]  # whose data they paid for, most seconds first

    @property
    def stall_seconds(self) -> float:
        return sum(e.flush.duration for e in self.events)

    @property
    def others_seconds(self) -> float:
        return sum(e.others_seconds for e in self.events)

    def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for e in self.events:
            out[(e.runtime, e.step)] = out.get((e.runtime, e.step), 0) + 1
        return out


def lifecycle_event(f: Flush, metas: dict[str, OverlayMeta]) -> LifecycleEvent | None:
    """One flush as a lifecycle event (the exporter's per-flush path)."""
    rs = lifecycle_step(f, metas)
    if rs is None:
        return None
    m = metas[f.target]
    own = sum(s.bytes for s in shares(f) if s.victim == f.target)
    return LifecycleEvent(f, f.target, rs[0], rs[1], "volatile" in m.options, own,
                          others_shares(f, f.target, metas))


def lifecycle(flushes: list[Flush], metas: dict[str, OverlayMeta]) -> Lifecycle:
    events = [e for f in flushes if (e := lifecycle_event(f, metas)) is not None]
    by: dict[str, Neighbour] = {}
    spent: dict[str, float] = {}
    for e in events:
        spent[e.key] = spent.get(e.key, 0.0) + e.others_seconds
        for s in e.others:
            n = by.get(s.victim) or by.setdefault(s.victim, Neighbour(s.victim))
            n.bytes += s.bytes
            n.seconds += s.seconds
            n.events += 1
            n.callers.add(e.key)
            n.runtimes.add(e.runtime)
            n.steps.add(e.step)
    for n in by.values():
        n.callers_others_seconds = sum(spent[k] for k in n.callers)
    return Lifecycle(events, sorted(by.values(), key=lambda n: (-n.seconds, -n.bytes, n.key)))


# ---- errors --------------------------------------------------------------------

def returned_errors(errors_returned: list[ErrorReturned],
                    flushes: list[Flush]) -> list[ErrorReturned]:
    """Errors handed to overlays: fsync/fdatasync records plus failing
    syncfs flushes on an overlay, each call once, in time order."""
    out = list(errors_returned)
    out += [ErrorReturned(f.end, f.target, "syncfs", -f.ret, f.pid, f.comm)
            for f in flushes if f.ret < 0 and f.target and f.kind == "syncfs"]
    seen, uniq = set(), []
    for e in sorted(out, key=lambda e: e.t):
        if (e.key, e.t, e.call) not in seen:
            seen.add((e.key, e.t, e.call))
            uniq.append(e)
    return uniq


def leak_sources(victim: str, call: str, t: float, first_failures: dict[str, float],
                 metas: dict[str, OverlayMeta]) -> list[str]:
    """The overlays whose failed writeback an error returned to `victim`
    at t came from; empty when it is not a leak (the rule, once: the
    audit applies it to a window, the exporter to each error as it comes).
    first_failures: key -> time of its first writeback error."""
    meta = metas.get(victim)
    if call != "syncfs" or meta is None or victim in first_failures:
        return []
    return [src for src, first in first_failures.items()
            if first <= t and (sm := metas.get(src)) is not None and sm.kind == "overlay"
            and sm.upper_dev == meta.upper_dev]


@dataclass(frozen=True)
class Leak:
    victim: str                  # overlay key handed the error
    source: str                  # overlay key whose inode failed
    errno: int
    t: float
    call: str = "syncfs"


@dataclass(frozen=True)
class SilentLoss:
    key: str
    writeback_errors: int
    errnos: tuple[int, ...]


@dataclass
class Errors:
    returned: list[ErrorReturned]
    leaks: list[Leak]
    losses: list[SilentLoss]


def errors(snap: Snapshot) -> Errors:
    returned = returned_errors(snap.errors_returned, snap.flushes)
    first = {k: e.t for k, e in snap.first_failures.items()}
    leaks = [Leak(r.key, src, r.errno, r.t, r.call) for r in returned
             for src in leak_sources(r.key, r.call, r.t, first, snap.metas)]
    handed = {r.key for r in returned}
    counted = {r.meta.key: r.window.writeback_errors for r in snap.overlays}
    by_key: dict[str, list[WbError]] = {}
    for e in snap.wb_errors:
        by_key.setdefault(e.key, []).append(e)
    losses = []
    for key, e in snap.first_failures.items():
        meta = snap.metas.get(key)
        if key in handed or meta is None or meta.kind != "overlay":
            continue
        errs = by_key.get(key) or [e]
        n = max(len(errs), counted.get(key, 0))      # counters are exact, records capped
        losses.append(SilentLoss(key, n, tuple(sorted({x.errno for x in errs}))))
    return Errors(returned, leaks, losses)


# ---- per upper filesystem ------------------------------------------------------

@dataclass
class UpperFs:
    key: str                     # the upper fs's own key ("rest" of the fs)
    upper_dev: str
    fstype: str
    mountpoint: str
    overlays: list[str]          # overlay keys on it (in the window)
    outside: Counters            # outside any overlay
    total: Counters              # overlays + outside
    dirty_inodes_now: int        # overlays + outside, from the kernel's map
    flushes: int                 # flushes that reached it (sync reaches all)


def upper_filesystems(snap: Snapshot) -> list[UpperFs]:
    out = []
    for fs in snap.upper_fs:
        dev = fs.meta.upper_dev
        on = [r for r in snap.overlays if r.meta.upper_dev == dev]
        total = fs.window
        for r in on:
            total = total + r.window
        out.append(UpperFs(fs.meta.key, dev, fs.meta.fstype or "", fs.meta.mountpoint,
                           [r.meta.key for r in on], fs.window, total,
                           fs.dirty_inodes_now + sum(r.dirty_inodes_now for r in on),
                           sum(1 for f in snap.flushes if f.upper_dev in (dev, None))))
    return out


# ---- rates, copy-ups, timelines --------------------------------------------------

def rate(window: Counters, seconds: float, name: str) -> float:
    """Per second over a window (0 for an empty window)."""
    return getattr(window, name) / seconds if seconds > 0 else 0.0


@dataclass
class Timeline:
    interval_seconds: float
    points: int
    series: dict[str, list[Counters]]    # key -> increments per interval


def timeline(snap: Snapshot, keys: list[str], points: int = TIMELINE_POINTS) -> Timeline:
    start, end = snap.window_start, snap.t
    n = max(1, min(points, int((end - start) / 0.25) or 1))
    step = (end - start) / n if end > start else 1.0
    series = {}
    for key in keys:
        cum = [snap.counters_at(key, start + i * step) for i in range(n + 1)]
        series[key] = [cum[i + 1] - cum[i] for i in range(n)]
    return Timeline(step, n, series)


@dataclass
class CopyUps:
    key: str
    copy_ups: int
    copy_up_bytes: int
    average_bytes: int
    busy_seconds: float          # how long copy-up bytes kept growing (timeline resolution)
    seconds: float | None        # time inside copy-ups (function hook), else None
    latency_log2_us: tuple[int, ...]


def copy_up_hotspots(snap: Snapshot, tl: Timeline | None = None) -> list[CopyUps]:
    keys = [r.meta.key for r in snap.overlays if r.window.copy_ups or r.window.copy_up_bytes]
    tl = tl or timeline(snap, keys)
    exact = any(h.get("name") == "copy_up" and h.get("mechanism") in ("fentry", "kprobe")
                for h in snap.hooks)
    out = []
    for r in snap.overlays:
        w = r.window
        if r.meta.key not in keys:
            continue
        steps = tl.series.get(r.meta.key) or timeline(snap, [r.meta.key]).series[r.meta.key]
        busy = sum(tl.interval_seconds for c in steps if c.copy_up_bytes > 0)
        out.append(CopyUps(r.meta.key, w.copy_ups, w.copy_up_bytes,
                           w.copy_up_bytes // max(1, w.copy_ups), round(busy, 3),
                           w.copy_up_ns / 1e9 if exact else None,
                           tuple(w.copy_up_latency) + (0,) * (COPY_UP_LATENCY_BUCKETS
                                                              - len(w.copy_up_latency))))
    return sorted(out, key=lambda h: -h.copy_up_bytes)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (p99 of fewer than 100 values is the max)."""
    import math
    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


# ---- the whole window at once ------------------------------------------------------

@dataclass
class Analysis:
    snap: Snapshot
    interference: Interference
    errors: Errors
    upper_fs: list[UpperFs]
    lifecycle: Lifecycle

    def name(self, key: str | None) -> str:
        return party_name(key, self.snap.metas, self.snap.flushes)


def analyse(snap: Snapshot) -> Analysis:
    return Analysis(snap, interference(snap.flushes, snap.metas), errors(snap),
                    upper_filesystems(snap), lifecycle(snap.flushes, snap.metas))
