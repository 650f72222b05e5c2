"""A live tracing session: probes + mounts + container identity -> model.

This is the only module that joins the kernel's view (slots, device
numbers, raw events) with userspace facts (mounts, containers).  Views get
a `Model` and never see any of this.
"""
from __future__ import annotations

import os
import select
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from . import bpfdefs, memory
from .containers import CgroupIds, Resolver, cgroup_of_pid, helper_of
from .counters import Counters
from .errors import OvltraceError
from .model import ErrorReturned, Flush, Model, OverlayMeta, Victim, WbError
from .mountevents import Assembler, SeenMount, Settler, put_bounded, resolve_dir
from .mounts import MountWatcher, Overlay, UnknownOverlayError, discover, mount_of_dev
from .probes import Limits, Orphan, Probes, RawEvent, format_dev, kdev, parse_dev

GONE_GRACE = 5.0        # keep a gone overlay's slot this long: its umount flush comes after
DIRTY_MAX_AGE = 300.0   # an inode "dirty" longer than this was deleted while dirty
TRIM_INTERVAL = 10.0     # glibc's free heap is given back this often (long-running views)
RECORD_RETENTION = 120.0  # flushes/errors kept by long-running views: scrape more often than this
ORPHAN_WAIT = 10.0      # a flush or error naming an undecided orphan waits this long at most
ORPHAN_OWNERS_KEPT = 65536   # a hard cap; entries normally go ORPHAN_OWNER_GRACE after
ORPHAN_OWNER_GRACE = 120.0   # an orphan left the map: events queued before that may name it
RESOLVE_LATE = 120.0    # how long an overlay's container is looked for again (see _resolve_late)
UNPLACED_WAIT = 10.0    # a new-API mount not moved into place by then is given up


@dataclass
class _Watched:
    key: str
    slot: int | None            # None: an overlay gone before it was seen, and no slot to spare
    gen: int
    ov: Overlay | None          # None for an upper fs slot
    dev: int                    # kernel dev of the overlay sb (or of the upper fs)
    upper_dev: int
    gone_since: float | None = None
    mounted_ns: int | None = None   # its mount syscall began (seen by the mounts hook)
    seq: int | None = None          # known only from its mount event: that mount's seq
    seen_at: float | None = None    # the mount table first showed it (session time)


@dataclass
class _Deciding:
    """An orphan charged to `owner` but not yet dropped (_take_orphans)."""
    owner: str
    id: int
    counters: Counters              # as the last sample read them
    marked: bool = False            # the kernel sends its inode's events to the owner


@dataclass
class _PendingFlush:
    ev: RawEvent
    seen: float
    target: "_Watched | None" = None   # resolved on arrival: device numbers get reused


class Session:
    def __init__(self, btf: str | None = None, only: list[str] | None = None,
                 limits: Limits | None = None, refresh_interval: float = 1.0,
                 resolver: Resolver | None = None, hooks: list[str] | None = None,
                 retention: float | None = None, hook_mode: str = "auto",
                 history: float | None = None):
        self.only = [os.path.realpath(p) for p in only] if only else None
        self.refresh_interval = refresh_interval
        self.retention = retention       # long-running views forget what ended before now - this
        self.history = history           # seconds of counter samples kept (None: the model's default)
        self.sample_interval = 0.5       # counters are read this often (views need no more)
        self._last_sample = 0.0
        self.resolver = resolver or Resolver()
        self._limits = limits
        self._btf = btf
        self._hooks = hooks              # only these hooks (tests); None: all
        self._hook_mode = hook_mode      # probes.HOOK_MODES
        self.probes: Probes | None = None
        self.attached = False            # start() done: self.model is the one that counts
        self.mounts = MountWatcher()
        self.t0 = time.monotonic()
        self.model = self._new_model()
        self.watched: dict[int, _Watched] = {}          # slot -> live or grace
        self.by_slotgen: dict[tuple[int, int], str] = {}  # (slot, gen) -> key, while the model knows it
        self.upper: dict[int, _Watched] = {}             # upper kernel dev -> its fs slot
        self.ovl_by_dev: dict[int, _Watched] = {}         # overlay kernel dev -> watched
        self.pending: list[_PendingFlush] = []
        self.sink = None                 # a recording's listener, set before start()
        self.lock = threading.RLock()    # held while the model changes (exporter threads read it)
        self._last_refresh = 0.0
        self._mount_poll = None
        self._mountinfo = None
        self.refresh_seconds = 0.0
        self.unattributed_events = 0
        self.flush_done: dict[int, int] = {}   # umount flush id -> end (sync_filesystem hook)
        self.cgroups = CgroupIds()
        # mounts as they happen, and the orphans that wait for them
        self.assembler = Assembler()
        self.settler = Settler()
        self.carry: dict[str, Counters] = {}     # key -> orphans' counters charged to it
        self.orphan_owner: OrderedDict = OrderedDict()   # (ORPHAN_SLOT, id) -> key
        self._orphan_left: OrderedDict = OrderedDict()   # (ORPHAN_SLOT, id) -> when it left the map
        self.orphans_waiting = 0                 # orphans left undecided by the last sample
        self._deciding: dict[tuple[int, int], _Deciding] = {}   # orphan key -> its owner
        self._pending: dict[str, Counters] = {}  # key -> its deciding orphans' counters
        self._orphan_errors: list[tuple[float, RawEvent]] = []
        self.instant_overlays = 0                # overlays known only from their mount event
        self.slotless: dict[str, _Watched] = {}  # ... those of them that got no slot
        self._unnamed: dict[str, tuple[Overlay, float]] = {}   # key -> (overlay, since)
        self._named_at = -1                      # resolver.version _resolve_late last saw
        self._upper_mounts: dict[str, object] = {}   # upper fs dev -> its mount (mount_of_dev)
        self._last_prune = 0.0
        self._last_trim = 0.0
        self._unplaced: dict[int, tuple] = {}   # seq -> new-API mount not yet moved into place

    # ---- clock -------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def _t(self, ktime_ns: int) -> float:
        """BPF's bpf_ktime_get_ns() is CLOCK_MONOTONIC."""
        return ktime_ns / 1e9 - self.t0

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        overlays = self._discover_initial()
        limits = self._limits or Limits.for_overlays(max(len(overlays), 1))
        self.probes = Probes(self._btf, limits, only_hooks=self._hooks, mode=self._hook_mode)
        self.probes.attach()
        self.t0 = time.monotonic()
        self.model = self._new_model()
        self.model.sink = self.sink
        self.model.set_hooks([dict(h.__dict__) for h in self.probes.hooks()])
        self._apply(overlays, [])
        self._last_refresh = time.monotonic()
        self._watch_mount_table()
        memory.release_compiler()        # what only the compile needed
        self._last_trim = time.monotonic()
        self.attached = True

    def _new_model(self) -> Model:
        m = Model(0.0)
        if self.history is not None:
            m.history = self.history
        return m

    def _watch_mount_table(self) -> None:
        """The kernel flags /proc/self/mountinfo (POLLPRI) when this
        namespace's mount table changes: refresh at once then, not only
        every refresh_interval, so short-lived containers are seen."""
        try:
            self._mountinfo = open("/proc/self/mountinfo", "rb")
            self._mount_poll = select.poll()
            self._mount_poll.register(self._mountinfo.fileno(), select.POLLPRI | select.POLLERR)
        except OSError:
            self._mount_poll = None

    def _mounts_changed(self) -> bool:
        if self._mount_poll is None:
            return False
        return bool(self._mount_poll.poll(0))

    def close(self) -> None:
        if self._mountinfo is not None:
            self._mountinfo.close()
            self._mountinfo = None
        if self.probes is not None:
            self.probes.close()
            self.probes = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _discover_initial(self) -> list[Overlay]:
        try:
            overlays = discover(only=self.only) if self.only else discover()
        except UnknownOverlayError as e:
            raise OvltraceError(str(e)) from None
        self.mounts.refresh()
        return [o for o in overlays if self._wanted(o)]

    def _wanted(self, ov: Overlay) -> bool:
        if ov.upperdir is None or ov.upper_dev is None:
            return False                      # read-only overlay: nothing to dirty
        if self.only is None:
            return True
        return os.path.realpath(ov.mountpoint) in self.only or ov.mountpoint in self.only

    # ---- mounts -> slots -----------------------------------------------------
    def _apply(self, added: list[Overlay], removed: list[Overlay]) -> None:
        now = self.now()
        for ov in removed:
            w = self.ovl_by_dev.get(parse_dev(ov.dev))
            if w and w.ov is not None and w.ov.key == ov.key and w.gone_since is None:
                w.gone_since = now
                self.model.gone(w.key, now)
        for ov in added:
            if not self._wanted(ov):
                continue
            upper_dev = parse_dev(ov.upper_dev)
            if upper_dev not in self.upper:
                self._watch_upper(upper_dev, ov)
            ref = self.probes.watch_overlay(parse_dev(ov.dev), upper_dev, ov.upper_ino, ov.work_ino)
            if ref is None:
                continue                      # out of slots: counted in probes
            slot, gen = ref
            key = f"o{slot}.{gen}"
            w = _Watched(key, slot, gen, ov, parse_dev(ov.dev), upper_dev, seen_at=now)
            self.watched[slot] = w
            self.by_slotgen[(slot, gen)] = key
            self.ovl_by_dev[w.dev] = w
            self._add_meta(ov, OverlayMeta(
                key=key, kind="overlay", mountpoint=ov.mountpoint, upper_dev=ov.upper_dev,
                mnt_ns=ov.mnt_ns, upperdir=ov.upperdir, workdir=ov.workdir,
                options=tuple(ov.options), container=self.resolver.for_overlay(ov),
                fstype=ov.upper_fstype, upper_source=ov.upper_source, dev=ov.dev,
                first_seen=now, helper=helper_of(ov)))

    def _add_meta(self, ov: Overlay, meta: OverlayMeta) -> None:
        self.model.add(meta)
        if meta.container is None:
            self._unnamed[meta.key] = (ov, self.now())

    def _resolve_late(self) -> None:
        """Runtimes write a container's state after its first mounts: Docker
        mounts, seeds and unmounts a container's init layer before anything
        on disk names the container.  Overlays still unnamed are looked up
        again after each re-read of the runtimes' state, for a while."""
        now = self.now()
        self._named_at = self.resolver.version
        for key, (ov, since) in list(self._unnamed.items()):
            c = self.resolver.for_overlay(ov)
            meta = self.model.metas.get(key)
            if c is not None and meta is not None:
                self.model.add(replace(meta, container=c))
            if c is not None or meta is None or now - since > RESOLVE_LATE:
                del self._unnamed[key]

    def _watch_upper(self, upper_dev: int, ov: Overlay) -> None:
        ref = self.probes.watch_upper_fs(upper_dev)
        if ref is None:
            return
        slot, gen = ref
        key = f"fs{slot}.{gen}"
        w = _Watched(key, slot, gen, None, upper_dev, upper_dev)
        self.watched[slot] = w
        self.by_slotgen[(slot, gen)] = key
        self.upper[upper_dev] = w
        self.model.add(OverlayMeta(key=key, kind="upperfs", mountpoint=ov.upper_mountpoint or "/",
                                   upper_dev=ov.upper_dev, fstype=ov.upper_fstype,
                                   upper_source=ov.upper_source, first_seen=self.now()))

    def _expire(self) -> None:
        now = self.now()
        for key, (_ov, since) in list(self._unnamed.items()):
            if now - since > RESOLVE_LATE:
                del self._unnamed[key]
        for key, w in list(self.slotless.items()):
            if now - w.gone_since > GONE_GRACE and key not in self._pending:
                self.model.counters(now, {key: self.carry.pop(key, Counters())})
                del self.slotless[key]
        for slot, w in list(self.watched.items()):
            if w.gone_since is not None and now - w.gone_since > GONE_GRACE and \
                    w.key not in self._pending:        # its orphans are carried first
                final = self.probes.read_stats([slot])[slot] + self.carry.pop(w.key, Counters())
                self.model.counters(now, {w.key: final})
                self.probes.unwatch_overlay(w.dev, w.upper_dev, w.ov.upper_ino, w.ov.work_ino, slot)
                del self.watched[slot]
                if self.ovl_by_dev.get(w.dev) is w:
                    del self.ovl_by_dev[w.dev]

    def reload(self) -> None:
        """SIGHUP: read everything userspace knows again."""
        self.cgroups = CgroupIds()
        self.refresh_mounts()

    def refresh_mounts(self) -> None:
        changes = self._read_mounts()
        with self.lock:
            self._apply(*changes)

    def _read_mounts(self) -> tuple[list[Overlay], list[Overlay]]:
        """Container state and mount tables read again (I/O: no lock held)."""
        t = time.monotonic()
        self.resolver.refresh()
        added, removed = self.mounts.refresh()
        self.refresh_seconds = time.monotonic() - t
        return added, removed

    # ---- the loop ------------------------------------------------------------
    # Only this thread changes the model, and it holds the lock only while it
    # does: mount discovery, BPF map reads and cgroup scans happen before,
    # so a scrape (which takes the lock to copy what is new) never waits
    # behind them.
    def step(self, timeout: float = 0.1) -> None:
        """Poll events for up to `timeout`, then bring the model up to date."""
        events = self.probes.poll(int(timeout * 1000))
        seen, moved = self._read_mount_events([e for e in events if e.type == bpfdefs.EV_MOUNT])
        changes = sample = None
        if seen or moved or self._mounts_changed() or \
                time.monotonic() - self._last_refresh >= self.refresh_interval:
            self._last_refresh = time.monotonic()
            changes = self._read_mounts()
        with self.lock:
            for ev in events:
                if ev.type != bpfdefs.EV_MOUNT:
                    self._on_event(ev)
            if changes is not None:
                self._apply(*changes)
            self._adopt(seen, moved)
            if self._unnamed and self.resolver.version != self._named_at:
                self._resolve_late()
            if changes is not None:
                self._expire()
                if self.retention and time.monotonic() - self._last_prune >= 1.0:
                    self._last_prune = time.monotonic()
                    # flushes (each with its victims) and errors are only
                    # needed until views have consumed them
                    self.model.prune(self.now() - self.retention,
                                     self.now() - min(self.retention, RECORD_RETENTION))
                    self._forget_ids()
        self.probes.settle(self.settler.advance(self.probes.mounts_begun(), time.monotonic()))
        if time.monotonic() - self._last_sample >= self.sample_interval:
            sample = self._read_sample(final=False)
            with self.lock:
                self._store_sample(sample)
        if time.monotonic() - self._last_trim >= TRIM_INTERVAL:
            self._last_trim = time.monotonic()
            memory.trim()                # a scrape's freed tens of MiB back to the system

    def _read_sample(self, final: bool) -> tuple:
        """Counters, dirty inodes, finished flushes, self figures: read from
        the maps without the lock."""
        self._last_sample = time.monotonic()
        now = self.now()
        self._take_orphans(final)
        stats = self.probes.read_stats(list(self.watched))
        counters = {self.watched[s].key: self._charged(self.watched[s].key, c)
                    for s, c in stats.items()}
        for key in self.slotless:
            counters[key] = self._charged(key, Counters())
        return now, counters, self._dirty_now(), self._ready_flushes(final), self.self_stats()

    def _with_carry(self, key: str, c: Counters) -> Counters:
        carry = self.carry.get(key)
        return c + carry if carry is not None else c

    def _charged(self, key: str, c: Counters) -> Counters:
        """An owner's own counters, those of the orphans carried to it and
        of those being decided."""
        c = self._with_carry(key, c)
        pending = self._pending.get(key)
        return c + pending if pending is not None else c

    # ---- mounts as they happen ------------------------------------------------
    def _read_mount_events(self, events: list) -> tuple[list, list]:
        """The kernel's overlay mount events -> mounts with their directories
        resolved (stat: I/O, so no lock held), and mount points learnt late."""
        seen, moved = [], []
        for ev in events:
            sm, late = self.assembler.feed(ev)
            if late is not None:
                moved.append(late)
            if sm is not None:
                up = resolve_dir(sm.pid, sm.upperdir) if sm.ok else None
                work = resolve_dir(sm.pid, sm.workdir) if up else None
                host = self._upper_mount(f"{os.major(up[0])}:{os.minor(up[0])}") if up else None
                seen.append((sm, up, work, host))
        return seen, moved

    def _upper_mount(self, dev: str):
        """The mount of upper fs `dev` here (mount_of_dev), remembered: a
        burst of container starts on one disk reads the mount table once."""
        m = self._upper_mounts.get(dev)
        if m is None or not _mounted_there(m.mountpoint, dev):   # (a loop device reused)
            m = self._upper_mounts[dev] = mount_of_dev(dev)
        return m

    def _adopt(self, seen: list, moved: list) -> None:
        """Link each mount seen in the kernel to the overlay the mount table
        showed, or, when it is gone already, watch it from its directories
        alone.  Either way it can claim its orphans now.  A mount made with
        the new API is attached (in the mount table) only at its
        move_mount: it is placed then, its orphans kept until that."""
        now = self.now()
        for seq, (sm, *_rest, since) in list(self._unplaced.items()):
            if now - since > UNPLACED_WAIT:           # never attached, or that event lost
                del self._unplaced[seq]
                self.settler.take(seq)
        for sm, up, work, host in seen:
            if up is not None and sm.target is None:
                self._unplaced[sm.seq] = (sm, up, work, host, now)
            else:
                self._place(sm, up, work, host)
        for seq, target in moved:
            waiting = self._unplaced.pop(seq, None)
            if waiting is not None:
                sm, up, work, host, _since = waiting
                self._place(replace(sm, target=target), up, work, host)
                continue
            for w in self._overlays():
                if w.seq == seq and w.ov is not None and not w.ov.mountpoint:
                    w.ov = replace(w.ov, mountpoint=target, mountpoints=(target,))
                    if w.key in self.model.metas:
                        self.model.add(replace(self.model.metas[w.key], mountpoint=target))

    def _place(self, sm: SeenMount, up, work, host) -> None:
        self.settler.take(sm.seq)
        if up is None:
            return                            # failed, read-only, or its upperdir is gone
        udev = kdev(os.major(up[0]), os.minor(up[0]))
        w = self._table_overlay(udev, up[1], sm.start_ns)
        if w is not None:
            w.mounted_ns = sm.start_ns
        elif self.only is None or (sm.target and os.path.normpath(sm.target) in self.only):
            self._watch_instant(sm, udev, up, work, host)

    def _overlays(self):
        """Every overlay watched: with a slot (live or in grace), and without."""
        yield from self.watched.values()
        yield from self.slotless.values()

    def _table_overlay(self, udev: int, upper_ino: int, start_ns: int) -> _Watched | None:
        """The overlay the mount table showed for a mount seen in the kernel:
        on the same upperdir and still mounted, or else shown only after
        this mount began and linked to no mount event yet (a table read
        can catch a mount, and the next one miss it, before its event is
        read)."""
        began = self._t(start_ns)
        gone = None
        for w in self.watched.values():
            if w.ov is None or w.upper_dev != udev or w.ov.upper_ino != upper_ino:
                continue
            if w.gone_since is None:
                return w
            if w.mounted_ns is None and w.seen_at is not None and w.seen_at >= began:
                gone = w
        return gone

    def _watch_instant(self, sm: SeenMount, udev: int, up: tuple, work: tuple | None,
                       host) -> None:
        """An overlay that came and went before the mount table showed it
        (`host`: the mount of its upper fs here, if any)."""
        dev_s = format_dev(udev)
        ov = Overlay(
            mountpoint=sm.target or "", mnt_ns=_mnt_ns(sm.pid), mount_id=0, dev="",
            upperdir=up[2], workdir=work[2] if work else None, lowerdirs=(),
            upper_dev=dev_s, upper_fstype=host.fstype if host else None,
            upper_ino=up[1], work_ino=work[1] if work and work[0] == up[0] else None,
            options=sm.flags, pid=sm.pid,
            upper_mountpoint=host.mountpoint if host else None,
            upper_source=host.source if host else None)
        if udev not in self.upper:
            self._watch_upper(udev, ov)
        # A slot lets the kernel charge what comes after (a volatile
        # overlay's writeback); without one the orphans it left are all
        # it gets.  A quarter of the slots stay for overlays that live.
        ref = None
        if self.probes.free_slots > self.probes.limits.max_slots // 4:
            ref = self.probes.watch_overlay(0, udev, ov.upper_ino, ov.work_ino)
        now = self.now()
        if ref is not None:
            slot, gen = ref
            key = f"o{slot}.{gen}"
            w = _Watched(key, slot, gen, ov, 0, udev, gone_since=now, mounted_ns=sm.start_ns,
                         seq=sm.seq)
            self.watched[slot] = w
            self.by_slotgen[(slot, gen)] = key
        else:
            key = f"m{sm.seq}.{sm.start_ns}"
            w = _Watched(key, None, 0, ov, 0, udev, gone_since=now, mounted_ns=sm.start_ns,
                         seq=sm.seq)
            self.slotless[key] = w
        self.instant_overlays += 1
        self._add_meta(ov, OverlayMeta(
            key=key, kind="overlay", mountpoint=ov.mountpoint, upper_dev=dev_s,
            mnt_ns=ov.mnt_ns, upperdir=ov.upperdir, workdir=ov.workdir, options=ov.options,
            container=self.resolver.for_overlay(ov), fstype=ov.upper_fstype,
            upper_source=ov.upper_source, dev=None,
            first_seen=max(0.0, min(now, self._t(sm.start_ns))), helper=helper_of(ov)))
        self.model.gone(key, now)

    # ---- orphans ---------------------------------------------------------------
    def _take_orphans(self, final: bool = False) -> None:
        """Charge each orphan to the overlay whose upperdir or workdir is
        above it and whose mount began before it; one that no mount still
        unknown can claim belongs to the rest of its upper fs.

        In two steps, so no event that lands between a read and the drop is
        lost: a sample decides the owner and, if that owner has a slot,
        tells the kernel to send the inode's events there from now on; the
        next sample reads the orphan, frozen since, a last time, carries
        its counters to the owner and drops it.  An owner without a slot
        cannot take the events itself: its orphans stay until it is
        forgotten (_owner_done).  Meanwhile an orphan's counters count for
        its owner as pending."""
        orphans = {o.key: o for o in self.probes.read_orphans()}
        self._settle_decided(orphans, force=False)
        self._decide(orphans)
        if final:
            self._settle_decided({o.key: o for o in self.probes.read_orphans()}, force=True)
        pending: dict[str, Counters] = {}
        for d in self._deciding.values():
            pending[d.owner] = pending.get(d.owner, Counters()) + d.counters
        self._pending = pending

    def _settle_decided(self, orphans: dict, force: bool) -> None:
        """Carry the orphans decided at an earlier sample whose counters
        can no longer move (`orphans` is what the map holds now; those
        settled leave it)."""
        done = []
        for k, d in list(self._deciding.items()):
            o = orphans.get(k)
            if o is None or o.id != d.id:
                # pushed out of the LRU map: what the last read saw is all
                # there is (an orphan made anew under the key is decided anew)
                self.carry[d.owner] = self._with_carry(d.owner, d.counters)
                del self._deciding[k]
                self._orphan_gone(d.id)
                if d.marked:
                    done.append(k)
                continue
            del orphans[k]
            if d.marked or force or self._owner_done(d.owner, o.counters == d.counters):
                self.carry[d.owner] = self._with_carry(d.owner, o.counters)
                del self._deciding[k]
                self._orphan_gone(d.id)
                done.append(k)
            else:
                d.counters = o.counters
        self.probes.drop_orphans(done)

    def _orphan_gone(self, orphan_id: int) -> None:
        self._orphan_left[(bpfdefs.ORPHAN_SLOT, orphan_id)] = self.now()

    def _forget_ids(self) -> None:
        """Long-running views: forget the (slot, gen) of overlays the model
        has forgotten, and orphans' owners a while after they left the map
        (no event can name them any more), so churn costs no memory."""
        metas = self.model.metas
        for sg in [sg for sg, key in self.by_slotgen.items() if key not in metas]:
            del self.by_slotgen[sg]
        before = self.now() - ORPHAN_OWNER_GRACE
        while self._orphan_left:
            sg, t = next(iter(self._orphan_left.items()))
            if t >= before:
                break
            del self._orphan_left[sg]
            self.orphan_owner.pop(sg, None)

    def _owner_done(self, owner: str, still: bool) -> bool:
        """May an unmarked orphan be dropped?  An overlay without a slot
        keeps its orphans until it is forgotten (its umount flush may write
        them back late, and nothing else would take those bytes for it);
        any other owner once their counters stood `still` for a sample."""
        w = self.slotless.get(owner)
        if w is None:
            return still
        return self.now() - w.gone_since > GONE_GRACE

    def _decide(self, orphans: dict) -> None:
        """Find the owners of the orphans not decided yet."""
        if not orphans:
            self.orphans_waiting = 0
            return
        dirs: dict[tuple[int, int], _Watched] = {}
        for w in self._overlays():
            if w.ov is not None and w.mounted_ns is not None:
                for ino in (w.ov.upper_ino, w.ov.work_ino):
                    if ino:
                        dirs[(w.upper_dev, ino)] = w
        settled = self.settler.settled
        nobody, waiting, to_mark = [], 0, []
        for o in orphans.values():
            owner = _claimant(o, dirs)
            if owner is None and o.seq > settled:
                waiting += 1                  # a mount not yet known may own it
                continue
            if owner is None:
                fs = self.upper.get(o.dev)
                owner = fs.key if fs is not None else None
            if owner is None:
                nobody.append(o.key)
                continue
            put_bounded(self.orphan_owner, (bpfdefs.ORPHAN_SLOT, o.id), owner,
                        ORPHAN_OWNERS_KEPT)
            self._deciding[o.key] = _Deciding(owner, o.id, o.counters)
            if owner not in self.slotless:     # it has a slot to take the events
                to_mark.append(o.key)
        for k in self.probes.mark_orphans_decided(to_mark):
            self._deciding[k].marked = True
        self.probes.drop_orphans(nobody)
        self.orphans_waiting = waiting

    def _key_of(self, slot: int, gen: int) -> str | None:
        if slot == bpfdefs.ORPHAN_SLOT:
            return self.orphan_owner.get((slot, gen))
        return self.by_slotgen.get((slot, gen))

    def _store_sample(self, sample: tuple) -> None:
        now, counters, dirty, flushes, stats = sample
        self._orphan_errors_decided(now)
        self.model.counters(now, counters, dirty)
        for f in flushes:
            self.model.flush(f)
        self.model.set_self_stats(now, stats)
        self.model.tick(now)

    def finish(self) -> Model:
        """Final read at the end of a session: close pending flushes."""
        events = self.probes.poll(0)
        seen, moved = self._read_mount_events([e for e in events if e.type == bpfdefs.EV_MOUNT])
        with self.lock:
            for ev in events:
                if ev.type != bpfdefs.EV_MOUNT:
                    self._on_event(ev)
            self._adopt(seen, moved)
            for sm, up, work, host, _since in self._unplaced.values():
                self._place(sm, up, work, host)      # the end: where it went is not known
            self._unplaced.clear()
        self.settler.advance(self.probes.mounts_begun(), time.monotonic())
        sample = self._read_sample(final=True)
        with self.lock:
            self._store_sample(sample)
        return self.model

    def _dirty_now(self) -> dict[str, int]:
        raw = self.probes.read_dirty_now(int(DIRTY_MAX_AGE * 1e9))
        out: dict[str, int] = {}
        for (slot, gen), n in raw.items():
            key = self._key_of(slot, gen)
            if key is not None:
                out[key] = out.get(key, 0) + n
        return out

    def self_stats(self) -> dict:
        p = self.probes
        d = dict(p.read_counters())
        d["map_fill"] = {k: {"entries": n, "capacity": c} for k, (n, c) in p.map_fill().items()}
        d["slots_exhausted"] = p.slots_exhausted
        d["overlays_watched"] = sum(1 for w in self.watched.values() if w.ov and w.gone_since is None)
        d["refresh_seconds"] = round(self.refresh_seconds, 6)
        d["overlays_seen_only_mounting"] = self.instant_overlays
        d["orphans_waiting"] = self.orphans_waiting
        # events the kernel did not run our programs for (see program_stats)
        d["recursion_misses"] = {n: m for n, (_ns, _c, m) in p.program_stats()[1].items() if m}
        return d

    def program_stats(self) -> tuple[bool, dict[str, tuple[int, int, int]]]:
        """BPF run time per program (probes.program_stats); safe from any thread."""
        p = self.probes
        return p.program_stats() if p is not None else (False, {})

    # ---- events --------------------------------------------------------------
    def _on_event(self, ev: RawEvent) -> None:
        if ev.type == bpfdefs.EV_FLUSH_DONE:
            self.flush_done[ev.flush_id] = ev.end_ns
        elif ev.type == bpfdefs.EV_FLUSH:
            self.pending.append(_PendingFlush(ev, self.now(), self._flush_target(ev)))
        elif ev.type == bpfdefs.EV_WB_ERROR:
            key = self._key_of(ev.slot, ev.gen)
            if key is None and ev.slot == bpfdefs.ORPHAN_SLOT:
                self._orphan_errors.append((self.now(), ev))   # decided at the next sample
                return
            if key is None:
                self.unattributed_events += 1
                return
            self.model.wb_error(WbError(self._t(ev.ts_ns), key, ev.ino, ev.err))
        elif ev.type == bpfdefs.EV_ERR_RETURNED:
            key = self.by_slotgen.get((ev.slot, ev.gen))
            if key is None:
                self.unattributed_events += 1
                return
            self.model.error_returned(ErrorReturned(self._t(ev.ts_ns), key,
                                                    bpfdefs.RET_KINDS.get(ev.kind, "?"),
                                                    ev.err, ev.pid, ev.comm))

    def _orphan_errors_decided(self, now: float) -> None:
        waiting = []
        for seen, ev in self._orphan_errors:
            key = self._key_of(ev.slot, ev.gen)
            if key is not None:
                self.model.wb_error(WbError(self._t(ev.ts_ns), key, ev.ino, ev.err))
            elif now - seen < ORPHAN_WAIT:
                waiting.append((seen, ev))
            else:
                self.unattributed_events += 1
        self._orphan_errors = waiting

    def _ready_flushes(self, final: bool) -> list[Flush]:
        """The flushes that are complete.  syncfs/sync are at syscall exit; an
        umount's flush runs after it (task work), so it is closed once its
        writeback went quiet (or at the end: final)."""
        if not self.pending:
            return []
        tail = self.probes.limits.umount_tail_ms / 1000
        ready, waiting = [], []
        now_k = time.monotonic_ns()
        for p in self.pending:
            ev = p.ev
            if p.target is None and ev.kind == bpfdefs.FLUSH_UMOUNT:
                p.target = self._overlay_at(ev.path, ev.ts_ns)    # known from its mount event now?
            if self.orphans_waiting and not final and self.now() - p.seen < ORPHAN_WAIT:
                waiting.append(p)             # its victims may be orphans not yet charged
                continue
            if ev.kind == bpfdefs.FLUSH_UMOUNT and not final and ev.flush_id not in self.flush_done:
                last = self.probes.flush_last(ev.flush_id) or ev.end_ns
                if (now_k - max(last, ev.end_ns)) / 1e9 < tail:
                    waiting.append(p)
                    continue
            ready.append(p)
        self.pending = waiting
        if not ready:
            return []
        out = []
        victims = self.probes.take_victims({p.ev.flush_id for p in ready})
        for p in ready:
            ev = p.ev
            end_ns = ev.end_ns
            if ev.kind == bpfdefs.FLUSH_UMOUNT:
                if ev.flush_id in self.flush_done:
                    end_ns = self.flush_done.pop(ev.flush_id)   # exact: sync_filesystem returned
                else:
                    end_ns = max(end_ns, self.probes.flush_last(ev.flush_id) or 0)
                self.probes.forget_flush(ev.flush_id, ev.tid)
            f = self._flush(ev, p.target, end_ns, victims.get(ev.flush_id, {}))
            if f is not None:
                out.append(f)
        return out

    def _flush_target(self, ev: RawEvent) -> _Watched | None:
        """The overlay a syncfs (by its fd's device) or an umount (by its
        path) targeted, looked up while it is still known."""
        kind = bpfdefs.FLUSH_KINDS.get(ev.kind)
        if kind == "syncfs":
            return self.ovl_by_dev.get(ev.dev)
        if kind == "umount":
            return self._overlay_at(ev.path, ev.ts_ns)
        return None

    def _flush(self, ev: RawEvent, w: _Watched | None, end_ns: int, victims: dict) -> Flush | None:
        kind = bpfdefs.FLUSH_KINDS.get(ev.kind, "?")
        target = None
        upper_dev = None
        if w is not None:
            target, upper_dev = w.key, format_dev(w.upper_dev)
        elif kind == "syncfs" and ev.dev in self.upper:
            upper_dev = format_dev(ev.dev)
        if upper_dev is None and ev.synced_dev and ev.synced_dev in self.upper:
            upper_dev = format_dev(ev.synced_dev)     # sync_filesystem hook: exact
        by_key: dict[str, int] = {}
        for (slot, gen), b in victims.items():
            key = self._key_of(slot, gen)
            if key is not None:
                by_key[key] = by_key.get(key, 0) + b
        vs = [Victim(k, b) for k, b in by_key.items()]
        vs.sort(key=lambda v: -v.bytes_written_back)
        if kind != "sync" and target is None and upper_dev is None and not vs:
            return None                       # a flush of some other filesystem
        container = None
        meta = self.model.metas.get(target) if target else None
        if meta is not None and meta.container:
            container = meta.container
        else:
            container = self._container_of(ev.pid, ev.cgroup_id)
        return Flush(kind=kind, pid=ev.pid, tid=ev.tid, comm=ev.comm, start=self._t(ev.ts_ns),
                     duration=max(0.0, (end_ns - ev.ts_ns) / 1e9), ret=ev.err, target=target,
                     upper_dev=upper_dev, victims=vs, caller_container=container,
                     path=ev.path, target_dev=format_dev(ev.dev) if ev.dev else None,
                     synced_dev=format_dev(ev.synced_dev) if ev.synced_dev else None,
                     sb_err_advanced=bool(ev.sb_err_advanced))

    def _overlay_at(self, path: str, before_ns: int) -> _Watched | None:
        """The overlay mounted at `path` (live or in its grace period); of
        several, the one mounted last before `before_ns`."""
        if not path:
            return None
        norm = os.path.normpath(path)
        best = None
        for w in self._overlays():
            if w.ov is None or not w.ov.mountpoint or os.path.normpath(w.ov.mountpoint) != norm:
                continue
            t = w.mounted_ns or 0
            if t <= before_ns and (best is None or t > (best.mounted_ns or 0)):
                best = w
        return best

    def _container_of(self, pid: int, cgroup_id: int):
        """The caller's container: from the cgroup v2 id BPF recorded (the
        process may be gone by now), else from /proc/<pid>/cgroup."""
        path = self.cgroups.path(cgroup_id) if cgroup_id else None
        if path and path != "/":
            c = self.resolver.for_cgroup(path)
            if c is not None:
                return c
        try:
            return self.resolver.for_cgroup(cgroup_of_pid(pid))
        except (OSError, ValueError):
            return None


def _claimant(o: Orphan, dirs: dict[tuple[int, int], _Watched]) -> str | None:
    """The overlay an orphan belongs to: the nearest directory above it
    that is an upperdir or workdir of an overlay mounted before it."""
    for ino in o.ancestors:                  # the inode itself first, then up
        w = dirs.get((o.dev, ino))
        if w is not None and w.mounted_ns is not None and w.mounted_ns <= o.first_ns:
            return w.key
    return None


def _mounted_there(path: str, dev: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" == dev


def _mnt_ns(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0
