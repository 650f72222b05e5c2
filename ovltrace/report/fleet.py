"""The fleet report: every node's window from Prometheus (fleet.py) put in
the audit report's shapes, judged by the same findings (findings.py), then
gathered across nodes by workload.

A node's report is the audit's subset that counters can give: the stall
rows, the interference pairs, container starts and stops by neighbour,
leaks, errors and copy-ups.  What needs single events is not there (a
flush's own duration, the inodes and paths behind an error, volatile
mount options, cgroup accounting); the report says so in its caveats.
Its JSON shape is ovltrace/schema/fleet-v1.json.
"""
from __future__ import annotations

import errno as errno_mod
import time

from ..fleet import FleetFigures, NodeFigures, party_name, workload_name
from ..format import human_seconds
from .findings import SEVERITY_ORDER, findings as make_findings
from .gates import GATE_CODES

SCHEMA_VERSION = 1
TOP = 20
# findings that need single events or what only the host knows
NOT_FROM_COUNTERS = ("cgroup-accounting-gap", "lifecycle-volatile", "volatile-errors")
CAVEATS = (
    "Figures are window deltas of the exporters' counters, exact to each node's last scrape.",
    "Not in Prometheus, so not in this report: each flush's own duration (stall gates use the "
    "duration histogram's power-of-two buckets), the inodes and paths behind writeback errors, "
    "volatile mounts (starts and stops that synced nothing), cgroup accounting.",
)


def _errno(name: str) -> int:
    return getattr(errno_mod, name, 0) if name.isupper() else int(name or 0)


def node_report(fig: NodeFigures) -> dict:
    """One node's window in the audit report's shapes (report/build.py)."""
    parties: dict[str, dict] = {}

    def party(name: str) -> dict:
        p = parties.get(name)
        if p is None:
            p = parties[name] = {"name": name, "flushes": 0, "syncfs_calls": 0,
                                 "own_bytes_flushed": 0, "others_bytes_flushed": 0,
                                 "waited_on_others_seconds": 0.0, "bytes_flushed_by_others": 0,
                                 "made_others_wait_seconds": 0.0}
        return p

    def remember(labels: dict, prefix: str = "") -> str:
        name = party_name(labels, prefix)
        fig.workloads.setdefault(name, workload_name(labels, prefix))
        return name

    flush_time: dict[tuple[str, str], list] = {}
    for labels, v in fig.get("flushes"):
        p = party(remember(labels))
        p["flushes"] += round(v)
        if labels.get("kind") == "syncfs":
            p["syncfs_calls"] += round(v)
        flush_time.setdefault((p["name"], labels.get("kind", "")), [0, 0.0])[0] += round(v)
    for labels, v in fig.get("flush_seconds"):
        flush_time.setdefault((remember(labels), labels.get("kind", "")), [0, 0.0])[1] += v
    for labels, v in fig.get("own_bytes"):
        party(remember(labels))["own_bytes_flushed"] += round(v)

    # the pairs: bytes, seconds and flushes come as three families
    pairs: dict[tuple, dict] = {}
    for fam, key in (("pair_bytes", "bytes"), ("pair_seconds", "stall_seconds"),
                     ("pair_flushes", "flushes")):
        for labels, v in fig.get(fam):
            k = (remember(labels, "caller_"), remember(labels, "victim_"), labels.get("kind", ""),
                 labels.get("runtime", ""), labels.get("step", ""))
            row = pairs.setdefault(k, {"caller": k[0], "victim": k[1], "kind": k[2],
                                       "runtime": k[3], "step": k[4], "bytes": 0,
                                       "flushes": 0, "stall_seconds": 0.0})
            row[key] += v if key == "stall_seconds" else round(v)
    for row in pairs.values():
        c, v = party(row["caller"]), party(row["victim"])
        c["others_bytes_flushed"] += row["bytes"]
        c["waited_on_others_seconds"] += row["stall_seconds"]
        v["bytes_flushed_by_others"] += row["bytes"]
        v["made_others_wait_seconds"] += row["stall_seconds"]

    interference: dict[tuple[str, str], dict] = {}
    for row in pairs.values():
        i = interference.setdefault((row["caller"], row["victim"]), {
            "caller": row["caller"], "victim": row["victim"], "bytes": 0, "flushes": 0,
            "stall_seconds": 0.0})
        for k in ("bytes", "flushes", "stall_seconds"):
            i[k] += row[k]

    lifecycle = _lifecycle([r for r in pairs.values() if r["step"]])
    in_lifecycle = {r["caller"] for r in pairs.values() if r["step"]}
    # unmounts no runtime owns: one row per caller (its umount flushes)
    worst = []
    for (caller, kind), (n, secs) in flush_time.items():
        others = sum(r["bytes"] for r in pairs.values()
                     if r["caller"] == caller and r["kind"] == kind and not r["step"])
        if kind == "umount" and others and caller not in in_lifecycle:
            worst.append({"kind": kind, "caller": caller, "flushes": n,
                          "duration_seconds": round(secs, 6), "others_bytes": others})

    leaks = {}
    for labels, v in fig.get("leaks"):
        k = (remember(labels, "victim_"), remember(labels, "source_"), labels.get("errno", ""))
        leaks[k] = leaks.get(k, 0) + round(v)
    leak_rows = [{"victim": v, "source": s, "errno": _errno(e), "call": "syncfs", "count": n}
                 for (v, s, e), n in sorted(leaks.items())]

    overlays: dict[str, dict] = {}

    def overlay(labels: dict) -> dict:
        name = remember(labels)
        o = overlays.get(name)
        if o is None:
            o = overlays[name] = {"name": name, "upper_dev": labels.get("device", ""),
                                  "options": [], "runtime": labels.get("runtime", ""),
                                  "bytes_dirtied": 0, "bytes_written_back": 0, "copy_ups": 0,
                                  "copy_up_bytes": 0, "writeback_errors": 0}
        o["upper_dev"] = o["upper_dev"] or labels.get("device", "")
        return o

    for fam, key in (("dirtied", "bytes_dirtied"), ("written_back", "bytes_written_back"),
                     ("copy_ups", "copy_ups"), ("copy_up_bytes", "copy_up_bytes")):
        for labels, v in fig.get(fam):
            overlay(labels)[key] += round(v)
    errnos: dict[str, set] = {}
    for labels, v in fig.get("wb_errors"):
        o = overlay(labels)
        o["writeback_errors"] += round(v)
        errnos.setdefault(o["name"], set()).add(labels.get("errno", ""))
    returned: dict[str, int] = {}
    for labels, v in fig.get("returned"):
        name = remember(labels)
        returned[name] = returned.get(name, 0) + round(v)

    # silent loss: writeback errors in the window, no error handed to it in the window
    # (analysis.errors' rule, on counters)
    errors = []
    for name, o in sorted(overlays.items()):
        if not o["writeback_errors"] and not returned.get(name):
            continue
        errors.append({"name": name, "writeback_errors": o["writeback_errors"],
                       "errnos": sorted(errnos.get(name, ())), "inodes": [],
                       "errors_returned": returned.get(name, 0),
                       "leaked_to_it_from": sorted({l["source"] for l in leak_rows
                                                    if l["victim"] == name}),
                       "leaked_from_it_to": sorted({l["victim"] for l in leak_rows
                                                    if l["source"] == name}),
                       "silent_loss": bool(o["writeback_errors"]) and not returned.get(name)})
    rep = {
        "node": fig.node,
        "overlays": sorted(overlays.values(), key=lambda o: -o["bytes_dirtied"]),
        "stall_by_container": sorted(
            ({**p, "waited_on_others_seconds": round(p["waited_on_others_seconds"], 6),
              "made_others_wait_seconds": round(p["made_others_wait_seconds"], 6)}
             for p in parties.values()),
            key=lambda s: -s["waited_on_others_seconds"] - s["made_others_wait_seconds"]),
        "interference": [{**i, "stall_seconds": round(i["stall_seconds"], 6)} for i in
                         sorted(interference.values(), key=lambda i: -i["bytes"])],
        "worst_flushes": sorted(worst, key=lambda f: -f["duration_seconds"]),
        "lifecycle": lifecycle,
        "leaks": leak_rows,
        "silent_losses": [{"name": e["name"], "writeback_errors": e["writeback_errors"],
                           "errnos": [_errno(x) for x in e["errnos"]]}
                          for e in errors if e["silent_loss"]],
        "errors_by_container": errors,
        "copy_up_hotspots": [{"name": o["name"], "copy_ups": o["copy_ups"],
                              "copy_up_bytes": o["copy_up_bytes"],
                              "average_bytes": o["copy_up_bytes"] // max(1, o["copy_ups"])}
                             for o in sorted(overlays.values(), key=lambda o: -o["copy_up_bytes"])
                             if o["copy_ups"] or o["copy_up_bytes"]],
    }
    rep["findings"] = make_findings(rep)
    return rep


def _lifecycle(rows: list[dict]) -> dict:
    """Starts and stops by neighbour (analysis.lifecycle's Neighbour, from
    the pairs the exporter labels with runtime and step)."""
    spent: dict[str, float] = {}
    by: dict[str, dict] = {}
    for r in rows:
        spent[r["caller"]] = spent.get(r["caller"], 0.0) + r["stall_seconds"]
        n = by.setdefault(r["victim"], {"name": r["victim"], "bytes": 0, "seconds": 0.0,
                                        "events": 0, "paid_by": set(), "runtimes": set(),
                                        "steps": set()})
        n["bytes"] += r["bytes"]
        n["seconds"] += r["stall_seconds"]
        n["events"] += r["flushes"]
        n["paid_by"].add(r["caller"])
        n["runtimes"].add(r["runtime"])
        n["steps"].add(r["step"])
    out = []
    for n in by.values():
        out.append({**n, "seconds": round(n["seconds"], 6), "paid_by": sorted(n["paid_by"]),
                    "runtimes": sorted(n["runtimes"]), "steps": sorted(n["steps"]),
                    "paid_by_others_seconds": round(sum(spent[c] for c in n["paid_by"]), 6)})
    out.sort(key=lambda n: (-n["seconds"], -n["bytes"], n["name"]))
    return {"events": [], "neighbours": out,
            "others_seconds": round(sum(spent.values()), 6)}


def stall_gate(figs: FleetFigures, reports: dict[str, dict], bound: float) -> list[dict]:
    """Flushes longer than `bound` by callers whose flushes wrote back other
    containers' data, per node and caller, at the duration histogram's
    resolution: those above the highest bucket edge <= bound (so a flush
    between that edge and the bound counts: the gate errs towards failing)."""
    edges: dict[tuple, list[tuple[float, float]]] = {}
    for node, labels, n in figs.buckets:
        le = labels.get("le", "")
        k = (node, party_name(labels), labels.get("kind", ""))
        edges.setdefault(k, []).append((float("inf") if le == "+Inf" else float(le), n))
    out = []
    for (node, caller, kind), bs in edges.items():
        rep = reports.get(node)
        row = next((s for s in (rep or {}).get("stall_by_container", []) if s["name"] == caller),
                   None)
        if row is None or not row["others_bytes_flushed"]:
            continue
        bs.sort()
        total = bs[-1][1]
        edge, under = max(((le, n) for le, n in bs if le <= bound), default=(0.0, 0.0))
        if round(total - under) > 0:
            out.append({"node": node, "caller": caller, "kind": kind,
                        "flushes": round(total - under), "over_seconds": edge})
    return sorted(out, key=lambda r: (-r["flushes"], r["node"], r["caller"]))


def build_fleet_report(figs: FleetFigures, gates: dict | None = None) -> dict:
    reports = {n: node_report(f) for n, f in sorted(figs.nodes.items())}
    workloads: dict[str, dict] = {}

    def wl(node: str, name: str) -> dict:
        w = figs.nodes[node].workloads.get(name, name)
        row = workloads.get(w)
        if row is None:
            row = workloads[w] = {"workload": w, "nodes": set(), "syncfs_calls": 0,
                                  "others_bytes_flushed": 0, "waited_on_others_seconds": 0.0,
                                  "bytes_flushed_by_others": 0, "made_others_wait_seconds": 0.0,
                                  "errors_leaked_to_it": 0, "errors_it_caused": 0,
                                  "unreported_writeback_errors": 0}
        row["nodes"].add(node)
        return row

    pairs, leaks, losses, nodes, findings = [], [], [], [], []
    for node, rep in reports.items():
        for s in rep["stall_by_container"]:
            if not (s["others_bytes_flushed"] or s["bytes_flushed_by_others"]):
                continue
            w = wl(node, s["name"])
            for k in ("syncfs_calls", "others_bytes_flushed", "waited_on_others_seconds",
                      "bytes_flushed_by_others", "made_others_wait_seconds"):
                w[k] += s[k]
        pairs += [{"node": node, **i} for i in rep["interference"]]
        for l in rep["leaks"]:
            leaks.append({"node": node, **l})
            wl(node, l["victim"])["errors_leaked_to_it"] += l["count"]
            wl(node, l["source"])["errors_it_caused"] += l["count"]
        for l in rep["silent_losses"]:
            losses.append({"node": node, **l})
            wl(node, l["name"])["unreported_writeback_errors"] += l["writeback_errors"]
        nodes.append({
            "node": node, "containers": len(rep["overlays"]),
            "flushes": sum(s["flushes"] for s in rep["stall_by_container"]),
            "others_bytes_flushed": sum(i["bytes"] for i in rep["interference"]),
            "stall_seconds": round(sum(i["stall_seconds"] for i in rep["interference"]), 6),
            "leaks": sum(l["count"] for l in rep["leaks"]),
            "silent_losses": len(rep["silent_losses"]),
            "findings": len(rep["findings"]),
            "restarted": node in figs.reset_nodes})
        findings += [{**f, "node": node} for f in rep["findings"]]

    rows = []
    for w in workloads.values():
        rows.append({**w, "nodes": sorted(w["nodes"]),
                     "waited_on_others_seconds": round(w["waited_on_others_seconds"], 6),
                     "made_others_wait_seconds": round(w["made_others_wait_seconds"], 6)})
    rows.sort(key=lambda w: w["workload"])
    rep = {
        "version": SCHEMA_VERSION,
        "kind": "fleet",
        "source": {"prometheus": figs.url, "range_seconds": figs.range_seconds,
                   "end": round(figs.end, 3),
                   "end_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(figs.end)),
                   "selector": figs.selector, "node_label": figs.node_label,
                   "queries": figs.queries, "series": figs.series},
        "nodes": nodes,
        "workloads": rows,
        "worst_callers": sorted((w for w in rows if w["waited_on_others_seconds"] > 0),
                                key=lambda w: -w["waited_on_others_seconds"])[:TOP],
        "worst_victims": sorted((w for w in rows if w["made_others_wait_seconds"] > 0),
                                key=lambda w: -w["made_others_wait_seconds"])[:TOP],
        "pairs": sorted(pairs, key=lambda p: (-p["stall_seconds"], -p["bytes"]))[:TOP],
        "leaks": sorted(leaks, key=lambda l: (-l["count"], l["node"])),
        "silent_losses": sorted(losses, key=lambda l: (-l["writeback_errors"], l["node"])),
        "findings": across_nodes(findings, figs),
        "node_findings": sorted(findings, key=lambda f: (SEVERITY_ORDER[f["severity"]],
                                                         f["node"], f["id"])),
        "stall_over": [],
        "caveats": list(CAVEATS) + _caveats(figs),
        "node_reports": reports,
    }
    if gates and "stall" in gates:
        rep["stall_over"] = stall_gate(figs, reports, gates["stall"])
    return rep


def across_nodes(findings: list[dict], figs: FleetFigures) -> list[dict]:
    """One fleet finding per (kind of finding, workloads involved): the
    worst node's words, and every node where it happened."""
    groups: dict[tuple, dict] = {}
    for f in findings:
        names = figs.nodes[f["node"]].workloads
        who = tuple(sorted({names.get(c, c) for c in f["containers"]}))
        g = groups.get((f["id"], who))
        if g is None:
            g = groups[(f["id"], who)] = {"id": f["id"], "severity": f["severity"],
                                          "workloads": list(who), "nodes": [],
                                          "title": f["title"], "detail": f["detail"],
                                          "advice": f["advice"], "evidence": f["evidence"],
                                          "worst_node": f["node"]}
        g["nodes"].append(f["node"])
        if SEVERITY_ORDER[f["severity"]] < SEVERITY_ORDER[g["severity"]]:
            g.update(severity=f["severity"], title=f["title"], detail=f["detail"],
                     evidence=f["evidence"], worst_node=f["node"])
    out = [{**g, "nodes": sorted(set(g["nodes"]))} for g in groups.values()]
    return sorted(out, key=lambda g: (SEVERITY_ORDER[g["severity"]], -len(g["nodes"]), g["id"],
                                      g["workloads"]))


def _caveats(figs: FleetFigures) -> list[str]:
    out = []
    if figs.reset_nodes:
        out.append("Counters reset in the window on " + ", ".join(figs.reset_nodes)
                   + " (the exporter restarted): their figures use increase(), which "
                   "extrapolates, and miss what happened while it was down.")
    if figs.partial_nodes:
        out.append("Scraped for only part of the window (down, unreachable or new): " + ", ".join(
            f"{n} ({share:.0%})" for n, share in figs.partial_nodes) + ".")
    return out


def fleet_gates(rep: dict, gates: dict) -> tuple[int, list[str]]:
    """--fail-on on a fleet report: the audit's gates and exit codes."""
    code, why = 0, []
    if gates.get("leak") and rep["leaks"]:
        code |= GATE_CODES["leak"]
        where = sorted({l["node"] for l in rep["leaks"]})
        why.append(f"leak: {sum(l['count'] for l in rep['leaks'])} error(s) handed to a "
                   f"container that did not cause them, on {', '.join(where)}")
    if gates.get("silent-loss") and rep["silent_losses"]:
        code |= GATE_CODES["silent-loss"]
        why.append("silent-loss: " + ", ".join(f"{l['name']} on {l['node']}"
                                               for l in rep["silent_losses"])
                   + " lost data and was never told")
    if "stall" in gates and rep["stall_over"]:
        code |= GATE_CODES["stall"]
        w = rep["stall_over"][0]
        why.append(f"stall: {sum(r['flushes'] for r in rep['stall_over'])} flush(es) over "
                   f"{human_seconds(gates['stall'])} by callers that wrote back other "
                   f"containers' data (most: {w['caller']} on {w['node']}, {w['flushes']})")
    return code, why
