"""The fleet report as a terminal table (80 columns), Markdown, HTML or
JSON.  One list of sections feeds the three text formats, so they agree;
every name in it came from a container and is escaped by the format's
table helper (untrusted.py)."""
from __future__ import annotations

import json

from ..format import errno_name, human_bytes, human_seconds
from ..untrusted import cut, html_text, markdown, visible

W = 16          # name columns in the terminal table


def _nodes(ns: list[str], n: int = 3) -> str:
    return ", ".join(ns[:n]) + (f" +{len(ns) - n}" if len(ns) > n else "")


def sections(rep: dict, width: int) -> list[tuple[str, list[str], list[list]]]:
    """(title, headers, rows) for the text formats."""
    c = (lambda s: cut(visible(s), width)) if width else visible
    out = []
    out.append(("Nodes (CTRS = containers with data or errors in the window, STALL = the "
                "time flushes there spent on other containers' data)",
                ["NODE", "CTRS", "FLUSHES", "OTHERS'", "STALL", "LEAKS", "LOSSES", "FINDINGS"],
                [[c(n["node"]) + ("*" if n["restarted"] else ""), n["containers"], n["flushes"],
                  human_bytes(n["others_bytes_flushed"]), human_seconds(n["stall_seconds"]),
                  n["leaks"], n["silent_losses"], n["findings"]] for n in rep["nodes"]]))
    if rep["worst_callers"]:
        out.append(("Worst callers: whose flushes waited on other containers' data (WAITED)",
                    ["WORKLOAD", "NODES", "SYNCFS", "OTHERS'", "WAITED"],
                    [[c(w["workload"]), _nodes(w["nodes"], 2), w["syncfs_calls"],
                      human_bytes(w["others_bytes_flushed"]),
                      human_seconds(w["waited_on_others_seconds"])]
                     for w in rep["worst_callers"]]))
    if rep["worst_victims"]:
        out.append(("Worst victims: whose dirty data others' flushes waited on (MADEWAIT)",
                    ["WORKLOAD", "NODES", "FLUSHED BY OTHERS", "MADEWAIT"],
                    [[c(w["workload"]), _nodes(w["nodes"], 2),
                      human_bytes(w["bytes_flushed_by_others"]),
                      human_seconds(w["made_others_wait_seconds"])]
                     for w in rep["worst_victims"]]))
    if rep["pairs"]:
        out.append(("Pairs: the caller's flushes wrote back the victim's data",
                    ["NODE", "CALLER", "VICTIM", "BYTES", "FLUSHES", "STALL"],
                    [[c(p["node"]), c(p["caller"]), c(p["victim"]), human_bytes(p["bytes"]),
                      p["flushes"], human_seconds(p["stall_seconds"])] for p in rep["pairs"]]))
    if rep["leaks"]:
        out.append(("Error leaks: an error handed to a container that did not cause it",
                    ["NODE", "HANDED TO", "ERRNO", "CAUSED BY", "TIMES"],
                    [[c(l["node"]), c(l["victim"]), errno_name(l["errno"]), c(l["source"]),
                      l["count"]] for l in rep["leaks"]]))
    if rep["silent_losses"]:
        out.append(("Silent losses: writeback failed and the container was never told",
                    ["NODE", "CONTAINER", "WBERR", "ERRNO"],
                    [[c(l["node"]), c(l["name"]), l["writeback_errors"],
                      ",".join(errno_name(e) for e in l["errnos"]) or "-"]
                     for l in rep["silent_losses"]]))
    if rep["stall_over"]:
        out.append(("Stall gate: flushes over the bound by callers that wrote back others' data",
                    ["NODE", "CALLER", "KIND", "FLUSHES", "OVER"],
                    [[c(r["node"]), c(r["caller"]), r["kind"], r["flushes"],
                      human_seconds(r["over_seconds"])] for r in rep["stall_over"]]))
    return out


def span(seconds: float) -> str:
    """A window as people say it: 90s, 45m, 24h, 7d."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


def _header(rep: dict) -> str:
    s = rep["source"]
    return (f"{span(s['range_seconds'])} to {s['end_utc']}, {len(rep['nodes'])} nodes, "
            f"{len(rep['workloads'])} workloads involved; from {s['prometheus']}"
            + (f" {s['selector']}" if s["selector"] else "")
            + f" ({s['queries']} queries, {s['series']} series)")


def _where(f: dict) -> str:
    return f"on {_nodes(f['nodes'], 5)}" + (f" (worst: {f['worst_node']})"
                                             if len(f["nodes"]) > 1 else "")


def render_fleet(rep: dict, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(rep, indent=2)
    if fmt == "markdown":
        return _markdown(rep)
    if fmt == "html":
        return _html(rep)
    return _table(rep)


def _table(rep: dict) -> str:
    from .table import _t, _wrap, findings_text
    out = _wrap(f"ovltrace fleet audit: {visible(_header(rep))}", indent="  ")
    out += ["", f"Findings across nodes ({len(rep['findings'])})"]
    out += findings_text(rep["findings"], _where) or ["  none"]
    for title, headers, rows in sections(rep, W):
        out += ["", *_wrap(title, indent=""), *_t(rows, headers, "simple").split("\n")]
    out += ["", "Caveats"] + [l for c in rep["caveats"] for l in _wrap(f"  - {c}", indent="    ")]
    return "\n".join(visible(line) for line in out)


def _markdown(rep: dict) -> str:
    from .markdown import findings_markdown
    from .table import _t
    out = ["# ovltrace fleet audit", "", markdown(_header(rep)), "", "## Findings across nodes", ""]
    out += findings_markdown(rep["findings"], _where)
    for title, headers, rows in sections(rep, 0):
        out += ["", f"## {markdown(title)}", "", _t(rows, headers, "github")]
    out += ["", "## Caveats", ""] + [f"- {markdown(c)}" for c in rep["caveats"]]
    return "\n".join(out) + "\n"


def _html(rep: dict) -> str:
    from .html import CSS, _table as table, findings_html
    p = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
         "<title>ovltrace fleet audit</title>", f"<style>{CSS}</style></head><body>",
         "<h1>ovltrace fleet audit</h1>", f'<div class="muted">{html_text(_header(rep))}</div>',
         "<h2>Findings across nodes</h2>", *findings_html(rep["findings"], _where)]
    for title, headers, rows in sections(rep, 0):
        p += [f"<h2>{html_text(title)}</h2>", table(headers, rows)]
    p.append("<h2>Caveats</h2><ul>" + "".join(f"<li>{html_text(c)}</li>" for c in rep["caveats"])
             + "</ul>")
    # the data, for tools (as the audit page carries its own)
    data = json.dumps(rep).replace("<", "\\u003c")
    p.append(f'<script type="application/json" id="ovltrace-fleet">{data}</script>')
    p.append("</body></html>")
    return "\n".join(p) + "\n"
