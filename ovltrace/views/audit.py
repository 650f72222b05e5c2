"""`ovltrace audit`: a one-shot report from a snapshot (table or JSON)."""
from __future__ import annotations

import json

from tabulate import tabulate

from ..model import Snapshot, flush_caller, snapshot_json
from .common import display_name, errno_name, human_bytes, human_seconds

FORMATS = ("table", "json")


def render(snap: Snapshot, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(snapshot_json(snap), indent=2)
    return render_table(snap)


def _name(snap: Snapshot, key: str | None, width: int = 18) -> str:
    if key is None:
        return "-"
    if key.startswith(("container:", "pid:")):
        return key.split(":", 1)[1][:width]
    return display_name(snap.metas.get(key), width)


def render_table(snap: Snapshot) -> str:
    out = []
    fs = ", ".join(f"{r.meta.upper_dev} {r.meta.fstype or ''} {r.meta.mountpoint}".strip()
                   for r in snap.upper_fs) or "none"
    out.append(f"ovltrace audit: {snap.window_seconds:.1f}s window, {len(snap.overlays)} overlays; "
               f"upper fs: {fs}")
    out.append("")

    rows = []
    for r in sorted(snap.overlays, key=lambda r: -r.window.bytes_dirtied):
        w = r.window
        rows.append([display_name(r.meta, 18) + ("" if r.live else "*"), w.inodes_dirtied,
                     human_bytes(w.bytes_dirtied), human_bytes(w.bytes_written_back),
                     r.dirty_inodes_now, f"{w.copy_ups}/{human_bytes(w.copy_up_bytes)}",
                     w.syncfs_calls, w.writeback_errors])
    for r in snap.upper_fs:
        w = r.window
        if w.bytes_dirtied or w.bytes_written_back or w.writeback_errors:
            rows.append([display_name(r.meta, 18), w.inodes_dirtied, human_bytes(w.bytes_dirtied),
                         human_bytes(w.bytes_written_back), r.dirty_inodes_now, "-", "-",
                         w.writeback_errors])
    out.append("Per overlay (* = unmounted during the window)")
    out.append(tabulate(rows, headers=["OVERLAY", "INODES", "DIRTIED", "WRITTEN", "DIRTY",
                                       "COPYUP", "SYNCFS", "WBERR"],
                        tablefmt="simple", disable_numparse=True) if rows else "  (no overlays)")

    if snap.flushes:
        out.append("")
        out.append(f"Flushes ({len(snap.flushes)}; longest first, others' data they wrote back)")
        frows = []
        for f in sorted(snap.flushes, key=lambda f: -f.duration)[:15]:
            others = [v for v in f.victims if v.key != f.target and v.bytes_written_back]
            victims = ", ".join(f"{_name(snap, v.key, 10)} {human_bytes(v.bytes_written_back)}"
                                for v in others[:2])
            if len(others) > 2:
                victims += f" +{len(others) - 2}"
            frows.append([f.kind, f"{f.pid}/{f.comm[:8]}", _name(snap, flush_caller(f), 12),
                          human_seconds(f.duration), f.ret, victims or "-"])
        out.append(tabulate(frows, headers=["KIND", "PID/COMM", "CALLER", "TIME", "RET",
                                            "OTHERS FLUSHED"], tablefmt="simple",
                            disable_numparse=True))

    matrix = {k: v for k, v in snap.interference().items() if not k[0].endswith(k[1]) and k[0] != k[1]}
    if matrix:
        out.append("")
        out.append("Interference: caller's flushes wrote back victim's data")
        mrows = [[_name(snap, c), _name(snap, v), human_bytes(b), n, human_seconds(s)]
                 for (c, v), (b, s, n) in sorted(matrix.items(), key=lambda kv: -kv[1][0])[:20]]
        out.append(tabulate(mrows, headers=["CALLER", "VICTIM", "BYTES", "FLUSHES", "STALL"],
                            tablefmt="simple", disable_numparse=True))

    if snap.wb_errors or snap.leaks or snap.silent_losses:
        out.append("")
        out.append("Writeback errors")
        per: dict[str, list] = {}
        for e in snap.wb_errors:
            per.setdefault(e.key, []).append(e)
        for key, errs in per.items():
            errnos = ",".join(sorted({errno_name(e.errno) for e in errs}))
            inodes = len({e.ino for e in errs})
            out.append(f"  {_name(snap, key)}: {len(errs)} errors ({errnos}) on {inodes} inodes")
        for l in snap.leaks:
            out.append(f"  LEAK: {_name(snap, l.victim)} was handed {errno_name(l.errno)} by {l.call}, "
                       f"caused by {_name(snap, l.source)}")
        for s in snap.silent_losses:
            out.append(f"  SILENT LOSS: {_name(snap, s.key)} lost data to {s.writeback_errors} "
                       f"writeback errors and was never told")
    return "\n".join(out)
