"""`ovltrace audit`: a report that explains and advises.

build_report() turns a model's snapshot (plus the live extras: cgroup
accounting, inode paths) into one JSON-ready dict: schema v1 of
model.snapshot_json with keys added (never renamed), documented in
ovltrace/schema/audit-v1.json.  Every format renders that dict, so table,
Markdown, JSON and HTML always agree.

Stall accounting (a flush = syncfs, sync or umount): a flush that took D
seconds and wrote back B bytes, b of them container X's, spent D*b/B
waiting on X's data.  A caller "waited on others" for the share of its
flushes' time spent on other containers' data; a container "made others
wait" for the share of others' flushes spent on its data.
"""
from __future__ import annotations

import json
import re

from tabulate import tabulate

from ..findings import findings as make_findings
from ..model import Model, Snapshot, flush_caller, snapshot_json
from .common import display_name, errno_name, human_bytes, human_seconds

FORMATS = ("table", "markdown", "json", "html")
WORST_FLUSHES = 10
TIMELINE_POINTS = 120


# ---- the report dict -------------------------------------------------------

def _namer(snap: Snapshot):
    def name(key: str | None) -> str:
        if key is None:
            return "-"
        if key.startswith(("container:", "pid:")):
            return key.split(":", 1)[1]
        return display_name(snap.metas.get(key), 40)
    return name


def build_report(model: Model, snap: Snapshot | None = None, extras: dict | None = None) -> dict:
    snap = snap or model.snapshot()
    extras = extras or {}
    name = _namer(snap)
    rep = snapshot_json(snap)
    rep["report"] = {"source": extras.get("source", "live"), **(extras.get("header") or {})}

    stall = _stalls(snap, name)
    for row, d in zip(snap.overlays, rep["overlays"]):
        s = stall.get(name(row.meta.key), {})
        d["name"] = name(row.meta.key)
        d["stall_suffered_seconds"] = s.get("waited_on_others_seconds", 0.0)
        d["stall_imposed_seconds"] = s.get("made_others_wait_seconds", 0.0)
    for row, d in zip(snap.upper_fs, rep["upper_filesystems"]):
        on = [r for r in snap.overlays if r.meta.upper_dev == row.meta.upper_dev]
        d["overlay_names"] = [name(r.meta.key) for r in on]
        d["bytes_dirtied"] = row.window.bytes_dirtied + sum(r.window.bytes_dirtied for r in on)
        d["bytes_written_back"] = row.window.bytes_written_back + sum(r.window.bytes_written_back
                                                                      for r in on)
        d["writeback_errors"] = row.window.writeback_errors + sum(r.window.writeback_errors for r in on)
        d["flushes"] = sum(1 for f in snap.flushes if f.upper_dev in (row.meta.upper_dev, None))

    rep["stall_by_container"] = sorted(stall.values(), key=lambda s: -s["waited_on_others_seconds"]
                                       - s["made_others_wait_seconds"])
    rep["interference"] = _matrix(snap, name)
    rep["worst_flushes"] = _worst(snap, name)
    rep["leaks_named"] = [{"victim": name(l.victim), "source": name(l.source), "errno": l.errno,
                           "call": l.call} for l in snap.leaks]
    rep["errors_by_container"] = _errors(snap, name, extras.get("inode_paths") or {})
    rep["copy_up_hotspots"] = _copy_ups(model, snap, name)
    rep["cgroup_accounting"] = _cgroups(snap, name, extras.get("cgroup_accounting"),
                                        extras.get("source", "live"))
    rep["timelines"] = _timelines(model, snap, name)
    rep["findings"] = make_findings(rep)
    return rep


def _share(f, key: str) -> float:
    total = sum(v.bytes_written_back for v in f.victims)
    mine = sum(v.bytes_written_back for v in f.victims if v.key == key)
    return mine / total if total else 0.0


def _stalls(snap: Snapshot, name) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def get(n: str) -> dict:
        return out.setdefault(n, {"name": n, "flushes": 0, "syncfs_calls": 0, "own_bytes_flushed": 0,
                                  "others_bytes_flushed": 0, "waited_on_others_seconds": 0.0,
                                  "bytes_flushed_by_others": 0, "made_others_wait_seconds": 0.0})
    for r in snap.overlays:
        get(name(r.meta.key))
    for f in snap.flushes:
        caller = name(flush_caller(f))
        c = get(caller)
        c["flushes"] += 1
        c["syncfs_calls"] += f.kind == "syncfs"
        total = sum(v.bytes_written_back for v in f.victims) or 0
        for v in f.victims:
            vn = name(v.key)
            if vn == caller:
                c["own_bytes_flushed"] += v.bytes_written_back
                continue
            wait = f.duration * v.bytes_written_back / total if total else 0.0
            c["others_bytes_flushed"] += v.bytes_written_back
            c["waited_on_others_seconds"] += wait
            victim = get(vn)
            victim["bytes_flushed_by_others"] += v.bytes_written_back
            victim["made_others_wait_seconds"] += wait
    for c in out.values():
        c["waited_on_others_seconds"] = round(c["waited_on_others_seconds"], 6)
        c["made_others_wait_seconds"] = round(c["made_others_wait_seconds"], 6)
    return out


def _matrix(snap: Snapshot, name) -> list[dict]:
    cells: dict[tuple[str, str], dict] = {}
    for f in snap.flushes:
        caller = name(flush_caller(f))
        total = sum(v.bytes_written_back for v in f.victims)
        for v in f.victims:
            c = cells.setdefault((caller, name(v.key)), {"caller": caller, "victim": name(v.key),
                                                         "bytes": 0, "flushes": 0, "stall_seconds": 0.0})
            c["bytes"] += v.bytes_written_back
            c["flushes"] += 1
            c["stall_seconds"] += f.duration * v.bytes_written_back / total if total else 0.0
    for c in cells.values():
        c["stall_seconds"] = round(c["stall_seconds"], 6)
    return sorted(cells.values(), key=lambda c: -c["bytes"])


def _worst(snap: Snapshot, name) -> list[dict]:
    out = []
    for f in sorted(snap.flushes, key=lambda f: -f.duration)[:WORST_FLUSHES]:
        caller = name(flush_caller(f))
        others = sum(v.bytes_written_back for v in f.victims if name(v.key) != caller)
        own = sum(v.bytes_written_back for v in f.victims if name(v.key) == caller)
        out.append({"kind": f.kind, "caller": caller, "pid": f.pid, "comm": f.comm,
                    "start": round(f.start - snap.window_start, 6),
                    "duration_seconds": round(f.duration, 6), "ret": f.ret,
                    "own_bytes": own, "others_bytes": others,
                    "victims": [name(v.key) for v in f.victims
                                if name(v.key) != caller and v.bytes_written_back]})
    return out


def _errors(snap: Snapshot, name, paths: dict) -> list[dict]:
    keys = list(dict.fromkeys([e.key for e in snap.wb_errors] + [e.key for e in snap.errors_returned]))
    silent = {l.key for l in snap.silent_losses}
    out = []
    for key in keys:
        errs = [e for e in snap.wb_errors if e.key == key]
        inodes: dict[int, dict] = {}
        for e in errs:
            i = inodes.setdefault(e.ino, {"ino": e.ino, "errors": 0, "errno": e.errno,
                                          "path": (paths.get(key) or {}).get(e.ino)})
            i["errors"] += 1
        returned = [e for e in snap.errors_returned if e.key == key]
        out.append({
            "name": name(key), "writeback_errors": len(errs),
            "errnos": sorted({errno_name(e.errno) for e in errs}),
            "inodes": sorted(inodes.values(), key=lambda i: -i["errors"]),
            "errors_returned": len(returned),
            "returned_by": sorted({e.call for e in returned}),
            "leaked_to_it_from": sorted({name(l.source) for l in snap.leaks if l.victim == key}),
            "leaked_from_it_to": sorted({name(l.victim) for l in snap.leaks if l.source == key}),
            "silent_loss": key in silent,
        })
    return out


def _copy_ups(model: Model, snap: Snapshot, name) -> list[dict]:
    out = []
    for r in snap.overlays:
        w = r.window
        if not w.copy_ups and not w.copy_up_bytes:
            continue
        # Copy-ups are counted, not timed one by one: the time copy-up bytes
        # kept growing between samples bounds how long they took.
        busy, prev = 0.0, None
        for t, c in model.samples.get(r.meta.key, ()):
            if prev is not None and snap.window_start <= t <= snap.t and c.copy_up_bytes > prev[1]:
                busy += t - prev[0]
            prev = (t, c.copy_up_bytes)
        out.append({"name": name(r.meta.key), "copy_ups": w.copy_ups, "copy_up_bytes": w.copy_up_bytes,
                    "average_bytes": w.copy_up_bytes // max(1, w.copy_ups),
                    "busy_seconds": round(busy, 3)})
    return sorted(out, key=lambda h: -h["copy_up_bytes"])


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
        a = acct.get(r.meta.key)
        if not a:
            continue
        v2, v1 = a.get("v2", {}), a.get("v1", {})
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


def _timelines(model: Model, snap: Snapshot, name) -> dict:
    """Per-container bytes dirtied / written back per interval, and events."""
    start, end = snap.window_start, snap.t
    n = max(1, min(TIMELINE_POINTS, int((end - start) / 0.25) or 1))
    step = (end - start) / n if end > start else 1.0
    series = []
    for r in snap.overlays:
        key = r.meta.key
        cum = [model.counters_at(key, start + i * step) for i in range(n + 1)]
        series.append({"name": name(key),
                       "bytes_dirtied": [max(0, cum[i + 1].bytes_dirtied - cum[i].bytes_dirtied)
                                         for i in range(n)],
                       "bytes_written_back": [max(0, cum[i + 1].bytes_written_back
                                                  - cum[i].bytes_written_back) for i in range(n)]})
    events = [{"t": round(f.start - start, 3), "kind": f.kind, "caller": name(flush_caller(f)),
               "duration_seconds": round(f.duration, 6)} for f in snap.flushes]
    events += [{"t": round(e.t - start, 3), "kind": "wb_error", "caller": name(e.key),
                "duration_seconds": 0.0} for e in snap.wb_errors[:500]]
    return {"interval_seconds": round(step, 6), "points": n, "series": series,
            "events": sorted(events, key=lambda e: e["t"])}


# ---- --fail-on gates --------------------------------------------------------

GATE_CODES = {"leak": 4, "silent-loss": 8, "stall": 16}
_STALL_RE = re.compile(r"^stall>(.+)$")


def parse_fail_on(text: str | None) -> dict:
    """'leak,silent-loss,stall>2s' -> {"leak": True, "silent-loss": True, "stall": 2.0}."""
    from ..cli import parse_duration
    gates: dict = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = _STALL_RE.match(part)
        if m:
            gates["stall"] = parse_duration(m.group(1))
        elif part in ("leak", "silent-loss"):
            gates[part] = True
        else:
            import click
            raise click.BadParameter(f"unknown gate {part!r} (leak, silent-loss, stall>DURATION)")
    return gates


def check_gates(report: dict, gates: dict) -> tuple[int, list[str]]:
    """Exit code (sum of the tripped gates' codes) and one line per gate."""
    code, why = 0, []
    if gates.get("leak") and report["leaks"]:
        code |= GATE_CODES["leak"]
        why.append(f"leak: {len(report['leaks'])} error(s) handed to a container that did not cause them")
    if gates.get("silent-loss") and report["silent_losses"]:
        code |= GATE_CODES["silent-loss"]
        names = [e["name"] for e in report["errors_by_container"] if e["silent_loss"]]
        why.append(f"silent-loss: {', '.join(names)} lost data and was never told")
    if "stall" in gates:
        bad = [f for f in report["worst_flushes"]
               if f["others_bytes"] > 0 and f["duration_seconds"] > gates["stall"]]
        if bad:
            code |= GATE_CODES["stall"]
            why.append(f"stall: {len(bad)} flush(es) over {human_seconds(gates['stall'])} that "
                       f"wrote back other containers' data (worst {bad[0]['caller']} "
                       f"{human_seconds(bad[0]['duration_seconds'])})")
    return code, why


# ---- rendering ----------------------------------------------------------------

def render(snap_or_report, fmt: str = "table", model: Model | None = None) -> str:
    """Render a report dict (or, as before, a bare Snapshot) in a format."""
    if isinstance(snap_or_report, Snapshot):
        rep = build_report(model or _model_for(snap_or_report), snap_or_report)
    else:
        rep = snap_or_report
    if fmt == "json":
        return json.dumps(rep, indent=2)
    if fmt == "markdown":
        from .markdown import render_markdown
        return render_markdown(rep)
    if fmt == "html":
        from .report_html import render_html
        return render_html(rep)
    return render_table(rep)


def _model_for(snap: Snapshot) -> Model:
    """A model without samples (older callers pass only a snapshot)."""
    m = Model(snap.window_start)
    m.metas = snap.metas
    return m


def _t(rows, headers, fmt) -> str:
    import tabulate as tabulate_module
    old = tabulate_module.MIN_PADDING
    tabulate_module.MIN_PADDING = 0      # headers as narrow as the data: fits 80 columns
    try:
        return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    finally:
        tabulate_module.MIN_PADDING = old


def sections(rep: dict, fmt: str = "simple", width: int = 14) -> list[tuple[str, str]]:
    """(title, table) pairs shared by the terminal and Markdown views."""
    cut = (lambda s: s if len(s) <= width else s[: width - 1] + "~")
    out = []
    rows = [[cut(o["name"]) + ("" if o["live"] else "*"), human_bytes(o["bytes_dirtied"]),
             human_bytes(o["bytes_written_back"]),
             f"{o['copy_ups']}/{human_bytes(o['copy_up_bytes'])}", o["syncfs_calls"],
             o["writeback_errors"], human_seconds(o["stall_suffered_seconds"]),
             human_seconds(o["stall_imposed_seconds"])]
            for o in sorted(rep["overlays"], key=lambda o: -o["bytes_dirtied"])]
    out.append(("Per container (* = unmounted during the window; WAITED = its flushes waited "
                "on others' data, MADEWAIT = others' flushes waited on its data)",
                _t(rows, ["CONTAINER", "DIRTIED", "WRITTEN", "COPYUP", "SYNCFS", "WBERR",
                          "WAITED", "MADEWAIT"], fmt) if rows else "(no overlays)"))
    fs = [[u["upper_dev"], u.get("fstype") or "-", _tail(u["mountpoint"], 2 * width - 12), len(u["overlay_names"]),
           human_bytes(u["bytes_dirtied"]), human_bytes(u["bytes_written_back"]), u["flushes"],
           u["writeback_errors"]] for u in rep["upper_filesystems"]]
    if fs:
        out.append(("Per upper filesystem", _t(fs, ["DEV", "FS", "MOUNTPOINT", "CTRS", "DIRTIED",
                                                    "WRITTEN", "FLUSHES", "WBERR"], fmt)))
    cells = [c for c in rep["interference"] if c["caller"] != c["victim"] and c["bytes"]]
    if cells:
        rows = [[cut(c["caller"]), cut(c["victim"]), human_bytes(c["bytes"]), c["flushes"],
                 human_seconds(c["stall_seconds"])] for c in cells[:20]]
        out.append(("Interference: the caller's flushes wrote back the victim's data "
                    "(STALL = the caller's wait on it)",
                    _t(rows, ["CALLER", "VICTIM", "BYTES", "FLUSHES", "STALL"], fmt)))
    if rep["worst_flushes"]:
        rows = [[f["kind"], cut(f["caller"])[:14], f"{f['pid']}/{f['comm'][:10]}",
                 human_seconds(f["duration_seconds"]), f["ret"], human_bytes(f["own_bytes"]),
                 human_bytes(f["others_bytes"])] for f in rep["worst_flushes"]]
        out.append((f"Worst flushes ({len(rep['flushes'])} in all)",
                    _t(rows, ["KIND", "CALLER", "PID/COMM", "TIME", "RET", "OWN", "OTHERS'"], fmt)))
    if rep["errors_by_container"]:
        rows = []
        for e in rep["errors_by_container"]:
            status = ("SILENT LOSS" if e["silent_loss"] else
                      ("got others' error" if e["leaked_to_it_from"] else
                       ("told" if e["errors_returned"] else "-")))
            rows.append([cut(e["name"]), e["writeback_errors"], ",".join(e["errnos"]) or "-",
                         len(e["inodes"]), e["errors_returned"], status])
        text = _t(rows, ["CONTAINER", "WBERR", "ERRNO", "INODES", "RETURNED", "STATUS"], fmt)
        ino_rows = [[cut(e["name"]), i["ino"], i["errors"],
                     _tail(i.get("path") or "(unresolved)", 3 * width + 8)]
                    for e in rep["errors_by_container"] for i in e["inodes"][:5]]
        if ino_rows:
            text += "\n\n" + _t(ino_rows, ["CONTAINER", "INODE", "ERRORS", "PATH"], fmt)
        leaks = [[cut(l["victim"]), errno_name(l["errno"]), l["call"], cut(l["source"])]
                 for l in rep["leaks_named"]]
        if leaks:
            text += "\n\n" + _t(leaks, ["HANDED TO", "ERRNO", "BY", "CAUSED BY"], fmt)
        out.append(("Writeback errors, leaks and silent losses", text))
    if rep["copy_up_hotspots"]:
        rows = [[cut(h["name"]), h["copy_ups"], human_bytes(h["copy_up_bytes"]),
                 human_bytes(h["average_bytes"]), human_seconds(h["busy_seconds"])]
                for h in rep["copy_up_hotspots"][:10]]
        out.append(("Copy-up hotspots (BUSY = time copy-up bytes kept growing, "
                    "per sample interval)",
                    _t(rows, ["CONTAINER", "COPY-UPS", "BYTES", "AVERAGE", "BUSY"], fmt)))
    cg = rep["cgroup_accounting"]
    if cg["containers"]:
        rows = []
        for c in cg["containers"]:
            v2, v1 = c["v2"], c["v1"]
            dirty = (human_bytes(v2["file_dirty_peak"]) if "file_dirty_peak" in v2 else
                     (human_bytes(v1["dirty_peak"]) + ("(v1,shared)" if v1.get("shared") else "(v1)")
                      if "dirty_peak" in v1 else "n/a"))
            wbytes = (human_bytes(v2["wbytes"]) if "wbytes" in v2 else
                      (human_bytes(v1["wbytes"]) + "(v1)" if "wbytes" in v1 else "n/a"))
            rows.append([cut(c["name"]), human_bytes(c["ovltrace_bytes_dirtied"]),
                         human_bytes(c["ovltrace_bytes_written_back"]), dirty, wbytes])
        text = _t(rows, ["CONTAINER", "DIRTIED", "WRITTEN", "CG DIRTY PEAK", "CG WBYTES"], fmt)
        if cg.get("note"):
            text += f"\n\nnote: {cg['note']}"
        out.append(("ovltrace vs cgroup accounting", text))
    else:
        out.append(("ovltrace vs cgroup accounting", f"not available: {cg['note']}"))
    return out


def _tail(path: str, width: int) -> str:
    return path if len(path) <= width else "~" + path[-(width - 1):]


def render_table(rep: dict) -> str:
    fs = ", ".join(f"{u['upper_dev']} {u.get('fstype') or ''}".strip()
                   for u in rep["upper_filesystems"]) or "none"
    width = 14
    out = [f"ovltrace audit: {rep['window_seconds']:.1f}s window, {len(rep['overlays'])} "
           f"containers; upper fs: {fs}"]
    if rep["findings"]:
        out += ["", f"Findings ({len(rep['findings'])})"]
        for f in rep["findings"]:
            out += _wrap(f"  [{f['severity'].upper()}] {f['title']}", indent="    ")
            out += _wrap(f"    {f['detail']}")
            out += _wrap(f"    advice: {f['advice']}")
    for title, body in sections(rep, width=width):
        lines = []
        for line in body.split("\n"):
            prose = line.startswith(("note: ", "not available: "))
            lines += _wrap(line, indent="  ") if prose else [line]
        out += ["", *_wrap(title, indent=""), *lines]
    return "\n".join(out)


def _wrap(text: str, width: int = 79, indent: str = "      ") -> list[str]:
    import textwrap
    lead = len(text) - len(text.lstrip())
    return textwrap.wrap(text.lstrip(), width, initial_indent=text[:lead],
                         subsequent_indent=indent, break_on_hyphens=False) or [""]


# ---- the command ------------------------------------------------------------

def format_for(fmt: str | None, output: str | None) -> str:
    """--format, else from -o's extension, else table."""
    if fmt:
        return fmt
    ext = (output or "").rsplit(".", 1)[-1].lower()
    return {"html": "html", "htm": "html", "md": "markdown", "json": "json"}.get(ext, "table")


def emit(text: str, output: str | None) -> None:
    """A rendered report to stdout, or to the file -o named."""
    import click

    from ..cli import say
    from ..errors import OvltraceError
    if not output:
        click.echo(text)
        return
    try:
        with open(output, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as e:
        raise OvltraceError(f"cannot write {output}: {e.strerror}") from None
    say(f"wrote {output}")


def run_audit(duration, fmt, source, overlays, btf, output=None, fail_on=None) -> int:
    """`ovltrace audit`: trace live (or replay --from), report, check gates."""
    from ..cli import Stopper, say, trace_for
    gates = parse_fail_on(fail_on)
    fmt = format_for(fmt, output)
    if source:
        from ..annotate import load
        header, model, extras = load(source)
        if not header.get("complete"):
            say(f"warning: {source} has no end record (cut short?); reporting what it holds")
    else:
        from ..annotate import Annotator
        from ..session import Session
        with Stopper() as stopper, Session(btf=btf, only=list(overlays) or None) as session:
            ann = Annotator(session)
            trace_for(session, duration, stopper, step=ann.step)
            model = session.finish()
            ann.finish()
        extras = ann.extras()
    rep = build_report(model, model.snapshot(), extras)
    emit(render(rep, fmt), output)
    code, why = check_gates(rep, gates)
    for line in why:
        say(f"fail-on {line}")
    return code
