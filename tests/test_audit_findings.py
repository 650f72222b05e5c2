"""Findings and stall accounting on hand-made models (no BPF): each
finding appears when its numbers say so, and not otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from ovltrace.model import Counters, Flush, Model, OverlayMeta, Victim, WbError
from ovltrace.report import render
from ovltrace.report.build import build_report
from ovltrace.report.gates import check_gates, parse_fail_on

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "ovltrace/schema/audit-v2.json")
                    .read_text())
MiB = 1 << 20


def model(volatile_b: bool = False) -> Model:
    m = Model(0.0)
    for key, name in (("o1.1", "a"), ("o2.1", "b")):
        m.add(OverlayMeta(key=key, kind="overlay", mountpoint=f"/srv/{name}/merged", upper_dev="7:9",
                          upperdir=f"/srv/up/{name}/diff", workdir=f"/srv/up/{name}/work",
                          options=("volatile",) if volatile_b and name == "b" else (),
                          fstype="ext4", dev=f"0:{40 + int(key[1])}"))
    m.counters(1.0, {"o1.1": Counters(),
                     "o2.1": Counters(bytes_dirtied=64 * MiB, bytes_written_back=64 * MiB)})
    return m


def test_quiet_model_has_no_findings_and_validates():
    rep = build_report(model().snapshot())
    assert rep["findings"] == []
    jsonschema.Draft202012Validator(SCHEMA).validate(rep)
    assert rep["cgroup_accounting"]["available"] is False


def test_stall_is_split_by_bytes():
    m = model()
    # a's syncfs took 1s: 3 MiB of b's data, 1 MiB of its own
    m.flush(Flush("syncfs", 10, 10, "app", 2.0, 1.0, 0, "o1.1", "7:9",
                  [Victim("o2.1", 3 * MiB), Victim("o1.1", 1 * MiB)]))
    rep = build_report(m.snapshot())
    s = {x["name"]: x for x in rep["stall_by_container"]}
    assert s["a"]["waited_on_others_seconds"] == 0.75
    assert s["b"]["made_others_wait_seconds"] == 0.75
    cell = {(c["caller"], c["victim"]): c for c in rep["interference"]}[("a", "b")]
    assert cell["bytes"] == 3 * MiB and cell["stall_seconds"] == 0.75
    # one call is not "a loop"
    assert "syncfs-flushes-others" not in {f["id"] for f in rep["findings"]}
    assert "dirty-data-stalls-others" in {f["id"] for f in rep["findings"]}


def test_syncfs_loop_needs_mostly_others_data():
    m = model()
    for i in range(5):
        m.flush(Flush("syncfs", 10, 10, "app", 2.0 + i, 0.01, 0, "o1.1", "7:9",
                      [Victim("o1.1", 4 * MiB), Victim("o2.1", 1 * MiB)]))
    assert "syncfs-flushes-others" not in {f["id"] for f in build_report(m.snapshot())["findings"]}
    for i in range(5):
        m.flush(Flush("syncfs", 10, 10, "app", 8.0 + i, 0.01, 0, "o1.1", "7:9",
                      [Victim("o2.1", 8 * MiB)]))
    f = {f["id"]: f for f in build_report(m.snapshot())["findings"]}["syncfs-flushes-others"]
    assert f["containers"] == ["a"] and f["evidence"]["syncfs_calls"] == 10
    assert "volatile" in f["advice"]


def test_umount_and_volatile_errors():
    m = model(volatile_b=True)
    m.flush(Flush("umount", 20, 20, "umount", 3.0, 2.0, 0, "o1.1", "7:9", [Victim("o2.1", 5 * MiB)]))
    m.wb_error(WbError(3.5, "o2.1", 1234, 5))
    rep = build_report(m.snapshot())
    ids = {f["id"] for f in rep["findings"]}
    assert {"umount-flushed-others", "volatile-errors", "silent-data-loss",
            "shares-upper-with-errors"} <= ids
    # without inode paths (none recorded) the inode is still listed
    assert rep["errors_by_container"][0]["inodes"] == [
        {"ino": 1234, "errors": 1, "errno": 5, "path": None}]
    assert rep["findings"][0]["severity"] == "critical"
    jsonschema.Draft202012Validator(SCHEMA).validate(rep)
    assert check_gates(rep, parse_fail_on("silent-loss,stall>1s"))[0] == 8 + 16
    assert check_gates(rep, parse_fail_on("leak,stall>5s"))[0] == 0


def test_render_formats():
    rep = build_report(model().snapshot())
    text = render(rep, "table")
    assert "Per container" in text and "b" in text
    assert json.loads(render(rep, "json"))["version"] == 2
