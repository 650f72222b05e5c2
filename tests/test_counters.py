"""The per-overlay counter list lives once (ovltrace/counters.py); every
other copy is derived from it or checked here: the C struct, the Python
reader, the model, the recording, the audit JSON (and its schema), the
exporter's families, and the enums bpfdefs mirrors."""
from __future__ import annotations

import ctypes
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from ovltrace import bpfdefs
from ovltrace.counters import COUNTER_FIELDS, COUNTERS, Counters, bpf_members
from ovltrace.errors import OvltraceError
from ovltrace.probes import check_stats_layout
from ovltrace.report.build import counter_json
from ovltrace.views.metrics import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
HEADER = (ROOT / "bpf" / "ovltrace.h").read_text()


def header_enums() -> dict[str, int]:
    """NAME -> value for every enum constant and #define number in ovltrace.h."""
    out: dict[str, int] = {}
    for body in re.findall(r"enum\s+\w+\s*\{([^}]*)\}", HEADER):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        nxt = 0
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            name, _, val = item.partition("=")
            nxt = int(val.strip()) if val.strip() else nxt
            out[name.strip()] = nxt
            nxt += 1
    for name, val in re.findall(r"#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)U?\b", HEADER):
        out[name] = int(val, 0)
    return out


def c_struct_members() -> list[tuple[str, int]]:
    """(member, array length or 0) of struct ovl_stats, in order."""
    body = re.search(r"struct ovl_stats\s*\{(.*?)\};", HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    enums = header_enums()
    out = []
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        m = re.fullmatch(r"u64\s+(\w+)(?:\[(\w+)\])?", decl)
        assert m, f"unexpected member declaration {decl!r}"
        n = m.group(2)
        out.append((m.group(1), 0 if n is None else enums.get(n, None) or int(n)))
    return out


def schema_members() -> list[tuple[str, int]]:
    return bpf_members()


def test_c_struct_is_the_schema():
    # read by member name: the C order is free, the set is not
    assert sorted(c_struct_members()) == sorted(schema_members())


def test_model_counters_are_the_schema():
    assert tuple(f.name for f in fields(Counters)) == COUNTER_FIELDS


def test_recording_values_round_trip_in_schema_order():
    c = Counters(*[(i,) * d.length if d.length else i + 1 for i, d in enumerate(COUNTERS)])
    assert Counters.from_values(c.values()) == c
    assert c.values()[COUNTER_FIELDS.index("bytes_dirtied")] == c.bytes_dirtied
    # older recordings (13 fields) still read: the rest is zero
    old = Counters.from_values(list(range(1, 14)))
    assert old.bytes_dirtied == 2 and old.copy_up_ns == 0 and old.copy_up_latency == (0,) * 16


def test_audit_json_and_its_schema_carry_every_counter():
    schema = json.loads((ROOT / "ovltrace" / "schema" / "audit-v2.json").read_text())
    overlay = schema["properties"]["overlays"]["items"]
    keys = set(counter_json(Counters()))
    assert len(keys) == len(COUNTERS)
    assert keys <= set(overlay["properties"]) and keys <= set(overlay["required"])


def test_exporter_serves_every_schema_metric():
    for d in COUNTERS:
        if d.metric:
            assert FAMILIES[d.metric] == ("counter", d.help)
            assert d.metric.endswith(("_total",))
            assert ("_seconds" in d.metric) == (d.scale != 1.0)


def test_a_drifted_c_struct_is_refused_at_start():
    def leaf(members):
        return type("Leaf", (ctypes.Structure,), {"_fields_": [
            (n, ctypes.c_uint64 * k if k else ctypes.c_uint64) for n, k in members]})
    check_stats_layout(leaf(schema_members()))          # the real layout passes
    renamed = [("wb_errors" if n == "writeback_errors" else n, k) for n, k in schema_members()]
    with pytest.raises(OvltraceError, match="disagree"):
        check_stats_layout(leaf(renamed))
    with pytest.raises(OvltraceError, match="disagree"):
        check_stats_layout(leaf(schema_members()[:-1]))


def test_bpfdefs_enums_match_the_header():
    enums = header_enums()
    assert [enums[n] for n in ("DC_PAGES", "DC_SYNC", "DC_DATASYNC", "DC_TIME")] == \
        [bpfdefs.DC_PAGES, bpfdefs.DC_SYNC, bpfdefs.DC_DATASYNC, bpfdefs.DC_TIME]
    assert [enums[n] for n in ("ROLE_NONE", "ROLE_UPPER", "ROLE_WORK", "ROLE_FS")] == \
        [bpfdefs.ROLE_NONE, bpfdefs.ROLE_UPPER, bpfdefs.ROLE_WORK, bpfdefs.ROLE_FS]
    assert {enums[f"FLUSH_{k.upper()}"]: k for k in bpfdefs.FLUSH_KINDS.values()} == \
        bpfdefs.FLUSH_KINDS
    for name in ("EV_FLUSH", "EV_WB_ERROR", "EV_ERR_RETURNED", "EV_FLUSH_DONE", "EV_MOUNT",
                 "CFG_EPOCH", "CFG_FN_COPY_UP", "CFG_SETTLED", "CFG_DIR_CACHE", "ROLE_ORPHAN", "KS_MOUNT_SEQ",
                 "KS_MOUNTS_INFLIGHT", "KS_RENAME_SEQ", "MK_MOUNT", "MK_FS_UPPER", "MK_FS_WORK",
                 "MK_FS_CREATE", "MK_FSMOUNT", "MK_MOVE_MOUNT", "ORPHAN_SLOT"):
        assert enums[name] == getattr(bpfdefs, name), name
    assert {enums[f"RK_{k.upper()}"]: k for k in bpfdefs.RET_KINDS.values()} == bpfdefs.RET_KINDS
    health = [n for n in enums if n.startswith("CNT_") and n != "CNT_NR"]
    assert [enums[n] for n in health] == list(range(len(bpfdefs.HEALTH_COUNTERS)))
    assert enums["COPYUP_LAT_SLOTS"] == COUNTERS[-1].length
