"""The fleet report, live: three exporters stand in for three nodes (each
on its own upper filesystem, limited to its own overlays with --overlay),
a real Prometheus scrapes them with a `node` label, and `ovltrace audit
--prometheus` must name the right workloads on the right nodes with the
bytes the workloads wrote; a recording of node n1 made beside it must give
the same findings."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT, Trace, free_port, write_file
from exporter_helpers import query, start_prometheus, wait_for
from ovltrace.report.fleet import NOT_FROM_COUNTERS
from ovltrace.sandbox import Sandbox
from ovltrace.workloads import error_leak_scenario, syncfs

pytestmark = pytest.mark.live

MiB = 1 << 20
ROUNDS = 3                                    # syncfs calls: a "loop" is 3 or more
PER_ROUND = {"batch": 4 * MiB, "cache": 1 * MiB}
B_WROTE = 8 * MiB                             # error_leak_scenario's default total_mb


def fleet(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--prometheus", url,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def scraped_after(url: str, node: str, t: float) -> bool:
    """Prometheus holds a scrape of `node` taken after t (so it saw
    everything the exporter had sampled by then)."""
    r = query(url, f'timestamp(ovltrace_exporter_series_dropped_total{{node="{node}"}})')
    return bool(r) and float(r[0]["value"][1]) > t


@pytest.fixture(scope="module")
def fleet_run():
    tmp = tempfile.TemporaryDirectory(prefix="ovltrace-fleet-")
    ports = {n: free_port() for n in ("n1", "n2", "n3")}
    exporters: dict[str, Trace] = {}
    sandboxes: list[Sandbox] = []
    prom = record = None
    wb = Path("/proc/sys/vm/dirty_writeback_centisecs")
    old_wb = wb.read_text().strip()
    wb.write_text("0")                        # the syncer's flushes write the data back, no one else
    try:
        n1 = Sandbox(size_mb=256)
        sandboxes.append(n1)
        n2 = Sandbox(size_mb=128)
        sandboxes.append(n2)
        ov1 = {n: n1.add_overlay(n) for n in ("syncer", "batch", "cache")}
        ov2 = {n: n2.add_overlay(n) for n in ("web", "worker")}

        def exporter(node: str, mountpoints: list[str]) -> Trace:
            t = Trace(["exporter", "--web.listen-address", f"127.0.0.1:{ports[node]}"]
                      + [a for m in mountpoints for a in ("--overlay", m)])
            exporters[node] = t
            t.wait_attached(120)
            return t

        exporter("n1", [o.mountpoint for o in ov1.values()])
        exporter("n2", [o.mountpoint for o in ov2.values()])
        rec = str(Path(tmp.name) / "n1.jsonl.gz")
        record = Trace(["record", "-o", rec] + [a for o in ov1.values()
                                                for a in ("--overlay", o.mountpoint)])
        record.wait_attached(120)

        cfg = Path(tmp.name) / "prometheus.yml"
        targets = "\n".join(
            f'      - {{targets: ["127.0.0.1:{p}"], labels: {{node: {n}}}}}' for n, p in ports.items())
        cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: ovltrace\n"
                       f"    static_configs:\n{targets}\n")
        prom, url = start_prometheus(cfg, f"{tmp.name}/data", free_port())
        t_start = time.time()
        wait_for(lambda: len(query(url, 'up{job="ovltrace"} == 1')) == 2, 60, "n1, n2 scraped")

        # n1: the syncer flushes its neighbours' data, three times
        for i in range(ROUNDS):
            for name, size in PER_ROUND.items():
                write_file(f"{ov1[name].mountpoint}/data{i}", size)
            assert syncfs(ov1["syncer"].mountpoint) == 0
        # n2: each writes its own and fsyncs it: nobody pays for anybody
        for name in ov2:
            write_file(f"{ov2[name].mountpoint}/own", 2 * MiB)
            subprocess.run(["sync", "-d", f"{ov2[name].mountpoint}/own"], check=True)

        # n3: B loses data at writeback, A's syncfs is handed the error;
        # the window ends before B's fsync, so B was never told
        state: dict = {}

        def start_n3(sb, a, b):
            exporter("n3", [a.mountpoint, b.mountpoint])
            wait_for(lambda: len(query(url, 'up{job="ovltrace"} == 1')) == 3, 60, "n3 scraped")

        def before_fsync():
            t = time.time()
            wait_for(lambda: scraped_after(url, "n3", t + 1.0), 30, "a scrape of n3 after A's syncfs")
            state["end_before_fsync"] = time.time()

        res = error_leak_scenario(before_writes=start_n3, before_fsync=before_fsync)
        t_done = time.time()
        for node in ports:
            wait_for(lambda node=node: scraped_after(url, node, t_done + 1.0), 30,
                     f"a scrape of {node} after the workloads")
        end = time.time()
        record.signal(signal.SIGINT)
        rc, _ = record.finish()
        assert rc == 0, record.stderr
        yield {"url": url, "range": f"{int(end - t_start) + 30}s", "end": end,
               "end_before_fsync": state["end_before_fsync"], "leak": res, "recording": rec,
               "tmp": tmp.name, "ov1": ov1}
    finally:
        wb.write_text(old_wb)
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        for t in [*exporters.values(), record]:
            if t is not None and t.proc.poll() is None:
                t.signal()
                t.finish(60)
        for t in exporters.values():
            assert "Traceback" not in t.stderr, t.stderr
        for sb in sandboxes:
            sb.close()
        tmp.cleanup()


def report(run: dict, *args: str, end: float | None = None) -> dict:
    r = fleet(run["url"], "--range", run["range"], "--end", f"{end or run['end']:.3f}",
              "--format", "json", *args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def local_report(run: dict) -> dict:
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--from",
                        run["recording"], "--format", "json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_report_names_the_right_workloads_on_the_right_nodes(fleet_run):
    rep = report(fleet_run, end=fleet_run["end_before_fsync"])
    jsonschema.Draft202012Validator(
        json.loads((ROOT / "ovltrace/schema/fleet-v1.json").read_text())).validate(rep)
    assert sorted(n["node"] for n in rep["nodes"]) == ["n1", "n2", "n3"]
    n1 = rep["node_reports"]["n1"]
    # the bytes each workload wrote, no more, no less
    pairs = {(p["node"], p["caller"], p["victim"]): (p["bytes"], p["flushes"]) for p in rep["pairs"]}
    # (n3: A's syncfs wrote back -- tried to -- all 8 MiB B wrote, and failed)
    assert pairs == {**{("n1", "syncer", v): (ROUNDS * size, ROUNDS)
                        for v, size in PER_ROUND.items()},
                     ("n3", "A", "B"): (B_WROTE, 1)}, rep["pairs"]
    syncer = next(s for s in n1["stall_by_container"] if s["name"] == "syncer")
    assert (syncer["syncfs_calls"], syncer["own_bytes_flushed"], syncer["others_bytes_flushed"]) \
        == (ROUNDS, 0, ROUNDS * sum(PER_ROUND.values()))
    callers = {w["workload"]: w["nodes"] for w in rep["worst_callers"]}
    assert callers == {"syncer": ["n1"], "A": ["n3"]}
    victims = {w["workload"]: (w["nodes"], w["bytes_flushed_by_others"]) for w in rep["worst_victims"]}
    assert victims == {**{v: (["n1"], ROUNDS * size) for v, size in PER_ROUND.items()},
                       "B": (["n3"], B_WROTE)}
    # n3: A was handed B's error; B lost data and (as of this window) was never told
    leak = fleet_run["leak"]
    assert leak.a_syncfs in (-5, -28), leak
    assert [(l["node"], l["victim"], l["source"], -l["errno"], l["count"])
            for l in rep["leaks"]] == [("n3", "A", "B", leak.a_syncfs, 1)]
    assert [(l["node"], l["name"]) for l in rep["silent_losses"]] == [("n3", "B")]
    # n2 wrote and fsynced its own data: nothing to find there
    assert [n for n in rep["nodes"] if n["node"] == "n2"][0]["findings"] == 0
    found = {(f["id"], tuple(f["workloads"]), tuple(f["nodes"])) for f in rep["findings"]}
    assert ("syncfs-flushes-others", ("syncer",), ("n1",)) in found
    assert ("error-leak", ("A", "B"), ("n3",)) in found
    assert ("silent-data-loss", ("B",), ("n3",)) in found
    assert all(f["nodes"] != ["n2"] for f in rep["findings"])


def test_a_later_window_sees_that_b_was_told(fleet_run):
    rep = report(fleet_run)
    assert rep["silent_losses"] == []                  # B's fsync returned the error
    assert [(l["node"], l["victim"], l["source"]) for l in rep["leaks"]] == [("n3", "A", "B")]


def test_prometheus_and_a_local_recording_agree(fleet_run):
    """The same findings engine on two sources: n1's recording (every
    event) and Prometheus (counters, to the scrape)."""
    rep = report(fleet_run)
    local = local_report(fleet_run)
    local["findings"] = [f for f in local["findings"] if f["id"] not in NOT_FROM_COUNTERS]
    remote = rep["node_reports"]["n1"]

    def key(f):
        return (f["id"], tuple(sorted(f["containers"])))
    assert sorted(map(key, remote["findings"])) == sorted(map(key, local["findings"]))
    for f in local["findings"]:
        g = next(g for g in remote["findings"] if key(g) == key(f))
        for k, v in f["evidence"].items():
            if isinstance(v, float):       # seconds: the exporter sums what the audit sums
                assert g["evidence"][k] == pytest.approx(v, abs=1e-3), (f["id"], k)
            else:
                assert g["evidence"][k] == v, (f["id"], k)
    lp = {(p["caller"], p["victim"]): (p["bytes"], p["flushes"]) for p in local["interference"]}
    rp = {(p["caller"], p["victim"]): (p["bytes"], p["flushes"]) for p in remote["interference"]}
    assert lp == rp


def test_gates_and_formats(fleet_run):
    base = ["--range", fleet_run["range"], "--end", f"{fleet_run['end_before_fsync']:.3f}"]
    r = fleet(fleet_run["url"], *base, "--fail-on", "leak,silent-loss")
    assert r.returncode == 4 | 8, r.stderr
    assert "fail-on leak: 1 error(s) handed to a container that did not cause them, on n3" in r.stderr
    assert "fail-on silent-loss: B on n3 lost data and was never told" in r.stderr
    table = r.stdout
    assert [l for l in table.splitlines() if len(l) > 80] == [], table
    assert "syncer" in table and "n1" in table
    # the stall gate: the syncer's flushes are milliseconds long
    r = fleet(fleet_run["url"], *base, "--fail-on", "stall>30s")
    assert r.returncode == 0, r.stderr
    # ... and at 1 ms: counted above the histogram edge under the bound
    # (2^-10 s), checked against the flushes n1's recording timed one by one
    local = local_report(fleet_run)
    over = sum(1 for f in local["flushes"] if f["caller"] == "syncer"
               and f["duration_seconds"] > 2 ** -10)
    r = fleet(fleet_run["url"], *base, "--selector", '{node="n1"}', "--fail-on", "stall>1ms")
    if over:
        assert r.returncode == 16, r.stderr
        assert (f"stall: {over} flush(es) over 1.0ms by callers that wrote back other "
                f"containers' data (most: syncer on n1, {over})") in r.stderr
    else:
        assert r.returncode == 0, r.stderr
    md = fleet(fleet_run["url"], *base, "--format", "markdown").stdout
    assert "| n1 " in md and "# ovltrace fleet audit" in md
    page = fleet(fleet_run["url"], *base, "--format", "html").stdout
    assert page.startswith("<!doctype html>") and 'id="ovltrace-fleet"' in page
    # a selector narrows every query
    only = report(fleet_run, "--selector", '{node="n2"}')
    assert [n["node"] for n in only["nodes"]] == ["n2"] and only["pairs"] == []


def test_bad_input_is_one_line(fleet_run):
    url = fleet_run["url"]
    cases = [
        (["--range", "1h", "--selector", '{node="nowhere"}'], 1,
         "no ovltrace series in"),
        (["--selector", "{node=~\"(\"}"], 1, "parse error: error parsing regexp"),
        (["--bearer-token-file", "/nonexistent"], 1, "cannot read /nonexistent"),
    ]
    for args, code, text in cases:
        r = fleet(url, *args)
        assert r.returncode == code, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = fleet("http://127.0.0.1:1")
    assert r.returncode == 1 and r.stderr.strip() == (
        "ovltrace: error: cannot reach Prometheus at http://127.0.0.1:1: Connection refused")
