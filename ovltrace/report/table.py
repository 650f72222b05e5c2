"""The audit report as a terminal table (80 columns) and the sections
the Markdown view shares."""
from __future__ import annotations

import textwrap

from tabulate import tabulate

from ..format import errno_name, human_bytes, human_seconds
from ..untrusted import cut as cut_to
from ..untrusted import markdown, visible


def _t(rows, headers, fmt) -> str:
    """A table; every cell made safe for the format (untrusted.py)."""
    esc = markdown if fmt == "github" else visible
    rows = [[esc(c) for c in r] for r in rows]
    if fmt != "simple":
        return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    # tabulate pads headers by two columns beyond the data; the terminal
    # table must fit 80 columns, so the header and its rule go in as rows
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return tabulate([headers, ["-" * w for w in widths], *rows], tablefmt="plain",
                    disable_numparse=True)


def sections(rep: dict, fmt: str = "simple", width: int = 14) -> list[tuple[str, str]]:
    """(title, table) pairs shared by the terminal and Markdown views."""
    def cut(s: str) -> str:
        return cut_to(visible(s), width)

    out = []
    rows = [[cut(o["name"]) + ("" if o["live"] else "*"), human_bytes(o["bytes_dirtied"]),
             human_bytes(o["bytes_written_back"]),
             f"{o['copy_ups']}/{human_bytes(o['copy_up_bytes'])}", o["syncfs_calls"],
             o["writeback_errors"], human_seconds(o["waited_on_others_seconds"]),
             human_seconds(o["made_others_wait_seconds"])]
            for o in sorted(rep["overlays"], key=lambda o: -o["bytes_dirtied"])]
    out.append(("Per container (* = unmounted during the window; WAITED = its flushes' time "
                "spent on other containers' data, MADEWAIT = the time others' flushes spent on "
                "its data)",
                _t(rows, ["CONTAINER", "DIRTIED", "WRITTEN", "COPYUP", "SYNCFS", "WBERR",
                          "WAITED", "MADEWAIT"], fmt) if rows else "(no overlays)"))
    fs = [[u["upper_dev"], u.get("fstype") or "-", _tail(u["mountpoint"], 2 * width - 12), len(u["overlay_names"]),
           human_bytes(u["bytes_dirtied"]), human_bytes(u["bytes_written_back"]), u["flushes"],
           u["writeback_errors"]] for u in rep["upper_filesystems"]]
    if fs:
        out.append(("Per upper filesystem", _t(fs, ["DEV", "FS", "MOUNTPOINT", "CTRS", "DIRTIED",
                                                    "WRITTEN", "FLUSHES", "WBERR"], fmt)))
    cells = rep["interference"]
    if cells:
        rows = [[cut(c["caller"]), cut(c["victim"]), human_bytes(c["bytes"]), c["flushes"],
                 human_seconds(c["stall_seconds"])] for c in cells[:20]]
        out.append(("Interference: the caller's flushes wrote back the victim's data "
                    "(STALL = the share of those flushes' time the victim's bytes explain)",
                    _t(rows, ["CALLER", "VICTIM", "BYTES", "FLUSHES", "STALL"], fmt)))
    if rep["worst_flushes"]:
        rows = [[f["kind"], cut(f["caller"])[:14], f"{f['pid']}/{visible(f['comm'])[:10]}",
                 human_seconds(f["duration_seconds"]), f["ret"], human_bytes(f["own_bytes"]),
                 human_bytes(f["others_bytes"])] for f in rep["worst_flushes"]]
        out.append((f"Worst flushes ({len(rep['flushes'])} in all)",
                    _t(rows, ["KIND", "CALLER", "PID/COMM", "TIME", "RET", "OWN", "OTHERS'"], fmt)))
    lc = rep["lifecycle"]
    if lc["events"]:
        counts = lifecycle_counts(lc)
        rows = [[cut_to(visible(e["container"]), width + 6),   # fewer columns: room for "/init"
                 e["step"] + (" (volatile)" if e["volatile"] else ""),
                 human_seconds(e["duration_seconds"]), human_bytes(e["own_bytes"]),
                 human_bytes(e["others_bytes"]),
                 cut(e["others"][0]["name"]) if e["others"] else "-"]
                for e in sorted(lc["events"], key=lambda e: -e["duration_seconds"])[:15]]
        text = _t(rows, ["CONTAINER", "STEP", "TIME", "OWN", "OTHERS'", "MOSTLY OF"], fmt)
        if lc["neighbours"]:
            text += "\n\n" + _t([[cut(n["name"]), n["events"], human_bytes(n["bytes"]),
                                   human_seconds(n["seconds"])] for n in lc["neighbours"][:10]],
                                 ["NEIGHBOUR", "EVENTS", "BYTES", "PAID"], fmt)
        out.append((f"Container starts and stops ({counts}): each unmount synced the whole "
                    f"upper fs; they took {human_seconds(lc['stall_seconds'])}, "
                    f"{human_seconds(lc['others_seconds'])} of it on neighbours' data "
                    "(PAID = the share of their time a neighbour's bytes explain)", text))
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
                 for l in rep["leaks"]]
        if leaks:
            text += "\n\n" + _t(leaks, ["HANDED TO", "ERRNO", "BY", "CAUSED BY"], fmt)
        out.append(("Writeback errors, leaks and silent losses", text))
    if rep["copy_up_hotspots"]:
        rows = [[cut(h["name"]), h["copy_ups"], human_bytes(h["copy_up_bytes"]),
                 human_bytes(h["average_bytes"]), human_seconds(h["busy_seconds"])]
                for h in rep["copy_up_hotspots"][:10]]
        out.append(("Copy-up hotspots (BUSY = time copy-up bytes kept growing, "
                    "at the report timeline's resolution)",
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


def lifecycle_counts(lc: dict) -> str:
    """'1 docker create, 2 docker stop': the report's lifecycle counts."""
    return ", ".join(f"{c['events']} {c['runtime']} {c['step']}" for c in lc["counts"])


def _tail(path: str, width: int) -> str:
    path = visible(path)
    return path if len(path) <= width else "~" + path[-(width - 1):]


def render_table(rep: dict) -> str:
    fs = ", ".join(f"{u['upper_dev']} {u.get('fstype') or ''}".strip()
                   for u in rep["upper_filesystems"]) or "none"
    width = 14
    out = [f"ovltrace audit: {rep['window_seconds']:.1f}s window, {len(rep['overlays'])} "
           f"containers; upper fs: {fs}"]
    if rep["findings"]:
        out += ["", f"Findings ({len(rep['findings'])})"]
        out += findings_text(rep["findings"])
    for title, body in sections(rep, width=width):
        lines = []
        for line in body.split("\n"):
            prose = line.startswith(("note: ", "not available: "))
            lines += _wrap(line, indent="  ") if prose else [line]
        out += ["", *_wrap(title, indent=""), *lines]
    return "\n".join(visible(line) for line in out)     # nothing raw reaches the terminal


def findings_text(findings: list[dict], where=lambda f: "") -> list[str]:
    """Each finding wrapped to 80 columns; where(f): words after the title."""
    out = []
    for f in findings:
        w = where(f)
        out += _wrap(f"  [{f['severity'].upper()}] {visible(f['title'])}"
                     + (f" {visible(w)}" if w else ""), indent="    ")
        out += _wrap(f"    {visible(f['detail'])}")
        out += _wrap(f"    advice: {visible(f['advice'])}")
    return out


def _wrap(text: str, width: int = 79, indent: str = "      ") -> list[str]:
    lead = len(text) - len(text.lstrip())
    return textwrap.wrap(text.lstrip(), width, initial_indent=text[:lead],
                         subsequent_indent=indent, break_on_hyphens=False) or [""]


