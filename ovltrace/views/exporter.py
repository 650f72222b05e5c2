"""`ovltrace exporter`: the model as Prometheus metrics.

The session loop runs in the main thread; the HTTP server answers in its
own threads and reads the model at scrape time (a custom collector), under
`session.lock`.  Everything the collector needs is copied under the lock;
the work (accumulating, folding, formatting) happens outside it.

Why the collector keeps state of its own:
  * counters must never go backwards.  Every output series is an
    accumulator fed with the per-overlay increments of the model's `total`
    counters, so folding overlays into an "other" bucket, merging label
    sets (--labels) or an overlay going away never lowers a live series;
  * the model keeps flushes and errors as lists; the collector consumes
    only what is new since the previous scrape, so a scrape costs the same
    after a day as after a minute.

Cardinality: at most --top-n overlays get series of their own (ranked by
recent activity, overlays with writeback errors first, re-ranked every
--rank-interval); the rest are folded into container="other" per upper
device.  Caller/victim pairs are capped the same way, and --series-limit
is a hard cap on the samples of one scrape.
"""
from __future__ import annotations

import bisect
import errno as errno_mod
import threading
import time
from dataclasses import dataclass, field

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from ..model import Counters, Model
from .common import short_name
from .metrics import (DEFAULT_LABELS, DURATION_BUCKETS, FAMILIES, OTHER, OVERLAY_COUNTERS,
                      OVERLAY_LABELS, PAIR_LABELS)

DEFAULT_PORT = 19435
DEFAULT_LISTEN = f"localhost:{DEFAULT_PORT}"


@dataclass
class ExporterConfig:
    labels: tuple[str, ...] = DEFAULT_LABELS
    top_n: int = 100                 # overlays with series of their own
    pair_limit: int = 1000           # caller/victim pairs with series of their own
    series_limit: int = 20000        # hard cap on samples per scrape
    rank_interval: float = 60.0      # seconds between re-rankings
    gone_ttl: float = 60.0           # keep an unmounted overlay's series this long

    def __post_init__(self):
        bad = [l for l in self.labels if l not in OVERLAY_LABELS]
        if bad:
            raise ValueError(f"unknown label {bad[0]!r} (choose from {', '.join(OVERLAY_LABELS)})")
        # labels keep their canonical order; container and device always stay
        # (the "other" bucket and the per-device totals need them)
        wanted = set(self.labels) | {"container", "device"}
        self.labels = tuple(l for l in OVERLAY_LABELS if l in wanted)


def errno_label(e: int) -> str:
    return errno_mod.errorcode.get(abs(e), "unknown" if e == 0 else str(abs(e)))


# ---- device names ------------------------------------------------------------

_device_cache: dict[str, str] = {}


def device_name(dev: str | None) -> str:
    """'7:1' -> the mount source ('/dev/loop1'), as node_exporter's `device`
    label shows it; the number itself when no mount has it."""
    if not dev:
        return ""
    name = _device_cache.get(dev)
    if name is None:
        name = dev
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    parts = line.split()
                    if parts[2] == dev and " - " in line:
                        src = line.split(" - ", 1)[1].split()
                        if len(src) > 1 and src[1].startswith("/"):
                            name = src[1]
                            break
        except OSError:
            pass
        _device_cache[dev] = name
    return name


# ---- the collector -------------------------------------------------------------

@dataclass
class _Seen:
    """What the collector remembers of one overlay (or upper fs) key."""
    last: Counters
    own: bool = False
    rank_base: Counters = field(default_factory=Counters)
    unreported: int = 0


class OverlayCollector:
    """A prometheus_client custom collector over a live or hand-built Model.

    model_source: callable returning the current Model (a session replaces
    its model when it starts).  lock: held while reading the model.
    self_source: optional callable returning extra self-metric inputs
    (BPF program run times) read outside the lock."""

    def __init__(self, model_source, lock=None, config: ExporterConfig | None = None,
                 clock=time.monotonic, bpf_programs=None, device_namer=device_name):
        self.model_source = model_source
        self.lock = lock or threading.RLock()
        self.config = config or ExporterConfig()
        self.clock = clock
        self.bpf_programs = bpf_programs      # callable -> {name: (run_ns, run_cnt)} | None
        self.device_namer = device_namer
        self._collect_lock = threading.Lock()  # scrapes run one at a time: consistent state
        self._reset(None)
        self.last_collect_seconds = 0.0

    def _reset(self, model) -> None:
        self._model_id = id(model) if model is not None else None
        self.seen: dict[str, _Seen] = {}
        self.expired: set[str] = set()
        self.metas = {}
        self._last: dict[str, tuple] = {}                    # records list -> (last consumed, its t)
        self.acc: dict[tuple, Counters] = {}                 # overlay labelset -> counters
        self.wb_err: dict[tuple, int] = {}                   # (ls, errno)
        self.returned: dict[tuple, int] = {}                 # (ls, call, errno)
        self.fs_acc: dict[tuple, Counters] = {}              # (dev, scope) -> counters
        self.fs_info: dict[str, tuple[str, str]] = {}        # dev -> (mountpoint, fstype)
        self.hist: dict[tuple, list] = {}                    # (caller ls, kind) -> [buckets, sum, count]
        self.flush_err: dict[tuple, int] = {}                # (caller ls, kind, errno)
        self.others: dict[tuple, list] = {}                  # (caller ls, kind) -> [bytes, seconds]
        self.matrix: dict[tuple, list] = {}                  # (caller ls, victim ls, kind) -> [b, s, n]
        self.leaks: dict[tuple, int] = {}                    # (victim ls, source ls, errno)
        self.failed_first: dict[str, float] = {}             # key -> first wb error t
        self.extra_callers: set[tuple] = set()               # non-overlay caller labelsets
        self.series_dropped = 0
        self._last_rank = None
        self._labels_of: dict[str, tuple] = {}
        self._pairs: set[tuple] = set()

    # ---- labels ------------------------------------------------------------
    def _overlay_values(self, meta) -> dict[str, str]:
        c = meta.container
        return {
            "container": c.name if c else short_name(meta.mountpoint, 64),
            "container_id": c.id if c else "",
            "pod": (c.pod or "") if c else "",
            "namespace": (c.namespace or "") if c else "",
            "runtime": c.runtime if c else "",
            "mountpoint": meta.mountpoint,
            "device": self.device_namer(meta.upper_dev),
        }

    def _ls(self, values: dict[str, str]) -> tuple:
        return tuple(values.get(l, "") for l in self.config.labels)

    def _other_ls(self, upper_dev: str | None) -> tuple:
        return self._ls({"container": OTHER, "device": self.device_namer(upper_dev)})

    def labelset(self, key: str) -> tuple:
        """The output label set of an overlay now: its own, or the bucket."""
        s = self.seen.get(key)
        meta = self.metas.get(key)
        if meta is None:
            return self._other_ls(None)
        if s is not None and s.own:
            ls = self._labels_of.get(key)
            if ls is None:
                ls = self._labels_of[key] = self._ls(self._overlay_values(meta))
            return ls
        return self._other_ls(meta.upper_dev)

    def _pair_part(self, ls: tuple) -> tuple:
        idx = self.config.labels
        return tuple(ls[idx.index(l)] for l in PAIR_LABELS if l in idx)

    # ---- reading the model (under the lock) -------------------------------
    def _read(self) -> dict:
        with self.lock:
            model: Model = self.model_source()
            if model is None:
                return {}
            if id(model) != self._model_id:
                self._reset(model)
            if len(self.expired) > len(model.metas):     # pruned keys: forget them
                self.expired = {k for k in self.expired if k in model.metas}
            totals = {}
            for key, meta in model.metas.items():
                if key in self.expired:
                    continue
                s = model.samples.get(key)
                totals[key] = (meta, s[-1][1] if s else Counters(), meta.gone_at)
            view = {
                "now": model.now,
                "metas": dict(model.metas),
                "totals": totals,
                "dirty": dict(model.dirty_now),
                "flushes": self._new("flushes", model.flushes, lambda f: f.start + f.duration),
                "wb_errors": self._new("wb_errors", model.wb_errors, lambda e: e.t),
                "returned": self._new("returned", model.errors_returned, lambda e: e.t),
                "hooks": list(model.hooks),
                "self": dict(model.self_stats),
            }
        return view

    def _new(self, name: str, records: list, when) -> list:
        """Records appended since the previous scrape.  The model appends,
        trims the oldest (a cap) and prunes by time, so positions shift: find
        the last record consumed (by identity, from the end); if it is gone,
        everything kept that is newer than its time."""
        last = self._last.get(name)
        new = records
        if last is not None:
            obj, t = last
            for i in range(len(records) - 1, -1, -1):
                if records[i] is obj:
                    new = records[i + 1:]
                    break
            else:
                new = [r for r in records if when(r) > t]
        if new:
            self._last[name] = (new[-1], when(new[-1]))
        return list(new)

    # ---- updating the accumulators (outside the lock) ----------------------
    def _update(self, view: dict) -> None:
        self.metas = view["metas"]
        now = view["now"]
        cfg = self.config
        own_count = sum(1 for s in self.seen.values() if s.own)
        # 1. counters: increments since the previous scrape
        for key, (meta, total, _gone) in view["totals"].items():
            s = self.seen.get(key)
            if s is None:
                s = self.seen[key] = _Seen(Counters())
                if meta.kind == "overlay" and own_count < cfg.top_n:
                    s.own = True
                    own_count += 1
            delta = total - s.last
            s.last = total
            if meta.kind == "upperfs":
                self.fs_info[meta.upper_dev] = (meta.mountpoint, meta.fstype or "")
                self._add_fs(meta.upper_dev, "outside", delta)
                continue
            self._add_fs(meta.upper_dev, "overlays", delta)
            ls = self.labelset(key)
            acc = self.acc.get(ls)
            self.acc[ls] = delta if acc is None else acc + delta
        # 2. rare events, in time order (errors returned clear "unreported")
        events = [(e.t, 0, e) for e in view["wb_errors"]]
        events += [(e.t, 1, e) for e in view["returned"]]
        for f in view["flushes"]:
            if f.ret < 0 and f.target and f.kind == "syncfs":
                events.append((f.start + f.duration, 2, f))
        events.sort(key=lambda x: (x[0], x[1]))
        for t, kind, e in events:
            if kind == 0:
                self._on_wb_error(e)
            elif kind == 1:
                self._on_returned(e.key, e.call, e.errno, t)
            else:
                self._on_returned(e.target, "syncfs", -e.ret, t)
        for f in view["flushes"]:
            self._on_flush(f)
        self.dirty = view["dirty"]
        # 3. re-rank, expire
        live = [k for k, (m, _t, gone) in view["totals"].items() if m.kind == "overlay" and gone is None]
        if len(live) > cfg.top_n or any(not self.seen[k].own for k in live):
            if self._last_rank is None or now - self._last_rank >= cfg.rank_interval:
                self._rank(live)
                self._last_rank = now
        elif self._last_rank is None:
            self._last_rank = now
        for key, (meta, _t, gone) in view["totals"].items():
            if gone is not None and now - gone > cfg.gone_ttl:
                self._expire(key)
        for key in [k for k in self.seen if k not in view["totals"]]:
            self._expire(key)           # pruned from the model (session retention)

    def _add_fs(self, dev: str, scope: str, delta: Counters) -> None:
        k = (dev, scope)
        acc = self.fs_acc.get(k)
        self.fs_acc[k] = delta if acc is None else acc + delta

    def _on_wb_error(self, e) -> None:
        if e.key not in self.metas:
            return
        self.failed_first.setdefault(e.key, e.t)
        s = self.seen.get(e.key)
        if s is not None:
            s.unreported += 1
        if self.metas[e.key].kind == "overlay":     # fs totals come from the counters
            k = (self.labelset(e.key), errno_label(e.errno))
            self.wb_err[k] = self.wb_err.get(k, 0) + 1

    def _on_returned(self, key: str, call: str, err: int, t: float) -> None:
        meta = self.metas.get(key)
        if meta is None:
            return
        s = self.seen.get(key)
        if s is not None:
            s.unreported = 0
        ls = self.labelset(key)
        k = (ls, call, errno_label(err))
        self.returned[k] = self.returned.get(k, 0) + 1
        # a leak: handed an error while its own inodes never failed, and
        # others' on the same upper fs had (the model's rule, kept per event)
        if call != "syncfs" or key in self.failed_first:
            return
        for src, first in self.failed_first.items():
            sm = self.metas.get(src)
            if sm and sm.kind == "overlay" and sm.upper_dev == meta.upper_dev and first <= t:
                pair = self._pair(ls, self.labelset(src))
                lk = (pair[0], pair[1], self.device_namer(meta.upper_dev), errno_label(err))
                self.leaks[lk] = self.leaks.get(lk, 0) + 1

    def _pair(self, a: tuple, b: tuple) -> tuple[tuple, tuple]:
        """Caller/victim (or victim/source) parts of a pair, folded into
        (a, other) once pair_limit distinct pairs exist."""
        pa, pb = self._pair_part(a), self._pair_part(b)
        if (pa, pb) not in self._pairs:
            if len(self._pairs) >= self.config.pair_limit:
                return pa, self._pair_part(self._other_ls(None))
            self._pairs.add((pa, pb))
        return pa, pb

    def _caller_ls(self, f) -> tuple:
        """Overlay labels + comm: the overlay a flush targeted, else the
        caller's container, else the host process (comm)."""
        if f.target and f.target in self.metas:
            return self.labelset(f.target) + ("",)
        c = f.caller_container
        if c is not None:
            ls = self._ls({"container": c.name, "container_id": c.id, "pod": c.pod or "",
                           "namespace": c.namespace or "", "runtime": c.runtime,
                           "device": self.device_namer(f.upper_dev)}) + ("",)
        else:
            ls = self._ls({"device": self.device_namer(f.upper_dev)}) + (f.comm,)
        if ls not in self.extra_callers:
            if len(self.extra_callers) >= self.config.top_n:
                return self._other_ls(f.upper_dev) + ("",)
            self.extra_callers.add(ls)
        return ls

    def _on_flush(self, f) -> None:
        caller = self._caller_ls(f)
        hk = (caller, f.kind)
        h = self.hist.get(hk)
        if h is None:
            h = self.hist[hk] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0, 0]
        h[0][bisect.bisect_left(DURATION_BUCKETS, f.duration)] += 1
        h[1] += f.duration
        h[2] += 1
        if f.ret < 0:
            ek = (caller, f.kind, errno_label(f.ret))
            self.flush_err[ek] = self.flush_err.get(ek, 0) + 1
        others = [v for v in f.victims if v.key != f.target and v.bytes_written_back > 0
                  and v.key in self.metas and self.metas[v.key].kind == "overlay"]
        if not others:
            return
        o = self.others.setdefault(hk, [0, 0.0])
        o[0] += sum(v.bytes_written_back for v in others)
        o[1] += f.duration
        caller_pair = self._pair_part(caller[:-1]) + (caller[-1],)
        for v in others:
            vls = self.labelset(v.key)
            _cp, vp = self._pair(caller[:-1], vls)
            mk = (caller_pair, vp, self.device_namer(self.metas[v.key].upper_dev), f.kind)
            m = self.matrix.get(mk)
            if m is None:
                m = self.matrix[mk] = [0, 0.0, 0]
            m[0] += v.bytes_written_back
            m[1] += f.duration
            m[2] += 1

    # ---- ranking and expiry -----------------------------------------------
    def _score(self, key: str) -> tuple:
        s = self.seen[key]
        d = s.last - s.rank_base
        return (1 if d.writeback_errors or s.unreported else 0,
                d.bytes_dirtied + d.bytes_written_back + d.copy_up_bytes,
                1 if s.own else 0)

    def _rank(self, live: list[str]) -> None:
        ranked = sorted(live, key=self._score, reverse=True)
        keep = set(ranked[: self.config.top_n])
        for key in live:
            s = self.seen[key]
            if s.own and key not in keep:
                s.own = False
                self._retire(key)
            elif not s.own and key in keep:
                s.own = True                   # a new series: starts at the true total
                ls = self.labelset(key)
                acc = self.acc.get(ls)
                self.acc[ls] = s.last if acc is None else acc + s.last
            s.rank_base = s.last

    def _retire(self, key: str) -> None:
        """Drop the series of an overlay that lost its own label set (demoted
        or expired), unless another live overlay shares that label set."""
        ls = self._labels_of.pop(key, None)
        if ls is None:
            return
        if any(self._labels_of.get(k) == ls for k in self._labels_of):
            return
        pp = self._pair_part(ls)
        self.acc.pop(ls, None)
        for d in (self.wb_err, self.returned):
            for k in [k for k in d if k[0] == ls]:
                del d[k]
        for d in (self.hist, self.flush_err, self.others):
            for k in [k for k in d if k[0][:-1] == ls]:
                del d[k]
        for k in [k for k in self.matrix if k[0][:-1] == pp or k[1] == pp]:
            del self.matrix[k]
        for k in [k for k in self.leaks if k[0] == pp or k[1] == pp]:
            del self.leaks[k]
        self._pairs = {p for p in self._pairs if pp not in p}

    def _expire(self, key: str) -> None:
        s = self.seen.pop(key, None)
        if s is not None and s.own:
            self._retire(key)
        self.failed_first.pop(key, None)
        self.expired.add(key)

    # ---- output ----------------------------------------------------------
    def describe(self):
        return []       # no describe-time collection: the model is read at scrape time

    def collect(self):
        t0 = time.perf_counter()
        with self._collect_lock:
            view = self._read()
            if view:
                self._update(view)
            fams = self._families(view)
            self.last_collect_seconds = time.perf_counter() - t0
        return fams

    def _families(self, view: dict) -> list:
        out = _Budget(self.config.series_limit)
        labels = list(self.config.labels)
        fam = _fam_factory(out)
        self._self_families(view, fam)

        # per upper filesystem
        fl = ["device", "mountpoint", "fstype", "scope"]
        fs_fams = [fam("ovltrace_upperfs_dirtied_bytes_total", fl),
                   fam("ovltrace_upperfs_written_back_bytes_total", fl),
                   fam("ovltrace_upperfs_writeback_errors_total", fl)]
        for (dev, scope), c in sorted(self.fs_acc.items()):
            mp, fstype = self.fs_info.get(dev, ("", ""))
            lv = [self.device_namer(dev), mp, fstype, scope]
            out.add(fs_fams[0], lv, c.bytes_dirtied)
            out.add(fs_fams[1], lv, c.bytes_written_back)
            out.add(fs_fams[2], lv, c.writeback_errors)
        n_fs = fam("ovltrace_upperfs_overlays", ["device", "mountpoint", "fstype"])
        per_dev: dict[str, int] = {}
        for key, s in self.seen.items():
            m = self.metas.get(key)
            if m is not None and m.kind == "overlay" and m.gone_at is None:
                per_dev[m.upper_dev] = per_dev.get(m.upper_dev, 0) + 1
        for dev, n in sorted(per_dev.items()):
            mp, fstype = self.fs_info.get(dev, ("", ""))
            out.add(n_fs, [self.device_namer(dev), mp, fstype], n)

        # per overlay: busiest first, so the hard cap cuts the quiet ones
        order = sorted(self.acc.items(), key=lambda kv: -kv[1].bytes_dirtied)
        for name, (fieldname, _h) in OVERLAY_COUNTERS.items():
            f = fam(name, labels)
            for ls, c in order:
                value = c.copy_up_ns / 1e9 if fieldname == "copy_up_seconds" else getattr(c, fieldname)
                out.add(f, list(ls), value)
        dirty: dict[tuple, int] = {}
        unreported: dict[tuple, int] = {}
        for key, s in self.seen.items():
            m = self.metas.get(key)
            if m is None or m.kind != "overlay":
                continue
            ls = self.labelset(key)
            dirty[ls] = dirty.get(ls, 0) + self.dirty.get(key, 0)
            unreported[ls] = unreported.get(ls, 0) + s.unreported
        f = fam("ovltrace_overlay_dirty_inodes", labels)
        for ls, n in sorted(dirty.items()):
            out.add(f, list(ls), n)
        f = fam("ovltrace_overlay_unreported_writeback_errors", labels)
        for ls, n in sorted(unreported.items()):
            out.add(f, list(ls), n)
        f = fam("ovltrace_overlay_writeback_errors_total", labels + ["errno"])
        for (ls, e), n in sorted(self.wb_err.items()):
            out.add(f, list(ls) + [e], n)
        f = fam("ovltrace_overlay_errors_returned_total", labels + ["call", "errno"])
        for (ls, call, e), n in sorted(self.returned.items()):
            out.add(f, list(ls) + [call, e], n)

        # per flush caller
        cl = labels + ["comm", "kind"]
        h = fam("ovltrace_flush_duration_seconds", cl)
        for (caller, kind), (buckets, total, count) in sorted(self.hist.items()):
            cum, acc = [], 0
            for le, n in zip(DURATION_BUCKETS, buckets):
                acc += n
                cum.append((_le(le), acc))
            cum.append(("+Inf", count))
            out.add_histogram(h, list(caller) + [kind], cum, total)
        f = fam("ovltrace_flush_errors_total", cl + ["errno"])
        for (caller, kind, e), n in sorted(self.flush_err.items()):
            out.add(f, list(caller) + [kind, e], n)
        fb = fam("ovltrace_flush_others_written_back_bytes_total", cl)
        fs = fam("ovltrace_flush_others_stall_seconds_total", cl)
        for (caller, kind), (b, secs) in sorted(self.others.items()):
            out.add(fb, list(caller) + [kind], b)
            out.add(fs, list(caller) + [kind], secs)

        # the interference matrix and error leaks
        pl = [l for l in PAIR_LABELS if l in labels]
        ml = ([f"caller_{l}" for l in pl] + ["caller_comm"] + [f"victim_{l}" for l in pl]
              + ["device", "kind"])
        mb = fam("ovltrace_interference_written_back_bytes_total", ml)
        ms = fam("ovltrace_interference_stall_seconds_total", ml)
        mn = fam("ovltrace_interference_flushes_total", ml)
        for (c, v, dev, kind), (b, secs, n) in sorted(self.matrix.items(), key=lambda kv: -kv[1][0]):
            lv = list(c) + list(v) + [dev, kind]
            out.add(mb, lv, b)
            out.add(ms, lv, secs)
            out.add(mn, lv, n)
        ll = [f"victim_{l}" for l in pl] + [f"source_{l}" for l in pl] + ["device", "errno"]
        f = fam("ovltrace_error_leaks_total", ll)
        for (v, s, dev, e), n in sorted(self.leaks.items()):
            out.add(f, list(v) + list(s) + [dev, e], n)

        if out.dropped:
            self.series_dropped += out.dropped
        f = fam("ovltrace_exporter_series_dropped_total", [])
        out.add(f, [], self.series_dropped, force=True)
        return out.families

    def _self_families(self, view: dict, fam) -> None:
        out = fam.budget
        st = view.get("self", {}) if view else {}
        f = fam("ovltrace_exporter_hook_info", ["hook", "mechanism"])
        for hk in (view.get("hooks", []) if view else []):
            out.add(f, [hk.get("name", "?"), hk.get("mechanism") or "none"], 1, force=True)
        f = fam("ovltrace_exporter_dropped_events_total", ["channel"])
        out.add(f, ["flushes"], st.get("events_dropped", 0), force=True)
        out.add(f, ["writeback_errors"], st.get("error_events_dropped", 0), force=True)
        f = fam("ovltrace_exporter_inode_cache_lookups_total", ["result"])
        out.add(f, ["miss"], st.get("cache_misses", 0), force=True)
        f = fam("ovltrace_exporter_attribution_failures_total", ["reason"])
        out.add(f, ["walk_too_deep"], st.get("walk_too_deep", 0), force=True)
        out.add(f, ["no_dentry"], st.get("walk_no_dentry", 0), force=True)
        f = fam("ovltrace_exporter_map_full_total", [])
        out.add(f, [], st.get("map_full", 0), force=True)
        fe = fam("ovltrace_exporter_bpf_map_entries", ["map"])
        fc = fam("ovltrace_exporter_bpf_map_max_entries", ["map"])
        for name, d in sorted((st.get("map_fill") or {}).items()):
            out.add(fe, [name], d.get("entries", 0), force=True)
            out.add(fc, [name], d.get("capacity", 0), force=True)
        f = fam("ovltrace_exporter_slots_exhausted_total", [])
        out.add(f, [], st.get("slots_exhausted", 0), force=True)
        f = fam("ovltrace_exporter_overlays", ["export"])
        own = sum(1 for k, s in self.seen.items() if s.own)
        folded = sum(1 for k, s in self.seen.items()
                     if not s.own and k in self.metas and self.metas[k].kind == "overlay")
        out.add(f, ["own"], own, force=True)
        out.add(f, ["other"], folded, force=True)
        f = fam("ovltrace_exporter_refresh_duration_seconds", [])
        out.add(f, [], st.get("refresh_seconds", 0.0), force=True)
        f = fam("ovltrace_exporter_collect_duration_seconds", [])
        out.add(f, [], self.last_collect_seconds, force=True)
        progs = self.bpf_programs() if self.bpf_programs else None
        f = fam("ovltrace_exporter_bpf_stats_enabled", [])
        out.add(f, [], 1 if bpf_stats_enabled() else 0, force=True)
        if progs:
            fr = fam("ovltrace_exporter_bpf_program_run_seconds_total", ["program"])
            fn = fam("ovltrace_exporter_bpf_program_runs_total", ["program"])
            for name, (ns, cnt) in sorted(progs.items()):
                out.add(fr, [name], ns / 1e9, force=True)
                out.add(fn, [name], cnt, force=True)


def _le(x: float) -> str:
    return repr(float(x))


class _Budget:
    """Builds families and enforces the hard series cap."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.dropped = 0
        self.families = []

    def add(self, fam, values, value, force=False) -> None:
        if not force and self.used >= self.limit:
            self.dropped += 1
            return
        self.used += 1
        fam.add_metric(values, value)

    def add_histogram(self, fam, values, buckets, total) -> None:
        cost = len(buckets) + 2
        if self.used + cost > self.limit:
            self.dropped += cost
            return
        self.used += cost
        fam.add_metric(values, buckets, total)


def _fam_factory(budget: _Budget):
    def fam(name: str, labels: list[str]):
        kind, help_ = FAMILIES[name]
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
               "histogram": HistogramMetricFamily}[kind]
        f = cls(name, help_, labels=labels)
        budget.families.append(f)
        return f
    fam.budget = budget
    return fam


# ---- BPF program cost ------------------------------------------------------------

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def bpf_stats_enabled() -> bool:
    try:
        with open(BPF_STATS) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


class BpfStatsSwitch:
    """--bpf-stats: turn kernel.bpf_stats_enabled on while running, then
    put back what was there (a sysctl is the host's, not ours)."""

    def __init__(self, wanted: bool):
        self.wanted = wanted
        self.old = None

    def __enter__(self):
        if self.wanted:
            from ..errors import OvltraceError
            try:
                with open(BPF_STATS) as f:
                    self.old = f.read().strip()
                with open(BPF_STATS, "w") as f:
                    f.write("1")
            except OSError as e:
                raise OvltraceError(f"cannot enable {BPF_STATS}: {e.strerror}") from None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            try:
                with open(BPF_STATS, "w") as f:
                    f.write(self.old)
            except OSError:
                pass


def program_stats_from_fds(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)} read from our own program fds'
    fdinfo, which the kernel fills when kernel.bpf_stats_enabled is on (no
    bpftool needed, and never another process's programs)."""
    out = {}
    for name, fd in fds.items():
        ns = cnt = 0
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k == "run_time_ns":
                        ns = int(v)
                    elif k == "run_cnt":
                        cnt = int(v)
        except (OSError, ValueError):
            continue
        out[name] = (ns, cnt)
    return out


def session_program_fds(session) -> dict[str, int]:
    """Names and fds of the BPF programs bcc loaded for this session."""
    bpf = getattr(getattr(session, "probes", None), "bpf", None)
    if bpf is None:
        return {}
    out = {}
    for name, fn in getattr(bpf, "funcs", {}).items():
        fd = getattr(fn, "fd", None)
        if isinstance(fd, int) and fd >= 0:
            out[name.decode() if isinstance(name, bytes) else str(name)] = fd
    return out


# ---- HTTP ------------------------------------------------------------------------

def parse_listen_address(text: str) -> tuple[str, int]:
    """'localhost:19435', ':19435' (all interfaces), '[::1]:19435' -> (host, port).
    ValueError with a one-line reason otherwise."""
    text = (text or "").strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port:
        raise ValueError(f"{text!r} is not HOST:PORT (examples: localhost:{DEFAULT_PORT}, "
                         f":{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{port!r} in {text!r} is not a port number (0-65535)")
    return host, int(port)


def make_server(host: str, port: int, app):
    """Bind now (so a busy port fails before the slow BPF compile)."""
    import socket
    from http.server import ThreadingHTTPServer

    from ..errors import OvltraceError
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OvltraceError(f"cannot listen on {host or '*'}:{port}: {e.strerror}") from None
    family = infos[0][0]

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

    try:
        return Server((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port), app)
    except OSError as e:
        raise OvltraceError(f"cannot listen on {host or '*'}:{port}: {e.strerror}") from None


def handler_for(registry, telemetry_path: str, healthy):
    """The request handler: metrics, health, a landing page."""
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import urlparse

    from prometheus_client.exposition import choose_encoder

    landing = (f"<html><head><title>ovltrace exporter</title></head><body>"
               f"<h1>ovltrace exporter</h1><p><a href=\"{telemetry_path}\">Metrics</a></p>"
               f"<p><a href=\"/-/healthy\">Health</a></p></body></html>").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = urlparse(self.path).path
            if path == telemetry_path:
                encoder, ctype = choose_encoder(self.headers.get("Accept"))
                try:
                    body = encoder(registry)
                except Exception as e:  # a scrape must answer, never hang up
                    self._send(500, "text/plain", f"collect failed: {e}\n".encode())
                    return
                self._send(200, ctype, body)
            elif path in ("/-/healthy", "/health", "/healthz"):
                ok, why = healthy()
                self._send(200 if ok else 503, "text/plain", (why + "\n").encode())
            elif path == "/":
                self._send(200, "text/html", landing)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code, ctype, body):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass        # scrapes every few seconds: no access log on stderr

    return Handler


def run_exporter(listen: str, telemetry_path: str, config: ExporterConfig,
                 overlays: list[str] | None, btf: str | None, bpf_stats: bool,
                 duration: float | None = None) -> int:
    from prometheus_client import CollectorRegistry

    from ..cli import Stopper, say, trace_for
    from ..errors import OvltraceError
    from ..session import Session

    try:
        host, port = parse_listen_address(listen)
    except ValueError as e:
        raise OvltraceError(f"bad --web.listen-address: {e}") from None
    if not telemetry_path.startswith("/") or telemetry_path in ("/", "/-/healthy", "/health"):
        raise OvltraceError(f"bad --web.telemetry-path {telemetry_path!r}: must start with / "
                            "and not be / or a health path")

    state = {"attached": False, "last_step": 0.0, "session": None, "fds": None}

    def healthy():
        if not state["attached"]:
            return False, "starting: probes not attached yet"
        age = time.monotonic() - state["last_step"]
        if age > 10:
            return False, f"tracing loop stalled for {age:.0f}s"
        return True, "OK"

    def programs():
        if state["fds"] is None and state["attached"]:
            state["fds"] = session_program_fds(state["session"])
        # the kernel counts only while kernel.bpf_stats_enabled=1; the figures
        # are served either way (they just stop growing), so series never vanish
        return program_stats_from_fds(state["fds"] or {})

    registry = CollectorRegistry(auto_describe=False)
    server = make_server(host, port, None)
    thread = None
    try:
        # the model forgets what ended well after the series expired
        with BpfStatsSwitch(bpf_stats), Stopper() as stopper, \
                Session(btf=btf, only=overlays or None,
                        retention=config.gone_ttl + 60) as session:
            state["session"] = session
            collector = OverlayCollector(lambda: session.model, session.lock, config,
                                         bpf_programs=programs)
            registry.register(collector)
            server.RequestHandlerClass = handler_for(registry, telemetry_path, healthy)
            thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
            thread.start()

            def attached():
                state["attached"] = True
                state["last_step"] = time.monotonic()
                shown = f"[{host}]" if ":" in host else (host or "*")
                say(f"serving metrics on http://{shown}:{server.server_address[1]}{telemetry_path}")

            def stepped():
                state["last_step"] = time.monotonic()

            trace_for(session, duration, stopper, on_attached=attached, step=stepped)
    finally:
        if thread is not None:
            server.shutdown()
        server.server_close()
    return 0
