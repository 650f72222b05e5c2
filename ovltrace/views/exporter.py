"""The exporter's view: the model as Prometheus metrics.

The session loop runs in the main thread; the HTTP server answers in its
own threads and reads the model at scrape time (a custom collector), under
`session.lock`: one Model.delta() call copies what is new; the work
(accumulating, folding, formatting) happens outside the lock.  Every
derived number comes from analysis.py, per flush and per error as they
arrive: the same shares, pairs and leak rule the audit and top show.

Why the collector keeps state of its own:
  * counters must never go backwards.  Every output series is an
    accumulator fed with the per-overlay increments of the model's `total`
    counters, so folding overlays into an "other" bucket, merging label
    sets (--labels) or an overlay going away never lowers a live series;
  * the collector consumes only the records that are new since the
    previous scrape (a model cursor), so a scrape costs the same after a
    day as after a minute.

Cardinality: at most --top-n overlays get series of their own (ranked by
recent activity, overlays with writeback errors first, re-ranked every
--rank-interval); the rest are folded into container="other" per upper
device.  Caller/victim pairs are capped the same way, and --series-limit
is a hard cap on the samples of one scrape.
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from .. import analysis
from ..counters import COUNTERS, Counters
from ..format import errno_name, short_name
from ..model import Cursor, Delta, Model
from ..untrusted import label
from .metrics import (COPY_UP_BUCKETS, DEFAULT_LABELS, DURATION_BUCKETS, FAMILIES, OTHER,
                      OVERLAY_LABELS, PAIR_LABELS, label_names)


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


def device_labels(metas) -> dict[str, str]:
    """upper dev -> node_exporter's `device` label: the upper fs's mount
    source ('/dev/loop1'); devices without one keep their major:minor."""
    return {m.upper_dev: m.upper_source for m in metas.values()
            if m.upper_source and m.upper_source.startswith("/")}


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
    bpf_programs: optional callable -> (stats enabled, {program: (run_ns,
    run_cnt, recursion_misses)}), read outside the lock.  sole_reader: no
    other reader needs the model's records (the exporter command): each
    scrape releases what it consumed."""

    def __init__(self, model_source, lock=None, config: ExporterConfig | None = None,
                 clock=time.monotonic, bpf_programs=None, wallclock=time.time,
                 sole_reader: bool = False):
        self.model_source = model_source
        self.sole_reader = sole_reader   # the model's records may go once consumed
        self.wallclock = wallclock
        self.lock = lock or threading.RLock()
        self.config = config or ExporterConfig()
        self.clock = clock
        self.bpf_programs = bpf_programs
        self._collect_lock = threading.Lock()  # scrapes run one at a time: consistent state
        self._reset(None)
        self.last_collect_seconds = 0.0

    def _reset(self, model) -> None:
        if getattr(self, "_model_id", None) is not None or not hasattr(self, "started"):
            self.started = self.wallclock()   # every counter restarts from 0: readers see it change
        self._model_id = id(model) if model is not None else None
        self._cursor = Cursor()
        self.seen: dict[str, _Seen] = {}
        self.expired: set[str] = set()
        self.metas = {}
        self.acc: dict[tuple, Counters] = {}                 # overlay labelset -> counters
        self.wb_err: dict[tuple, int] = {}                   # (ls, errno)
        self.returned: dict[tuple, int] = {}                 # (ls, call, errno)
        self.fs_acc: dict[tuple, Counters] = {}              # (dev, scope) -> counters
        self.fs_info: dict[str, tuple[str, str]] = {}        # dev -> (mountpoint, fstype)
        self.hist: dict[tuple, list] = {}                    # (caller ls, kind) -> [buckets, sum, count]
        self.flush_err: dict[tuple, int] = {}                # (caller ls, kind, errno)
        self.others: dict[tuple, list] = {}                  # (caller ls, kind) -> [bytes, seconds]
        self.own: dict[tuple, int] = {}                      # (caller ls, kind) -> own bytes
        self.lc_hist: dict[tuple, list] = {}                 # (runtime, step) -> [buckets, sum, count]
        self.lc_others: dict[tuple, list] = {}               # (runtime, step) -> [bytes, seconds]
        self.matrix: dict[tuple, list] = {}                  # (caller, victim, dev, kind, runtime, step) -> [b, s, n]
        self.leaks: dict[tuple, int] = {}                    # (victim ls, source ls, errno)
        self.failed_first: dict[str, float] = {}             # key -> first wb error t
        self.extra_callers: set[tuple] = set()               # non-overlay caller labelsets
        self.series_dropped = 0
        self.dirty: dict[str, int] = {}
        self._devices: dict[str, str] = {}
        self._others_ls: dict[str | None, tuple] = {}      # upper dev -> the "other" labels
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
            "device": self._device(meta.upper_dev),
        }

    def _ls(self, values: dict[str, str]) -> tuple:
        """Label values in --labels order, each made safe (untrusted.label:
        control characters shown, at most LABEL_MAX characters)."""
        return tuple(label(values.get(l, "")) for l in self.config.labels)

    def _other_ls(self, upper_dev: str | None) -> tuple:
        ls = self._others_ls.get(upper_dev)
        if ls is None:
            ls = self._others_ls[upper_dev] = self._ls({"container": OTHER,
                                                        "device": self._device(upper_dev)})
        return ls

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

    def _device(self, upper_dev: str | None) -> str:
        if not upper_dev:
            return ""
        return self._devices.get(upper_dev, upper_dev)

    def _pair_part(self, ls: tuple) -> tuple:
        idx = self.config.labels
        return tuple(ls[idx.index(l)] for l in PAIR_LABELS if l in idx)

    # ---- reading the model (under the lock) -------------------------------
    def _read(self) -> Delta | None:
        with self.lock:
            model: Model = self.model_source()
            if model is None:
                return None
            if id(model) != self._model_id:
                self._reset(model)
            if len(self.expired) > len(model.metas):     # pruned keys: forget them
                self.expired = {k for k in self.expired if k in model.metas}
            view = model.delta(self._cursor)
            if self.sole_reader:
                model.release(view.cursor)
        self._cursor = view.cursor
        return view

    # ---- updating the accumulators (outside the lock) ----------------------
    def _update(self, view: Delta) -> None:
        self.metas = view.metas
        devices = device_labels(view.metas)
        if any(self._devices.get(d) != v for d, v in devices.items()):
            self._others_ls = {}
        self._devices.update(devices)                      # kept: gone overlays' series
        now = view.now
        cfg = self.config
        own_count = sum(1 for s in self.seen.values() if s.own)
        totals = {k: c for k, c in view.totals.items() if k not in self.expired}
        # 1. counters: increments since the previous scrape
        for key, total in totals.items():
            meta = view.metas[key]
            s = self.seen.get(key)
            if s is None:
                s = self.seen[key] = _Seen(Counters())
                if meta.kind == "overlay" and own_count < cfg.top_n:
                    s.own = True
                    own_count += 1
            elif total == s.last:
                continue                 # idle since the last scrape (new ones get their 0s)
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
        returned = analysis.returned_errors(view.errors_returned, view.flushes)
        events = sorted([(e.t, 0, e) for e in view.wb_errors] + [(e.t, 1, e) for e in returned],
                        key=lambda x: (x[0], x[1]))
        for _t, kind, e in events:
            if kind == 0:
                self._on_wb_error(e)
            else:
                self._on_returned(e)
        by_container = analysis.container_overlays(self.metas)
        for f in view.flushes:
            self._on_flush(f, by_container)
        self.dirty = view.dirty_now
        # 3. re-rank, expire
        live = [k for k in totals if view.metas[k].kind == "overlay"
                and view.metas[k].gone_at is None]
        if len(live) > cfg.top_n or any(not self.seen[k].own for k in live):
            if self._last_rank is None or now - self._last_rank >= cfg.rank_interval:
                self._rank(live)
                self._last_rank = now
        elif self._last_rank is None:
            self._last_rank = now
        for key in totals:
            gone = view.metas[key].gone_at
            if gone is not None and now - gone > cfg.gone_ttl:
                self._expire(key)
        for key in [k for k in self.seen if k not in totals]:
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
            k = (self.labelset(e.key), errno_name(e.errno))
            self.wb_err[k] = self.wb_err.get(k, 0) + 1

    def _on_returned(self, e) -> None:
        meta = self.metas.get(e.key)
        if meta is None:
            return
        s = self.seen.get(e.key)
        if s is not None:
            s.unreported = 0
        ls = self.labelset(e.key)
        k = (ls, e.call, errno_name(e.errno))
        self.returned[k] = self.returned.get(k, 0) + 1
        for src in analysis.leak_sources(e.key, e.call, e.t, self.failed_first, self.metas):
            pair = self._pair(ls, self.labelset(src))
            lk = (pair[0], pair[1], self._device(meta.upper_dev), errno_name(e.errno))
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

    def _caller_ls(self, f, caller: str) -> tuple:
        """Overlay labels + comm for a flush's caller (analysis.caller_key):
        an overlay, else the caller's container, else the host process."""
        if caller in self.metas:
            return self.labelset(caller) + ("",)
        c = f.caller_container
        if c is not None:
            ls = self._ls({"container": c.name, "container_id": c.id, "pod": c.pod or "",
                           "namespace": c.namespace or "", "runtime": c.runtime,
                           "device": self._device(f.upper_dev)}) + ("",)
        else:
            ls = self._ls({"device": self._device(f.upper_dev)}) + (label(f.comm),)
        if ls not in self.extra_callers:
            if len(self.extra_callers) >= self.config.top_n:
                return self._other_ls(f.upper_dev) + ("",)
            self.extra_callers.add(ls)
        return ls

    def _on_flush(self, f, by_container: dict[str, str]) -> None:
        key = analysis.caller_key(f, by_container)
        caller = self._caller_ls(f, key)
        hk = (caller, f.kind)
        _observe(self.hist, hk, f.duration)
        lc = analysis.lifecycle_event(f, self.metas)
        # a container start/stop (few label values); its pairs say so too,
        # for the fleet report's lifecycle findings
        lk = (label(lc.runtime), lc.step) if lc is not None else ("", "")
        if lc is not None:
            _observe(self.lc_hist, lk, f.duration)
            o = self.lc_others.setdefault(lk, [0, 0.0])
            o[0] += lc.others_bytes
            o[1] += lc.others_seconds
        if f.ret < 0:
            ek = (caller, f.kind, errno_name(f.ret))
            self.flush_err[ek] = self.flush_err.get(ek, 0) + 1
        own = sum(s.bytes for s in analysis.shares(f) if s.victim == key)
        if own:
            self.own[hk] = self.own.get(hk, 0) + own
        others = analysis.others_shares(f, key, self.metas)
        if not others:
            return
        o = self.others.setdefault(hk, [0, 0.0])
        o[0] += sum(s.bytes for s in others)
        o[1] += sum(s.seconds for s in others)
        caller_pair = self._pair_part(caller[:-1]) + (caller[-1],)
        for s in others:
            _cp, vp = self._pair(caller[:-1], self.labelset(s.victim))
            mk = (caller_pair, vp, self._device(self.metas[s.victim].upper_dev), f.kind) + lk
            m = self.matrix.get(mk)
            if m is None:
                m = self.matrix[mk] = [0, 0.0, 0]
            m[0] += s.bytes
            m[1] += s.seconds
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
        for d in (self.hist, self.flush_err, self.others, self.own):
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

    def _families(self, view: Delta | None) -> list:
        out = _Budget(self.config.series_limit)
        fam = _fam_factory(out, self.config.labels)
        self._self_families(view, fam)

        # per upper filesystem
        fs_fams = [fam("ovltrace_upperfs_dirtied_bytes_total"),
                   fam("ovltrace_upperfs_written_back_bytes_total"),
                   fam("ovltrace_upperfs_writeback_errors_total")]
        for (dev, scope), c in sorted(self.fs_acc.items()):
            mp, fstype = self.fs_info.get(dev, ("", ""))
            lv = [self._device(dev), mp, fstype, scope]
            out.add(fs_fams[0], lv, c.bytes_dirtied)
            out.add(fs_fams[1], lv, c.bytes_written_back)
            out.add(fs_fams[2], lv, c.writeback_errors)
        n_fs = fam("ovltrace_upperfs_overlays")
        per_dev: dict[str, int] = {}
        for key, s in self.seen.items():
            m = self.metas.get(key)
            if m is not None and m.kind == "overlay" and m.gone_at is None:
                per_dev[m.upper_dev] = per_dev.get(m.upper_dev, 0) + 1
        for dev, n in sorted(per_dev.items()):
            mp, fstype = self.fs_info.get(dev, ("", ""))
            out.add(n_fs, [self._device(dev), mp, fstype], n)

        # per overlay: busiest first, so the hard cap cuts the quiet ones
        order = sorted(self.acc.items(), key=lambda kv: -kv[1].bytes_dirtied)
        for d in COUNTERS:
            if d.metric is None:
                continue
            f = fam(d.metric)
            for ls, c in order:
                out.add(f, list(ls), getattr(c, d.name) * d.scale)
        h = fam("ovltrace_overlay_copy_up_duration_seconds")
        for ls, c in order:
            if any(c.copy_up_latency):       # function hooks only: no empty histograms
                cum, acc = [], 0
                for le, n in zip(COPY_UP_BUCKETS, c.copy_up_latency):
                    acc += n
                    cum.append((_le(le), acc))
                cum.append(("+Inf", acc))
                out.add_histogram(h, list(ls), cum, c.copy_up_ns / 1e9)
        dirty: dict[tuple, int] = {}
        unreported: dict[tuple, int] = {}
        for key, s in self.seen.items():
            m = self.metas.get(key)
            if m is None or m.kind != "overlay":
                continue
            ls = self.labelset(key)
            dirty[ls] = dirty.get(ls, 0) + self.dirty.get(key, 0)
            unreported[ls] = unreported.get(ls, 0) + s.unreported
        f = fam("ovltrace_overlay_dirty_inodes")
        for ls, n in sorted(dirty.items()):
            out.add(f, list(ls), n)
        f = fam("ovltrace_overlay_unreported_writeback_errors")
        for ls, n in sorted(unreported.items()):
            out.add(f, list(ls), n)
        f = fam("ovltrace_overlay_writeback_errors_total")
        for (ls, e), n in sorted(self.wb_err.items()):
            out.add(f, list(ls) + [e], n)
        f = fam("ovltrace_overlay_errors_returned_total")
        for (ls, call, e), n in sorted(self.returned.items()):
            out.add(f, list(ls) + [call, e], n)

        # per flush caller
        h = fam("ovltrace_flush_duration_seconds")
        for (caller, kind), (buckets, total, count) in sorted(self.hist.items()):
            out.add_histogram(h, list(caller) + [kind], _cumulative(buckets, count), total)
        f = fam("ovltrace_flush_errors_total")
        for (caller, kind, e), n in sorted(self.flush_err.items()):
            out.add(f, list(caller) + [kind, e], n)
        h = fam("ovltrace_lifecycle_flush_duration_seconds")
        for k, (buckets, total, count) in sorted(self.lc_hist.items()):
            out.add_histogram(h, list(k), _cumulative(buckets, count), total)
        lb = fam("ovltrace_lifecycle_others_written_back_bytes_total")
        ls_ = fam("ovltrace_lifecycle_others_stall_seconds_total")
        for k, (b, secs) in sorted(self.lc_others.items()):
            out.add(lb, list(k), b)
            out.add(ls_, list(k), secs)
        fb = fam("ovltrace_flush_others_written_back_bytes_total")
        fs = fam("ovltrace_flush_others_stall_seconds_total")
        for (caller, kind), (b, secs) in sorted(self.others.items()):
            out.add(fb, list(caller) + [kind], b)
            out.add(fs, list(caller) + [kind], secs)
        fo = fam("ovltrace_flush_own_written_back_bytes_total")
        for (caller, kind), b in sorted(self.own.items()):
            out.add(fo, list(caller) + [kind], b)

        # the interference matrix and error leaks
        mb = fam("ovltrace_interference_written_back_bytes_total")
        ms = fam("ovltrace_interference_stall_seconds_total")
        mn = fam("ovltrace_interference_flushes_total")
        for (c, v, *rest), (b, secs, n) in sorted(self.matrix.items(), key=lambda kv: -kv[1][0]):
            lv = list(c) + list(v) + rest
            out.add(mb, lv, b)
            out.add(ms, lv, secs)
            out.add(mn, lv, n)
        f = fam("ovltrace_error_leaks_total")
        for (v, s, dev, e), n in sorted(self.leaks.items()):
            out.add(f, list(v) + list(s) + [dev, e], n)

        if out.dropped:
            self.series_dropped += out.dropped
        f = fam("ovltrace_exporter_series_dropped_total")
        out.add(f, [], self.series_dropped, force=True)
        return out.families

    def _self_families(self, view: Delta | None, fam) -> None:
        out = fam.budget
        st = view.self_stats if view else {}
        f = fam("ovltrace_exporter_start_time_seconds")
        out.add(f, [], self.started, force=True)
        f = fam("ovltrace_exporter_hook_info")
        for hk in (view.hooks if view else []):
            out.add(f, [hk.get("name", "?"), hk.get("mechanism") or "none"], 1, force=True)
        f = fam("ovltrace_exporter_dropped_events_total")
        out.add(f, ["flushes"], st.get("events_dropped", 0), force=True)
        out.add(f, ["writeback_errors"], st.get("error_events_dropped", 0), force=True)
        f = fam("ovltrace_exporter_inode_cache_lookups_total")
        out.add(f, ["miss"], st.get("cache_misses", 0), force=True)
        f = fam("ovltrace_exporter_directory_cache_hits_total")
        out.add(f, [], st.get("dir_cache_hits", 0), force=True)
        f = fam("ovltrace_exporter_attribution_failures_total")
        out.add(f, ["walk_too_deep"], st.get("walk_too_deep", 0), force=True)
        out.add(f, ["no_dentry"], st.get("walk_no_dentry", 0), force=True)
        f = fam("ovltrace_exporter_map_full_total")
        out.add(f, [], st.get("map_full", 0), force=True)
        fe = fam("ovltrace_exporter_bpf_map_entries")
        fc = fam("ovltrace_exporter_bpf_map_max_entries")
        for name, d in sorted((st.get("map_fill") or {}).items()):
            out.add(fe, [name], d.get("entries", 0), force=True)
            out.add(fc, [name], d.get("capacity", 0), force=True)
        f = fam("ovltrace_exporter_slots_exhausted_total")
        out.add(f, [], st.get("slots_exhausted", 0), force=True)
        f = fam("ovltrace_exporter_overlays")
        own = sum(1 for k, s in self.seen.items() if s.own)
        folded = sum(1 for k, s in self.seen.items()
                     if not s.own and k in self.metas and self.metas[k].kind == "overlay")
        out.add(f, ["own"], own, force=True)
        out.add(f, ["other"], folded, force=True)
        f = fam("ovltrace_exporter_refresh_duration_seconds")
        out.add(f, [], st.get("refresh_seconds", 0.0), force=True)
        f = fam("ovltrace_exporter_collect_duration_seconds")
        out.add(f, [], self.last_collect_seconds, force=True)
        enabled, progs = self.bpf_programs() if self.bpf_programs else (False, {})
        f = fam("ovltrace_exporter_bpf_stats_enabled")
        out.add(f, [], 1 if enabled else 0, force=True)
        if progs:
            fr = fam("ovltrace_exporter_bpf_program_run_seconds_total")
            fn = fam("ovltrace_exporter_bpf_program_runs_total")
            fm = fam("ovltrace_exporter_bpf_program_recursion_misses_total")
            for name, (ns, cnt, misses) in sorted(progs.items()):
                out.add(fm, [name], misses, force=True)
                out.add(fr, [name], ns / 1e9, force=True)
                out.add(fn, [name], cnt, force=True)


def _observe(hists: dict, key: tuple, seconds: float) -> None:
    h = hists.get(key)
    if h is None:
        h = hists[key] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0, 0]
    h[0][bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
    h[1] += seconds
    h[2] += 1


def _cumulative(buckets: list[int], count: int) -> list[tuple[str, int]]:
    cum, acc = [], 0
    for le, n in zip(DURATION_BUCKETS, buckets):
        acc += n
        cum.append((_le(le), acc))
    cum.append(("+Inf", count))
    return cum


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


def _fam_factory(budget: _Budget, overlay_labels: tuple[str, ...]):
    def fam(name: str):
        kind, help_ = FAMILIES[name]
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
               "histogram": HistogramMetricFamily}[kind]
        f = cls(name, help_, labels=label_names(name, overlay_labels))
        budget.families.append(f)
        return f
    fam.budget = budget
    return fam
