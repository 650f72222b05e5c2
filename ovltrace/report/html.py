"""The audit report as one self-contained HTML page, viewable offline.

No scripts, no external files: inline CSS and SVG charts (the interference
matrix as a heat map, a timeline per container).  The report JSON is
embedded too (<script type="application/json" id="ovltrace-report">), so
the page carries its own data.  Every text from the report goes through
untrusted.html_text (HTML-escaped, control characters shown).
"""
from __future__ import annotations

import json

from ..format import human_bytes, human_seconds
from ..untrusted import html_text
from .table import lifecycle_counts

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0} td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.finding{border-left:5px solid #999;padding:6px 10px;margin:8px 0;background:#fafafa}
.critical{border-color:#c62828}.warning{border-color:#ef8f00}.info{border-color:#1e88e5}
.sev{font-weight:bold;text-transform:uppercase;font-size:12px}.muted{color:#777}
td.t{text-align:left}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""

DIRTIED, WRITTEN, FLUSH, ERROR = "#1e88e5", "#ef8f00", "#555", "#c62828"


def render_html(rep: dict) -> str:
    p = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
         "<title>ovltrace audit</title>", f"<style>{CSS}</style></head><body>",
         "<h1>ovltrace audit</h1>",
         f'<div class="muted">{rep["window_seconds"]:.1f}s window, {len(rep["overlays"])} '
         f'containers; upper fs: {html_text(_fs(rep))}{html_text(_source(rep))}</div>']
    p.append("<h2>Findings</h2>")
    p += findings_html(rep["findings"])
    p.append("<h2>Per container</h2>")
    p.append(_table(["container", "inodes", "dirtied", "written back", "copy-ups", "syncfs",
                     "wb errors", "waited on others", "made others wait"],
                    [[o["name"] + ("" if o["live"] else " (unmounted)"), o["inodes_dirtied"],
                      human_bytes(o["bytes_dirtied"]), human_bytes(o["bytes_written_back"]),
                      f'{o["copy_ups"]} / {human_bytes(o["copy_up_bytes"])}', o["syncfs_calls"],
                      o["writeback_errors"], human_seconds(o["waited_on_others_seconds"]),
                      human_seconds(o["made_others_wait_seconds"])]
                     for o in sorted(rep["overlays"], key=lambda o: -o["bytes_dirtied"])]))
    if rep["upper_filesystems"]:
        p.append("<h2>Per upper filesystem</h2>")
        p.append(_table(["device", "fs", "mountpoint", "containers", "dirtied", "written back",
                         "flushes", "wb errors"],
                        [[u["upper_dev"], u.get("fstype") or "-", u["mountpoint"],
                          len(u["overlay_names"]), human_bytes(u["bytes_dirtied"]),
                          human_bytes(u["bytes_written_back"]), u["flushes"], u["writeback_errors"]]
                         for u in rep["upper_filesystems"]]))
    p.append("<h2>Interference: whose flushes wrote back whose data</h2>")
    p.append(_heatmap(rep))
    if rep["worst_flushes"]:
        p.append("<h2>Worst flushes</h2>")
        p.append(_table(["kind", "caller", "pid/comm", "time", "ret", "own data", "others' data",
                         "others"],
                        [[f["kind"], f["caller"], f'{f["pid"]}/{f["comm"]}',
                          human_seconds(f["duration_seconds"]), f["ret"], human_bytes(f["own_bytes"]),
                          human_bytes(f["others_bytes"]), ", ".join(f["victims"]) or "-"]
                         for f in rep["worst_flushes"]]))
    lc = rep["lifecycle"]
    if lc["events"]:
        p.append("<h2>Container starts and stops</h2>")
        p.append(f'<p class="muted">{html_text(lifecycle_counts(lc))}: '
                 f'{human_seconds(lc["stall_seconds"])} in their unmounts\' syncs, '
                 f'{human_seconds(lc["others_seconds"])} of it on neighbours\' data.</p>')
        p.append(_table(["container", "runtime", "step", "time", "own data", "others' data",
                         "whose"],
                        [[e["container"], e["runtime"], e["step"] + (" (volatile)" if e["volatile"] else ""),
                          human_seconds(e["duration_seconds"]), human_bytes(e["own_bytes"]),
                          human_bytes(e["others_bytes"]),
                          ", ".join(f'{o["name"]} {human_bytes(o["bytes"])}' for o in e["others"]) or "-"]
                         for e in lc["events"]]))
        if lc["neighbours"]:
            p.append(_table(["neighbour", "events", "bytes", "paid"],
                            [[n["name"], n["events"], human_bytes(n["bytes"]),
                              human_seconds(n["seconds"])] for n in lc["neighbours"]]))
    if rep["errors_by_container"]:
        p.append("<h2>Writeback errors, leaks and silent losses</h2>")
        p.append(_table(["container", "wb errors", "errno", "inodes", "returned", "status"],
                        [[e["name"], e["writeback_errors"], ",".join(e["errnos"]) or "-",
                          len(e["inodes"]), e["errors_returned"],
                          "SILENT LOSS" if e["silent_loss"] else
                          ("got others' error from " + ", ".join(e["leaked_to_it_from"])
                           if e["leaked_to_it_from"] else ("told" if e["errors_returned"] else "-"))]
                         for e in rep["errors_by_container"]]))
        inodes = [[e["name"], i["ino"], i["errors"], i.get("path") or "(unresolved)"]
                  for e in rep["errors_by_container"] for i in e["inodes"][:20]]
        if inodes:
            p.append(_table(["container", "inode", "errors", "path"], inodes))
    if rep["copy_up_hotspots"]:
        p.append("<h2>Copy-up hotspots</h2>")
        p.append(_table(["container", "copy-ups", "bytes", "average", "busy"],
                        [[h["name"], h["copy_ups"], human_bytes(h["copy_up_bytes"]),
                          human_bytes(h["average_bytes"]), human_seconds(h["busy_seconds"])]
                         for h in rep["copy_up_hotspots"]]))
    p.append("<h2>ovltrace vs cgroup accounting</h2>")
    p.append(_cgroups(rep["cgroup_accounting"]))
    p.append("<h2>Timelines</h2>")
    p.append(_timelines(rep["timelines"]))
    p.append('<script type="application/json" id="ovltrace-report">'
             + json.dumps(rep).replace("</", "<\\/") + "</script>")
    p.append("</body></html>")
    return "\n".join(p)


def _fs(rep):
    return ", ".join(f"{u['upper_dev']} {u.get('fstype') or ''} {u['mountpoint']}".strip()
                     for u in rep["upper_filesystems"]) or "none"


def _source(rep):
    r = rep.get("report") or {}
    return (f" (recording from {r.get('host') or '?'}, kernel {r.get('kernel') or '?'})"
            if r.get("source") == "recording" else "")


def findings_html(findings: list[dict], where=lambda f: "") -> list[str]:
    """One block per finding; where(f): words after the title (the fleet's nodes)."""
    out = [] if findings else ["<p>No findings.</p>"]
    for f in findings:
        w = where(f)
        out.append(f'<div class="finding {f["severity"]}"><span class="sev">{f["severity"]}</span> '
                   f'<b>{html_text(f["title"])}</b>' + (f" {html_text(w)}" if w else "")
                   + f'<br>{html_text(f["detail"])}<br>'
                   f'<i>Advice:</i> {html_text(f["advice"])}</div>')
    return out


def _table(headers, rows) -> str:
    h = "".join(f"<th>{html_text(str(x))}</th>" for x in headers)
    def td(c) -> str:
        text = str(c)
        left = ' class="t"' if isinstance(c, str) and not text[:1].isdigit() else ""
        return f"<td{left}>{html_text(text)}</td>"
    body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _heatmap(rep) -> str:
    cells = [c for c in rep["interference"] if c["bytes"]]
    if not cells:
        return "<p>No flush wrote back any data.</p>"
    callers = sorted({c["caller"] for c in cells})
    victims = sorted({c["victim"] for c in cells})
    top = max(c["bytes"] for c in cells)
    cw, ch, left, head = 110, 34, 140, 70
    w, h = max(620, left + cw * len(victims) + 10), head + ch * len(callers) + 30
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
         f'aria-label="interference heat map">',
         f'<text x="{left}" y="14" font-size="12" fill="#555">victim (whose data was written '
         f'back) &#8594;</text>', f'<text x="4" y="{head - 6}" font-size="12" fill="#555">caller '
                                   f'&#8595;</text>']
    for j, v in enumerate(victims):
        s.append(f'<text x="{left + j * cw + cw / 2}" y="{head - 8}" font-size="12" '
                 f'text-anchor="middle">{html_text(v[:16])}</text>')
    by = {(c["caller"], c["victim"]): c for c in cells}
    for i, c_name in enumerate(callers):
        y = head + i * ch
        s.append(f'<text x="{left - 6}" y="{y + ch / 2 + 4}" font-size="12" '
                 f'text-anchor="end">{html_text(c_name[:18])}</text>')
        for j, v in enumerate(victims):
            c = by.get((c_name, v))
            x = left + j * cw
            if c is None:
                s.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="#f6f6f6"/>')
                continue
            level = (c["bytes"] / top) ** 0.5
            own = c_name == v
            r, g, b = (120, 144, 156) if own else (198, 40, 40)
            fill = f"rgb({int(255 - (255 - r) * level)},{int(255 - (255 - g) * level)}," \
                   f"{int(255 - (255 - b) * level)})"
            ink = "#fff" if level > 0.6 else "#222"
            s.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{fill}">'
                     f'<title>{html_text(c_name)} flushed {html_text(v)}: {human_bytes(c["bytes"])} in '
                     f'{c["flushes"]} flushes, waited {human_seconds(c["stall_seconds"])}</title></rect>')
            s.append(f'<text x="{x + cw / 2 - 1}" y="{y + 14}" font-size="11" text-anchor="middle" '
                     f'fill="{ink}">{human_bytes(c["bytes"])}</text>')
            s.append(f'<text x="{x + cw / 2 - 1}" y="{y + 27}" font-size="10" text-anchor="middle" '
                     f'fill="{ink}">{human_seconds(c["stall_seconds"])}</text>')
    s.append(f'<text x="4" y="{h - 8}" font-size="11" fill="#777">cell: bytes written back, and '
             f'the caller\'s wait on them; red = other containers\' data, grey = its own</text>')
    s.append("</svg>")
    return "".join(s)


def _cgroups(cg) -> str:
    if not cg["containers"]:
        return f"<p>Not available: {html_text(cg.get('note') or '')}</p>"
    rows = []
    for c in cg["containers"]:
        v2, v1 = c["v2"], c["v1"]
        rows.append([c["name"], human_bytes(c["ovltrace_bytes_dirtied"]),
                     human_bytes(c["ovltrace_bytes_written_back"]),
                     human_bytes(v2["file_dirty_peak"]) if "file_dirty_peak" in v2 else
                     (human_bytes(v1["dirty_peak"]) + (" (v1, shared)" if v1.get("shared") else " (v1)")
                      if "dirty_peak" in v1 else "n/a"),
                     human_bytes(v2["wbytes"]) if "wbytes" in v2 else
                     (human_bytes(v1["wbytes"]) + " (v1)" if "wbytes" in v1 else "n/a"),
                     c.get("gap") or "-"])
    note = f'<p class="muted">Note: {html_text(cg["note"])}</p>' if cg.get("note") else ""
    return _table(["container", "ovltrace dirtied", "ovltrace written back", "cgroup dirty peak",
                   "cgroup write bytes", "gap"], rows) + note


def _timelines(tl) -> str:
    if not tl["series"]:
        return "<p>No containers.</p>"
    n, step = tl["points"], tl["interval_seconds"]
    width, height, left = 900, 70, 120
    top = max([max(s["bytes_dirtied"] + s["bytes_written_back"] + [0]) for s in tl["series"]] + [1])
    bw = (width - left) / n
    out = [f'<div class="legend"><span style="background:{DIRTIED}"></span>dirtied'
           f'<span style="background:{WRITTEN}"></span>written back'
           f'<span style="background:{FLUSH}"></span>its flushes'
           f'<span style="background:{ERROR}"></span>writeback errors'
           f' <span class="muted" style="width:auto;background:none">per {human_seconds(step)}, '
           f'scale {human_bytes(top)}</span></div>']
    for s in tl["series"]:
        svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}">',
               f'<text x="0" y="{height / 2}" font-size="12">{html_text(s["name"][:16])}</text>',
               f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="#ccc"/>']
        for i in range(n):
            for val, color, off in ((s["bytes_dirtied"][i], DIRTIED, 0),
                                    (s["bytes_written_back"][i], WRITTEN, bw / 2)):
                if val:
                    hh = max(1.0, (height - 4) * val / top)
                    svg.append(f'<rect x="{left + i * bw + off:.1f}" y="{height - hh:.1f}" '
                               f'width="{max(1.0, bw / 2 - 0.5):.1f}" height="{hh:.1f}" fill="{color}"/>')
        for e in tl["events"]:
            if e["caller"] != s["name"]:
                continue
            x = left + e["t"] / step * bw
            color = ERROR if e["kind"] == "wb_error" else FLUSH
            svg.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="{color}" '
                       f'stroke-width="1" opacity="0.6"><title>{html_text(e["kind"])} at '
                       f'{e["t"]:.2f}s</title></line>')
        svg.append(f'<text x="{left}" y="{height + 13}" font-size="10" fill="#777">0s</text>')
        svg.append(f'<text x="{width}" y="{height + 13}" font-size="10" fill="#777" '
                   f'text-anchor="end">{n * step:.1f}s</text></svg>')
        out.append("<div>" + "".join(svg) + "</div>")
    return "\n".join(out)
