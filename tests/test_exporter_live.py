"""The real exporter, scraped by a real Prometheus (Debian's package) while
the demo workload runs: every dashboard panel and every alert rule, queried
through Prometheus' HTTP API, must return data, with the expected sign."""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Trace, free_port
from exporter_helpers import (RULES, dashboard_exprs, get, metric_names, query, rule_exprs,
                              start_prometheus, template_selectors, wait_for)

pytestmark = pytest.mark.live


def query_exporter(port: int, name: str) -> float:
    """Sum of one family's samples, straight from the exporter."""
    text = get(f"http://127.0.0.1:{port}/metrics").decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


@pytest.fixture(scope="module")
def stack():
    from ovltrace import demo, workloads
    setup = demo.build(5, inject_errors=True)
    exp_port, prom_port = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix="ovltrace-prom-")
    trace = prom = None
    try:
        args = ["exporter", "--web.listen-address", f"127.0.0.1:{exp_port}", "--bpf-stats"]
        for mp in setup.mountpoints:
            args += ["--overlay", mp]
        trace = Trace(args)
        trace.wait_attached(120)
        cfg = Path(tmp.name) / "prometheus.yml"
        cfg.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{RULES}]
scrape_configs:
  - job_name: ovltrace
    static_configs: [{{targets: ["127.0.0.1:{exp_port}"]}}]
""")
        prom, url = start_prometheus(cfg, f"{tmp.name}/data", prom_port)
        # Prometheus scrapes before the workload starts, so every rate and
        # increase the dashboards show covers the workload
        wait_for(lambda: query(url, 'up{job="ovltrace"} == 1'), 60, "the first scrape")
        # the demo mix first (the syncer stalls on the bulk writer's data),
        # the error writer later: once it fills the upper fs, ext4 turns
        # read-only and the others stop
        mix = demo.DemoSetup(setup.sandbox, overlays=setup.overlays[:4])
        demo.start_workload(mix, syncfs_interval=0.2)
        wait_for(lambda: query_exporter(exp_port, "ovltrace_flush_others_stall_seconds_total") > 0,
                 60, "the syncer's flushes stalling on others' data")
        # dirty inodes live between the syncer's flushes (0.2 s): let
        # Prometheus see some before the error writer makes ext4 read-only
        wait_for(lambda: query(url, "max_over_time(ovltrace_overlay_dirty_inodes[2m]) > 0"), 120,
                 "a scrape with dirty inodes")
        workloads.error_writer(setup.sandbox, setup.overlays[4], total_mb=400,
                               chunk_kb=64, hole_kb=4)
        # enough scrapes for rates, the copy-up, flushes stalling others,
        # the error writer filling the upper fs, and a leak to the syncer
        # (one wait each, so a failure names what never came)
        for q, what in (("ovltrace_overlay_copy_ups_total > 0", "a copy-up"),
                        ("ovltrace_interference_written_back_bytes_total > 0", "interference"),
                        ("ovltrace_overlay_writeback_errors_total > 0", "a writeback error"),
                        ("ovltrace_error_leaks_total", "an error leak")):
            wait_for(lambda q=q: query(url, q), 90, f"{what} in Prometheus")
        time.sleep(6)          # a few more samples for rate() windows
        yield {"prom": url, "exporter": f"http://127.0.0.1:{exp_port}", "trace": trace}
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        if trace is not None and trace.proc.poll() is None:
            trace.signal()
            rc, _ = trace.finish(60)
            assert rc == 0, trace.stderr
            assert "Traceback" not in trace.stderr, trace.stderr
        setup.sandbox.close()
        tmp.cleanup()


def test_target_up_and_healthy(stack):
    up = query(stack["prom"], 'up{job="ovltrace"}')
    assert up and up[0]["value"][1] == "1"
    assert get(f"{stack['exporter']}/-/healthy") == b"OK\n"


# panels that may rightly read 0 in the demo: failures, drops, the cost of
# the exporter itself, and what only function hooks measure
MAY_BE_ZERO = ("dropped", "failures", "map_full", "slots_exhausted", "metadata_only",
               "copy_up_seconds", "copy_up_duration", "exporter_")


def test_every_dashboard_panel_returns_data(stack):
    empty = [(title, expr) for title, expr in dashboard_exprs() if not query(stack["prom"], expr)]
    assert not empty, f"panels without data: {empty}"
    # data, not just series: at some point of the run (the workload is over
    # by now, so rates read 0 at the end) every panel was above 0, or, for a
    # counter born with its first increment (a pair's first flush, the first
    # errno of a burst: rate() has no earlier sample to see it by), the
    # counters it reads were
    def above_zero(q):
        return any(float(r["value"][1]) > 0 for r in query(stack["prom"], q) if "value" in r)

    zero = [(title, expr) for title, expr in dashboard_exprs()
            if not any(z in expr for z in MAY_BE_ZERO)
            and not above_zero(f"max_over_time(({expr})[10m:1s])")
            and not all(above_zero(f"max_over_time({m}[10m])") for m in metric_names(expr))]
    assert not zero, f"panels whose every value is 0: {zero}"
    for sel in template_selectors():
        assert query(stack["prom"], sel), sel


def test_every_alert_rule_returns_data(stack):
    empty = [(name, expr) for name, expr in rule_exprs() if not query(stack["prom"], expr)]
    assert not empty, f"rules without data: {empty}"
    rules = json.loads(get(f"{stack['prom']}/api/v1/rules"))["data"]["groups"]
    states = {r["name"]: r["health"] for g in rules for r in g["rules"]}
    assert set(states) == {n for n, _ in rule_exprs()}
    assert all(h == "ok" for h in states.values()), states


def test_signs_syncer_is_the_caller_and_others_victims(stack):
    prom = stack["prom"]
    pairs = query(prom, "sum by (caller_container, victim_container) "
                        "(ovltrace_interference_written_back_bytes_total)")
    assert pairs
    assert {p["metric"]["caller_container"] for p in pairs} == {"syncer"}
    victims = {p["metric"]["victim_container"] for p in pairs if float(p["value"][1]) > 0}
    assert "syncer" not in victims and "batch" in victims, pairs
    stall = query(prom, "sum by (container) (ovltrace_flush_others_stall_seconds_total) > 0")
    assert {s["metric"]["container"] for s in stall} == {"syncer"}
    leaks = query(prom, "sum by (victim_container, source_container) (ovltrace_error_leaks_total)")
    assert {l["metric"]["victim_container"] for l in leaks} == {"syncer"}
    sources = {l["metric"]["source_container"] for l in leaks}
    assert sources and "syncer" not in sources, leaks
    lost = query(prom, "ovltrace_overlay_unreported_writeback_errors > 0")
    assert lost and "syncer" not in {l["metric"]["container"] for l in lost}, lost
    top = query(prom, "topk(1, sum by (container) (ovltrace_overlay_dirtied_bytes_total))")
    assert top[0]["metric"]["container"] in ("api", "batch")
    copy = query(prom, "topk(1, sum by (container) (ovltrace_overlay_copy_up_bytes_total))")
    assert copy[0]["metric"]["container"] == "cache"


def test_live_scrape_passes_promtool(stack):
    text = get(f"{stack['exporter']}/metrics")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    assert b"ovltrace_exporter_bpf_program_runs_total" in text
