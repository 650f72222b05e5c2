"""The fleet report from hand-made Prometheus answers (pure): the audit's
rules on counters, the JSON schema, and names a container chose made
inert in every format."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from ovltrace.fleet import FleetFigures, NodeFigures
from ovltrace.report.fleet import build_fleet_report, fleet_gates
from ovltrace.report.fleetview import render_fleet, span

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "ovltrace/schema/fleet-v1.json")
                    .read_text())
MiB = 1 << 20
EVIL = 'x\x1b[31m|<script>alert(1)</script>*[a](b)\nnext'


def node(name: str, caller: str, victim: str, rows_extra=None) -> NodeFigures:
    c = {"container": caller, "pod": "", "namespace": "", "comm": "", "kind": "syncfs"}
    pair = {"caller_container": caller, "caller_pod": "", "caller_namespace": "",
            "caller_comm": "", "victim_container": victim, "victim_pod": "",
            "victim_namespace": "", "kind": "syncfs", "runtime": "", "step": ""}
    rows = {"flushes": [(c, 4.0)], "flush_seconds": [(c, 2.0)],
            "own_bytes": [(c, float(MiB))],
            "pair_bytes": [(pair, 9.0 * MiB)], "pair_seconds": [(pair, 1.5)],
            "pair_flushes": [(pair, 4.0)],
            "dirtied": [({"container": victim, "device": "8:1", "runtime": "docker"}, 9.0 * MiB)],
            **(rows_extra or {})}
    return NodeFigures(name, rows)


def figures(nodes) -> FleetFigures:
    return FleetFigures("http://prom:9090", 86400, 1.8e9, "", "node",
                        {n.node: n for n in nodes}, [], [])


def test_counters_give_the_audits_findings():
    wb = {"wb_errors": [({"container": "db", "device": "8:1", "errno": "EIO"}, 3.0)]}
    figs = figures([node("a", "syncer", "batch", wb), node("b", "syncer", "batch")])
    rep = build_fleet_report(figs)
    jsonschema.Draft202012Validator(SCHEMA).validate(rep)
    a = rep["node_reports"]["a"]
    s = next(s for s in a["stall_by_container"] if s["name"] == "syncer")
    assert (s["syncfs_calls"], s["own_bytes_flushed"], s["others_bytes_flushed"],
            s["waited_on_others_seconds"]) == (4, MiB, 9 * MiB, 1.5)
    ids = {(f["id"], tuple(f["workloads"]), tuple(f["nodes"])) for f in rep["findings"]}
    assert ("syncfs-flushes-others", ("syncer",), ("a", "b")) in ids
    assert ("dirty-data-stalls-others", ("batch",), ("a", "b")) in ids
    assert ("silent-data-loss", ("db",), ("a",)) in ids      # errors, never handed one
    assert ("shares-upper-with-errors", ("batch",), ("a",)) in ids
    code, why = fleet_gates(rep, {"silent-loss": True, "leak": True})
    assert code == 8 and why == ["silent-loss: db on a lost data and was never told"]
    assert [(w["workload"], w["nodes"], w["waited_on_others_seconds"])
            for w in rep["worst_callers"]] == [("syncer", ["a", "b"], 3.0)]


def test_an_error_handed_back_is_not_a_silent_loss():
    figs = figures([node("a", "s", "v", {
        "wb_errors": [({"container": "db", "device": "8:1", "errno": "EIO"}, 3.0)],
        "returned": [({"container": "db"}, 1.0)]})])
    rep = build_fleet_report(figs)
    assert rep["silent_losses"] == []


def test_lifecycle_pairs_become_the_audits_neighbour_finding():
    stop = {"caller_container": "web", "caller_pod": "", "caller_namespace": "", "caller_comm": "",
            "victim_container": "hog", "victim_pod": "", "victim_namespace": "",
            "kind": "umount", "runtime": "containerd", "step": "stop"}
    figs = figures([NodeFigures("a", {"pair_bytes": [(stop, 6.0 * MiB)],
                                      "pair_seconds": [(stop, 1.05)],
                                      "pair_flushes": [(stop, 2.0)]})])
    rep = build_fleet_report(figs)
    f = [f for f in rep["findings"] if f["id"] == "lifecycle-paid-for-neighbour"]
    assert len(f) == 1 and f[0]["evidence"]["events"] == 2
    assert f[0]["evidence"]["bytes"] == 6 * MiB and 'mount_options = ["volatile"]' in f[0]["advice"]
    # a start/stop's unmount is not also an unowned "umount flushed others"
    assert not [f for f in rep["findings"] if f["id"] == "umount-flushed-others"]


def test_hostile_names_are_inert_in_every_format():
    figs = figures([node("n\x1b]0;owned\x07", EVIL, EVIL + "2")])
    rep = build_fleet_report(figs)
    table = render_fleet(rep, "table")
    assert "\x1b" not in table and "\x07" not in table and "\\x1b" in table
    assert all(len(l) <= 80 for l in table.splitlines()), table
    md = render_fleet(rep, "markdown")
    assert "\x1b" not in md and "<script>" not in md and "\\|" in md and "\\[a\\]" in md
    page = render_fleet(rep, "html")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    data = page.split('id="ovltrace-fleet">')[1].split("</script>")[0]
    assert json.loads(data)["pairs"][0]["caller"] == EVIL       # the data keeps the raw name
    assert json.loads(render_fleet(rep, "json"))["pairs"][0]["caller"] == EVIL


def test_span():
    assert [span(s) for s in (41, 90, 2700, 86400, 7 * 86400, 1.5)] == \
        ["41s", "90s", "45m", "1d", "7d", "1.5s"]
