"""The audit report: analysis results as one JSON-ready dict.

Every report format (table, Markdown, JSON, HTML) renders this dict, so
they always agree; its shape is ovltrace/schema/audit-v2.json.  No number
is computed here that analysis.py does not define: this module only
names, rounds and arranges them.
"""
from __future__ import annotations

from .. import analysis
from ..counters import COUNTERS
from ..format import errno_name, human_bytes
from ..model import Flush, OverlayMeta, Snapshot
from .findings import findings as make_findings

SCHEMA_VERSION = 2
WORST_FLUSHES = 10


def counter_json(c) -> dict:
    """Counters under their schema names; nanoseconds as seconds."""
    out = {}
    for d in COUNTERS:
        v = getattr(c, d.name)
        if d.length:
            out[d.name] = list(v)
        elif d.scale != 1.0:
            out[d.name.replace("_ns", "_seconds")] = round(v * d.scale, 6)
        else:
            out[d.name] = v
    return out


def _meta_json(m: OverlayMeta) -> dict:
    return {"mountpoint": m.mountpoint, "mnt_ns": m.mnt_ns, "upperdir": m.upperdir,
            "workdir": m.workdir, "upper_dev": m.upper_dev, "options": list(m.options),
            "container": m.container.to_json() if m.container else None}


def build_report(snap: Snapshot, extras: dict | None = None) -> dict:
    extras = extras or {}
    a = analysis.analyse(snap)
    name = a.name
    inter = a.interference
    start = snap.window_start

    def stall_json(p: analysis.PartyStall) -> dict:
        return {"name": name(p.key), "flushes": p.flushes, "syncfs_calls": p.syncfs_calls,
                "own_bytes_flushed": p.own_bytes_flushed,
                "others_bytes_flushed": p.others_bytes_flushed,
                "waited_on_others_seconds": round(p.waited_on_others_seconds, 6),
                "bytes_flushed_by_others": p.bytes_flushed_by_others,
                "made_others_wait_seconds": round(p.made_others_wait_seconds, 6)}

    overlays = []
    for row in snap.overlays:
        p = inter.parties.get(row.meta.key) or analysis.PartyStall(row.meta.key)
        overlays.append({"name": name(row.meta.key), **_meta_json(row.meta),
                         **counter_json(row.window), "dirty_inodes_now": row.dirty_inodes_now,
                         "live": row.live,
                         **{k: v for k, v in stall_json(p).items() if k != "name"}})

    def flush_json(f: Flush) -> dict:
        c = f.caller_container or (snap.metas[f.target].container
                                   if f.target in snap.metas else None)
        return {"kind": f.kind, "caller": name(inter.caller(f)), "pid": f.pid, "tid": f.tid,
                "comm": f.comm, "overlay": _mountpoint(snap, f.target), "upper_dev": f.upper_dev,
                "container": c.to_json() if c else None,
                "synced_dev": f.synced_dev, "sb_err_advanced": f.sb_err_advanced,
                "start": round(f.start - start, 6), "duration_seconds": round(f.duration, 6),
                "ret": f.ret, "path": f.path or None,
                "victims": [{"name": name(s.victim), "overlay": _mountpoint(snap, s.victim),
                             "bytes_written_back": s.bytes, "stall_seconds": round(s.seconds, 6)}
                            for s in analysis.shares(f)]}

    rep = {
        "version": SCHEMA_VERSION,
        "window_seconds": round(snap.window_seconds, 3),
        "report": {"source": extras.get("source", "live"), **(extras.get("header") or {})},
        "overlays": overlays,
        "upper_filesystems": [{
            "upper_dev": u.upper_dev, "mountpoint": u.mountpoint, "fstype": u.fstype,
            "overlays": len(u.overlays), "overlay_names": [name(k) for k in u.overlays],
            "bytes_dirtied": u.total.bytes_dirtied,
            "bytes_written_back": u.total.bytes_written_back,
            "writeback_errors": u.total.writeback_errors, "flushes": u.flushes,
            "dirty_inodes_now": u.dirty_inodes_now,
            "outside_overlays": counter_json(u.outside)} for u in a.upper_fs],
        "flushes": [flush_json(f) for f in snap.flushes],
        "writeback_errors": [{"name": name(e.key), "overlay": _mountpoint(snap, e.key),
                              "ino": e.ino, "errno": e.errno, "t": round(e.t - start, 6)}
                             for e in snap.wb_errors],
        "errors_returned": [{"name": name(e.key), "overlay": _mountpoint(snap, e.key),
                             "call": e.call, "errno": e.errno, "pid": e.pid, "comm": e.comm,
                             "t": round(e.t - start, 6)} for e in a.errors.returned],
        "leaks": [{"victim": name(l.victim), "source": name(l.source),
                   "victim_overlay": _mountpoint(snap, l.victim),
                   "source_overlay": _mountpoint(snap, l.source),
                   "errno": l.errno, "call": l.call, "t": round(l.t - start, 6)}
                  for l in a.errors.leaks],
        "silent_losses": [{"name": name(l.key), "overlay": _mountpoint(snap, l.key),
                           "writeback_errors": l.writeback_errors, "errnos": list(l.errnos)}
                          for l in a.errors.losses],
        "hooks": snap.hooks,
        "self": snap.self_stats,
        "stall_by_container": sorted(
            (stall_json(p) for p in inter.parties.values()),
            key=lambda s: -s["waited_on_others_seconds"] - s["made_others_wait_seconds"]),
        "interference": [{"caller": name(p.caller), "victim": name(p.victim), "bytes": p.bytes,
                          "flushes": p.flushes, "stall_seconds": round(p.stall_seconds, 6)}
                         for p in sorted(inter.pairs.values(), key=lambda p: -p.bytes)],
        "worst_flushes": _worst(snap, a),
        "lifecycle": _lifecycle(snap, a),
        "errors_by_container": _errors(snap, a, extras.get("inode_paths") or {}),
    }
    tl = analysis.timeline(snap, [r.meta.key for r in snap.overlays])
    rep["copy_up_hotspots"] = [{
        "name": name(h.key), "copy_ups": h.copy_ups, "copy_up_bytes": h.copy_up_bytes,
        "average_bytes": h.average_bytes, "busy_seconds": h.busy_seconds,
        "seconds": None if h.seconds is None else round(h.seconds, 6),
        "latency_log2_us": list(h.latency_log2_us)}
        for h in analysis.copy_up_hotspots(snap, tl)]
    rep["cgroup_accounting"] = _cgroups(snap, name, extras.get("cgroup_accounting"),
                                        extras.get("source", "live"))
    rep["timelines"] = _timelines(snap, a, tl)
    rep["findings"] = make_findings(rep)
    return rep


def _lifecycle(snap: Snapshot, a: analysis.Analysis) -> dict:
    """Container starts and stops that unmounted an overlay, and whose data
    those unmounts wrote back (analysis.lifecycle)."""
    lc, name, start = a.lifecycle, a.name, snap.window_start
    return {
        "events": [{
            "container": name(e.key), "overlay": _mountpoint(snap, e.key),
            "runtime": e.runtime, "step": e.step, "volatile": e.volatile,
            "helper": snap.metas[e.key].helper, "comm": e.flush.comm,
            "start": round(e.flush.start - start, 6),
            "duration_seconds": round(e.flush.duration, 6), "own_bytes": e.own_bytes,
            "others_bytes": e.others_bytes, "others_seconds": round(e.others_seconds, 6),
            "others": [{"name": name(s.victim), "bytes": s.bytes, "seconds": round(s.seconds, 6)}
                       for s in sorted(e.others, key=lambda s: -s.seconds)]}
            for e in lc.events],
        "counts": [{"runtime": r, "step": st, "events": n}
                   for (r, st), n in sorted(lc.counts().items())],
        "stall_seconds": round(lc.stall_seconds, 6),
        "others_seconds": round(lc.others_seconds, 6),
        "neighbours": [{"name": name(n.key), "bytes": n.bytes, "seconds": round(n.seconds, 6),
                        "events": n.events, "paid_by": sorted({name(k) for k in n.callers}),
                        "runtimes": sorted(n.runtimes), "steps": sorted(n.steps),
                        "paid_by_others_seconds": round(n.callers_others_seconds, 6)}
                       for n in lc.neighbours],
    }


def _mountpoint(snap: Snapshot, key: str | None) -> str | None:
    if key is None:
        return None
    m = snap.metas.get(key)
    return m.mountpoint if m else None


def _worst(snap: Snapshot, a: analysis.Analysis) -> list[dict]:
    out = []
    for f in sorted(snap.flushes, key=lambda f: -f.duration)[:WORST_FLUSHES]:
        caller = a.interference.caller(f)
        others = analysis.others_shares(f, caller, snap.metas)
        out.append({"kind": f.kind, "caller": a.name(caller), "pid": f.pid, "comm": f.comm,
                    "start": round(f.start - snap.window_start, 6),
                    "duration_seconds": round(f.duration, 6), "ret": f.ret,
                    "own_bytes": sum(s.bytes for s in analysis.shares(f) if s.victim == caller),
                    "others_bytes": sum(s.bytes for s in others),
                    "others_stall_seconds": round(sum(s.seconds for s in others), 6),
                    "victims": [a.name(s.victim) for s in others]})
    return out


def _errors(snap: Snapshot, a: analysis.Analysis, paths: dict) -> list[dict]:
    returned = a.errors.returned
    keys = list(dict.fromkeys([e.key for e in snap.wb_errors] + [e.key for e in returned]))
    silent = {l.key for l in a.errors.losses}
    out = []
    for key in keys:
        errs = [e for e in snap.wb_errors if e.key == key]
        inodes: dict[int, dict] = {}
        for e in errs:
            i = inodes.setdefault(e.ino, {"ino": e.ino, "errors": 0, "errno": e.errno,
                                          "path": (paths.get(key) or {}).get(e.ino)})
            i["errors"] += 1
        mine = [e for e in returned if e.key == key]
        out.append({
            "name": a.name(key), "writeback_errors": len(errs),
            "errnos": sorted({errno_name(e.errno) for e in errs}),
            "inodes": sorted(inodes.values(), key=lambda i: -i["errors"]),
            "errors_returned": len(mine),
            "returned_by": sorted({e.call for e in mine}),
            "leaked_to_it_from": sorted({a.name(l.source) for l in a.errors.leaks
                                         if l.victim == key}),
            "leaked_from_it_to": sorted({a.name(l.victim) for l in a.errors.leaks
                                         if l.source == key}),
            "silent_loss": key in silent,
        })
    return out


def _cgroups(snap: Snapshot, name, acct: dict | None, source: str) -> dict:
    if not acct:
        if acct is None:
            why = ("this recording carries no cgroup accounting" if source == "recording" else
                   "not collected by this command")
        else:
            why = ("no cgroup of any traced container was found (no process had its root or "
                   "cwd on an overlay when ovltrace looked: every 0.5s, less often while none "
                   "is found)")
        return {"available": False, "note": why, "containers": []}
    rows = []
    for r in snap.overlays:
        acc = acct.get(r.meta.key)
        if not acc:
            continue
        v2, v1 = acc.get("v2", {}), acc.get("v1", {})
        row = {"name": name(r.meta.key), "v2": v2, "v1": v1,
               "ovltrace_bytes_dirtied": r.window.bytes_dirtied,
               "ovltrace_bytes_written_back": r.window.bytes_written_back}
        row["gap"] = _gap(row)
        rows.append(row)
    notes = []
    if rows and all("memory" in c["v2"].get("missing", []) for c in rows):
        notes.append("cgroup v2 memory controller not enabled for these cgroups")
    if rows and all("io" in c["v2"].get("missing", []) for c in rows):
        notes.append("cgroup v2 io controller not enabled for these cgroups")
    if rows and all(c["v1"].get("shared") for c in rows):
        notes.append("v1 memory cgroups are shared (not one per container)")
    return {"available": bool(rows), "note": "; ".join(notes) or None, "containers": rows}


def _gap(row: dict) -> str | None:
    """In words: how cgroup accounting misses what ovltrace saw."""
    dirtied, written = row["ovltrace_bytes_dirtied"], row["ovltrace_bytes_written_back"]
    if not dirtied and not written:
        return None
    v2, v1 = row["v2"], row["v1"]
    if "wbytes" in v2:
        if v2["wbytes"] < written / 2:
            return (f"its cgroup's io.stat charged {human_bytes(v2['wbytes'])} of writes for "
                    f"{human_bytes(written)} of its data written back")
        return None
    if "wbytes" in v1 and not v1.get("shared"):
        if v1["wbytes"] < written / 2:
            return (f"its v1 blkio cgroup was charged {human_bytes(v1['wbytes'])} for "
                    f"{human_bytes(written)} written back (v1 cannot charge buffered writeback)")
        return None
    missing = ", ".join(v2.get("missing", [])) or "-"
    return (f"cgroup2 has no {missing} accounting"
            + (" and the v1 memory cgroup is shared" if v1.get("shared") else ""))


def _timelines(snap: Snapshot, a: analysis.Analysis, tl: analysis.Timeline) -> dict:
    """Per-container bytes dirtied / written back per interval, and events."""
    start = snap.window_start
    series = [{"name": a.name(key),
               "bytes_dirtied": [c.bytes_dirtied for c in steps],
               "bytes_written_back": [c.bytes_written_back for c in steps]}
              for key, steps in tl.series.items()]
    events = [{"t": round(f.start - start, 3), "kind": f.kind,
               "caller": a.name(a.interference.caller(f)),
               "duration_seconds": round(f.duration, 6)} for f in snap.flushes]
    events += [{"t": round(e.t - start, 3), "kind": "wb_error", "caller": a.name(e.key),
                "duration_seconds": 0.0} for e in snap.wb_errors[:500]]
    return {"interval_seconds": round(tl.interval_seconds, 6), "points": tl.points,
            "series": series, "events": sorted(events, key=lambda e: e["t"])}
