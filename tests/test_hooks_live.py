"""Copy-ups that are known exactly: how many, how many bytes, data or
metadata only.  With ovl_copy_up_flags hooked (fentry or kprobe: the VM run,
tests/vm/run) every figure is exact; on the tracepoint path (this machine)
the workdir estimate's weaker properties are checked, and the test says
which it did.  Where a forced mechanism cannot reach ovl_copy_up_flags for a
documented limit (fentry with overlay a module; 5.10, whose overlay module
has no BTF), the tracepoint stand-in serves copy_up and its checks run."""
from __future__ import annotations

import os

import pytest

from conftest import audit_json, by_mountpoint, report_hook, skip_if_hook_off_by_limit
from ovltrace.hooks import FORCED

pytestmark = pytest.mark.live

KiB, MiB = 1 << 10, 1 << 20
SIZE = {"append": 3 * MiB + 123, "trunc": 2 * MiB + 5, "chmod": 1 * MiB + 7, "meta": 1 * MiB + 9}


def function_hooked(rep: dict, name: str) -> bool:
    """Whether `name` is on a function; asserts the mechanism a required
    mode asks for (or, for a documented limit, the stand-in)."""
    h = report_hook(rep, name)
    mode = os.environ.get("OVLTRACE_HOOKS")
    note = ""
    if h.get("limit"):
        note = f" ({h['limit']})"
    elif h["mechanism"] == "tracepoint":
        note = f" (stand-in; {h['function']} not hookable here: {h.get('tried')})"
    print(f"\n{name}: {h['mechanism'] or 'off'}{note}")
    skip_if_hook_off_by_limit(rep, name)
    if h.get("limit"):
        assert h["mechanism"] == "tracepoint", h             # the documented stand-in
    elif mode == "functions":
        assert h["mechanism"] in ("fentry", "kprobe"), h     # required
    elif mode in FORCED:
        assert h["mechanism"] == FORCED[mode], h             # exactly that one
    return h["mechanism"] in ("fentry", "kprobe")


def test_exact_copy_ups(sandbox):
    for case, size in SIZE.items():
        sandbox.make_lower_file(f"{case}/file", size)
    ovs = {case: sandbox.add_overlay(f"cu-{case}", metacopy=(case == "meta")) for case in SIZE}

    def work():
        with open(f"{ovs['append'].mountpoint}/append/file", "ab") as f:   # data copy-up
            f.write(b"tail")
        fd = os.open(f"{ovs['trunc'].mountpoint}/trunc/file", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)                                                      # copies no data
        os.chmod(f"{ovs['chmod'].mountpoint}/chmod/file", 0o600)         # data (no metacopy)
        os.chmod(f"{ovs['meta'].mountpoint}/meta/file", 0o600)           # metadata only

    args = [a for ov in ovs.values() for a in ("--overlay", ov.mountpoint)]
    rep = audit_json(args, work)
    row = {case: by_mountpoint(rep, ov.mountpoint) for case, ov in ovs.items()}
    # what the kernel did
    assert os.path.getsize(f"{ovs['append'].upperdir}/append/file") == SIZE["append"] + 4
    assert os.path.getsize(f"{ovs['trunc'].upperdir}/trunc/file") == 0

    if function_hooked(rep, "copy_up"):
        assert row["append"]["copy_ups"] == 1
        assert row["append"]["copy_up_bytes"] == SIZE["append"]
        assert row["trunc"]["copy_ups"] == 1
        assert row["trunc"]["copy_up_bytes"] == 0
        assert row["chmod"]["copy_ups"] == 1
        assert row["chmod"]["copy_up_bytes"] == SIZE["chmod"]
        assert row["meta"]["copy_ups"] == 1
        assert row["meta"]["copy_up_bytes"] == 0
        # the function hook's own counters, now in the model (and recordings)
        assert row["meta"]["copy_ups_metadata_only"] == 1
        hot = {h["name"]: h for h in rep["copy_up_hotspots"]}
        for case in ("append", "trunc", "chmod"):
            d = row[case]
            assert d["copy_ups_metadata_only"] == 0 and d["copy_up_failures"] == 0
            assert sum(d["copy_up_latency"]) == 1
            assert d["copy_up_seconds"] > 0
        assert sum(hot[by_mountpoint(rep, ovs["append"].mountpoint)["name"]]
                   ["latency_log2_us"]) == 1
    else:
        # the estimate: temp files in workdir and the bytes dirtied there
        for case in ("append", "chmod"):
            assert row[case]["copy_ups"] == 1, case
            # bytes of the folios dirtied in the temp file: the file's size,
            # its last folio rounded up (a large folio is at most 2 MiB here)
            assert SIZE[case] <= row[case]["copy_up_bytes"] < SIZE[case] + (2 << 20), case
        for case in ("trunc", "meta"):
            # no data copied; the estimate sees the (empty) temp file in
            # workdir only if the kernel dirtied it, so 0 or 1
            assert row[case]["copy_ups"] in (0, 1), case
            assert row[case]["copy_up_bytes"] < SIZE[case], case
        for case in ovs:                                              # function hooks only
            assert row[case]["copy_ups_metadata_only"] == 0
            assert sum(row[case]["copy_up_latency"]) == 0
