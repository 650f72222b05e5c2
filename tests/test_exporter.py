"""The exporter's collector on hand-built models (no BPF), its HTTP server
under concurrent scrapes, the dashboards' and rules' expressions, and the
CLI's one-line errors."""
from __future__ import annotations

import re
import socket
import subprocess
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import OVLTRACE, ROOT
from exporter_helpers import RULES, dashboard_exprs, metric_names, rule_exprs, template_selectors
from ovltrace.model import (Container, Counters, ErrorReturned, Flush, Model, OverlayMeta,
                            Victim, WbError)
from ovltrace.commands.exporter import make_server, parse_listen_address, web_app
from ovltrace.views.exporter import ExporterConfig, OverlayCollector
from ovltrace.views.exposition import render
from ovltrace.views.metrics import served_names


def names(m: Model, n: int, dev: str = "7:1"):
    m.add(OverlayMeta(f"fs.{dev}", "upperfs", "/srv/upper", dev, fstype="ext4"))
    for i in range(n):
        c = Container("docker", f"{i:064x}", f"c{i:04d}", f"pod{i}", "prod")
        m.add(OverlayMeta(f"o{i}", "overlay", f"/var/lib/docker/overlay2/{i}/merged", dev,
                          container=c))


def scrape(collector) -> dict[tuple, float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    text = render(reg).decode()         # what the exporter serves
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out, text


def collector(m: Model, **cfg) -> OverlayCollector:
    return OverlayCollector(lambda: m, config=ExporterConfig(**cfg))


def value(samples, name, **labels):
    hits = [v for (n, ls), v in samples.items()
            if n == name and all(dict(ls).get(k) == v2 for k, v2 in labels.items())]
    assert hits, f"no {name} {labels}"
    return sum(hits)


def promtool_metrics(text: str) -> None:
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


# ---- the text format ---------------------------------------------------------------

def test_exposition_is_prometheus_clients_byte_for_byte():
    """views/exposition.py writes what generate_latest writes (it skips
    only the label-name checks), hostile label values included."""
    m = demo_like_model()
    m.add(OverlayMeta("evil", "overlay", '/x/"quoted"\\back\nline', "7:1",
                      container=Container("docker", "e" * 64, 'a"b\\c\nd{e}=f,g')))
    m.counters(2.0, {"evil": Counters(bytes_dirtied=1 << 40, writeback_errors=1)})
    m.flush(Flush("umount", 12, 12, "dockerd", 2.5, 1e-7, 0, "evil", "7:1", [Victim("o2", 1)]))
    texts = []
    for gen in (generate_latest, render):
        reg = CollectorRegistry(auto_describe=False)
        reg.register(OverlayCollector(lambda: m, config=ExporterConfig(), clock=lambda: 50.0,
                                      wallclock=lambda: 1.8e9))
        texts.append(gen(reg))
    # older prometheus_client releases (Debian 12's 0.16) pad exponents to
    # three digits ("e+012"); Go, Prometheus and newer clients write "e+12"
    texts[0] = re.sub(rb"e\+0(\d\d)\b", rb"e+\1", texts[0])
    assert texts[0] == texts[1]
    assert b'\\"' in texts[1]          # a quote in a label value, escaped


# ---- values and labels ----------------------------------------------------------

def demo_like_model() -> Model:
    m = Model()
    names(m, 3)
    m.counters(1.0, {"o0": Counters(bytes_dirtied=4096, inodes_dirtied=1),
                     "o1": Counters(bytes_dirtied=8192, copy_ups=1, copy_up_bytes=1 << 20),
                     "o2": Counters(bytes_dirtied=1 << 27, bytes_written_back=1 << 27,
                                    writeback_errors=2)},
               {"o0": 2})
    m.wb_error(WbError(1.0, "o2", 12, 5))
    m.wb_error(WbError(1.1, "o2", 13, 28))
    # o0 (the syncer) flushes o2's data and gets o2's EIO
    m.flush(Flush("syncfs", 10, 10, "syncfs-nbr", 1.5, 0.25, -5, "o0", "7:1",
                  [Victim("o2", 1 << 27), Victim("o0", 4096)]))
    m.flush(Flush("sync", 11, 11, "sync", 2.0, 0.001, 0, None, None, [Victim("o1", 4096)]))
    return m


def test_values_labels_and_promtool():
    s, text = scrape(collector(demo_like_model()))
    promtool_metrics(text)
    assert value(s, "ovltrace_overlay_dirtied_bytes_total", container="c0002") == 1 << 27
    assert value(s, "ovltrace_overlay_copy_up_bytes_total", container="c0001") == 1 << 20
    assert value(s, "ovltrace_overlay_dirty_inodes", container="c0000") == 2
    one = [ls for (n, ls) in s if n == "ovltrace_overlay_dirtied_bytes_total"][0]
    assert {k for k, _ in one} == {"container", "container_id", "pod", "namespace", "runtime",
                                   "mountpoint", "device"}
    assert value(s, "ovltrace_overlay_writeback_errors_total", container="c0002", errno="EIO") == 1
    assert value(s, "ovltrace_overlay_writeback_errors_total", container="c0002", errno="ENOSPC") == 1
    # the caller/victim matrix: syncer -> c0002, its own data left out
    assert value(s, "ovltrace_interference_written_back_bytes_total",
                 caller_container="c0000", victim_container="c0002") == 1 << 27
    assert not [1 for (n, ls) in s if n.startswith("ovltrace_interference")
                and dict(ls)["victim_container"] == "c0000"]
    # stall is a share: 0.25 s split by bytes, o0's own 4 KiB take theirs
    share = 0.25 * (1 << 27) / ((1 << 27) + 4096)
    assert value(s, "ovltrace_flush_others_stall_seconds_total", container="c0000") == share
    assert value(s, "ovltrace_interference_stall_seconds_total",
                 caller_container="c0000", victim_container="c0002") == share
    assert value(s, "ovltrace_flush_duration_seconds_count", container="c0000", kind="syncfs") == 1
    # the host's sync: no container, told apart by comm
    assert value(s, "ovltrace_flush_duration_seconds_count", comm="sync", kind="sync") == 1
    assert value(s, "ovltrace_error_leaks_total", victim_container="c0000",
                 source_container="c0002", errno="EIO") == 1
    assert value(s, "ovltrace_flush_errors_total", container="c0000", errno="EIO") == 1
    assert value(s, "ovltrace_overlay_unreported_writeback_errors", container="c0002") == 2
    assert value(s, "ovltrace_overlay_unreported_writeback_errors", container="c0000") == 0
    assert value(s, "ovltrace_upperfs_dirtied_bytes_total", scope="overlays") == 4096 + 8192 + (1 << 27)
    # 0.25 s falls in the (2^-3, 2^-2] bucket
    assert value(s, "ovltrace_flush_duration_seconds_bucket", container="c0000", le="0.125") == 0
    assert value(s, "ovltrace_flush_duration_seconds_bucket", container="c0000", le="0.25") == 1


def test_error_returned_clears_unreported_and_no_leak_for_own_errors():
    m = demo_like_model()
    c = collector(m)
    scrape(c)
    m.error_returned(ErrorReturned(3.0, "o2", "fsync", 5, 99, "app"))
    s, _ = scrape(c)
    assert value(s, "ovltrace_overlay_unreported_writeback_errors", container="c0002") == 0
    assert value(s, "ovltrace_overlay_errors_returned_total", container="c0002", call="fsync") == 1
    assert value(s, "ovltrace_error_leaks_total") == 1      # o2's own error is no leak


def test_flushes_counted_once_when_the_model_trims_and_prunes():
    m = Model()
    names(m, 2)
    m.max_records = 40                 # trims the oldest 3/4 past 40
    c = collector(m)
    n = 0
    for step in range(1, 30):
        for _ in range(7):
            n += 1
            m.flush(Flush("syncfs", 1, 1, "s", step + n / 1000, 0.001, 0, "o0", "7:1",
                          [Victim("o1", 1)]))
        if step % 10 == 0:
            m.prune(step - 2.0)
        s, _ = scrape(c)
        assert value(s, "ovltrace_flush_duration_seconds_count", container="c0000") == n


def test_the_sole_reader_releases_what_it_consumed():
    """The exporter command's collector is the model's only reader: each
    scrape drops the records it consumed (memory: one scrape interval of
    flushes, not two minutes), and no flush is lost or counted twice."""
    m = Model()
    names(m, 2)
    c = OverlayCollector(lambda: m, config=ExporterConfig(), sole_reader=True)
    n = 0
    for step in range(1, 6):
        for _ in range(step):
            n += 1
            m.flush(Flush("syncfs", 1, 1, "s", step + n / 1000, 0.001, 0, "o0", "7:1",
                          [Victim("o1", 4096)]))
        assert len(m._records["flushes"]) == step          # new since the last scrape
        s, _ = scrape(c)
        assert m._records["flushes"] == []
        assert value(s, "ovltrace_flush_duration_seconds_count", container="c0000") == n
        assert value(s, "ovltrace_flush_others_written_back_bytes_total",
                     container="c0000") == n * 4096
    # a collector that is not the only reader leaves them to the retention
    kept = Model()
    names(kept, 2)
    kept.flush(Flush("syncfs", 1, 1, "s", 1.0, 0.001, 0, "o0", "7:1", [Victim("o1", 1)]))
    scrape(collector(kept))
    assert len(kept._records["flushes"]) == 1


def test_labels_flag_drops_labels_and_merges():
    s, text = scrape(collector(demo_like_model(), labels=("pod",)))
    promtool_metrics(text)
    one = [ls for (n, ls) in s if n == "ovltrace_overlay_dirtied_bytes_total"][0]
    assert {k for k, _ in one} == {"container", "pod", "device"}
    with pytest.raises(ValueError):
        ExporterConfig(labels=("image",))


# ---- monotonic counters, folding, expiry ------------------------------------------

def test_counters_never_go_backwards_through_ranking_and_expiry():
    m = Model()
    names(m, 6)
    c = collector(m, top_n=2, rank_interval=1.0, gone_ttl=5.0)
    prev: dict = {}
    totals = {f"o{i}": Counters() for i in range(6)}
    gone_key_seen_after_expiry = False
    for step in range(1, 40):
        t = float(step)
        busy = (step // 5) % 6          # a different overlay is busiest every 5 steps
        for k in totals:
            if k == "o5" and step > 20:
                continue
            add = 1 << 20 if k == f"o{busy}" else 4096
            totals[k] = totals[k] + Counters(bytes_dirtied=add, bytes_written_back=add // 2)
        m.counters(t, {k: v for k, v in totals.items() if not (k == "o5" and step > 20)})
        if step == 20:
            m.gone("o5", t)
        if step % 3 == 0:
            m.flush(Flush("syncfs", 1, 1, "s", t, 0.01, 0, f"o{step % 6}", "7:1",
                          [Victim(f"o{(step + 1) % 6}", 4096)]))
        s, text = scrape(c)
        for key, v in s.items():
            name = key[0]
            if (name.endswith("_total") or name.endswith("_count") or name.endswith("_bucket")) \
                    and key in prev:
                assert v >= prev[key], (step, key, prev[key], v)
        prev = s
        own = value(s, "ovltrace_exporter_overlays", export="own")
        assert own <= 2
        if step > 27 and any(dict(ls).get("container") == "c0005" for (_n, ls) in s):
            gone_key_seen_after_expiry = True
    promtool_metrics(text)
    assert not gone_key_seen_after_expiry
    assert value(s, "ovltrace_overlay_dirtied_bytes_total", container="other") > 0
    # nothing lost in the per-device totals, gone overlays included
    assert value(s, "ovltrace_upperfs_dirtied_bytes_total", scope="overlays") == sum(
        v.bytes_dirtied for v in totals.values())


def test_thousand_overlays_bounded():
    m = Model()
    names(m, 1000)
    m.counters(1.0, {f"o{i}": Counters(bytes_dirtied=4096 * (i + 1)) for i in range(1000)})
    for i in range(200):   # many callers and victims: the pair cap holds
        m.flush(Flush("syncfs", i, i, "s", 1.0, 0.01, 0, f"o{i}", "7:1",
                      [Victim(f"o{(i * 7 + j) % 1000}", 4096) for j in range(1, 20)]))
    c = collector(m, top_n=50, pair_limit=300, rank_interval=0.0)
    s, text = scrape(c)
    m.counters(2.0, {f"o{i}": Counters(bytes_dirtied=4096 * (i + 1) * 2) for i in range(1000)})
    s, text = scrape(c)          # re-ranked: the busiest 50 own their series
    promtool_metrics(text)
    per_overlay = {dict(ls)["container"] for (n, ls) in s if n == "ovltrace_overlay_dirtied_bytes_total"}
    assert len(per_overlay) == 51 and "other" in per_overlay
    assert "c0999" in per_overlay and "c0000" not in per_overlay
    pairs = {ls for (n, ls) in s if n == "ovltrace_interference_written_back_bytes_total"}
    assert len(pairs) <= 300 + 51
    assert len(s) < 20000
    assert value(s, "ovltrace_exporter_overlays", export="other") == 950


def test_hard_series_limit():
    m = Model()
    names(m, 300)
    m.counters(1.0, {f"o{i}": Counters(bytes_dirtied=i + 1) for i in range(300)})
    s, text = scrape(collector(m, top_n=300, series_limit=500))
    promtool_metrics(text)
    user = [k for k in s if not k[0].startswith("ovltrace_exporter_")]
    assert len(user) <= 500
    assert value(s, "ovltrace_exporter_series_dropped_total") > 0


# ---- HTTP: concurrent scrapes stay consistent ----------------------------------------

def test_concurrent_scrapes_consistent():
    m = Model()
    names(m, 50)
    lock = threading.RLock()
    c = OverlayCollector(lambda: m, lock, ExporterConfig(top_n=20, rank_interval=0.5))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    server = make_server("127.0.0.1", 0)
    server.set_app(web_app(reg, "/metrics", lambda: (True, "OK")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    stop = threading.Event()

    def feed():
        t, total = 0.0, Counters()
        while not stop.is_set() and t < 2000:
            t += 1
            total = total + Counters(bytes_dirtied=4096)
            with lock:
                m.counters(t, {f"o{i}": total + Counters(bytes_dirtied=i) for i in range(50)})
                m.flush(Flush("syncfs", 1, 1, "s", t, 0.001, 0, f"o{int(t) % 50}", "7:1",
                              [Victim(f"o{int(t + 1) % 50}", 4096)]))

    errors = []

    def client():
        prev = {}
        try:
            for _ in range(15):
                text = urllib.request.urlopen(url, timeout=10).read().decode()
                cur = {}
                for fam in text_string_to_metric_families(text):
                    for smp in fam.samples:
                        cur[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
                assert ("ovltrace_exporter_overlays", (("export", "own"),)) in cur
                for k, v in cur.items():
                    if k[0].endswith(("_total", "_count", "_bucket")) and k in prev:
                        assert v >= prev[k], (k, prev[k], v)
                prev = cur
        except Exception as e:  # reported below, from the main thread
            errors.append(repr(e))

    feeder = threading.Thread(target=feed)
    feeder.start()
    clients = [threading.Thread(target=client) for _ in range(6)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    stop.set()
    feeder.join()
    server.shutdown()
    server.server_close()
    assert not errors, errors


# ---- dashboards and rules ---------------------------------------------------------

def test_expressions_name_only_served_metrics():
    served = served_names()
    exprs = dashboard_exprs() + rule_exprs() + [("template", s) for s in template_selectors()]
    assert len(dashboard_exprs()) >= 20
    for title, expr in exprs:
        used = metric_names(expr)
        assert used, f"{title}: no ovltrace metric in {expr}"
        assert used <= served, f"{title}: not served: {used - served}"


def test_expressions_are_valid_promql(tmp_path):
    """promtool parses every expression (as recording rules)."""
    import yaml
    rules = [{"record": f"ovltrace:check:{i}", "expr": e}
             for i, (_t, e) in enumerate(dashboard_exprs() + [("t", s) for s in template_selectors()])]
    f = tmp_path / "exprs.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    for path in (f, RULES):
        r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


# ---- listen address errors: one line, non-zero ------------------------------------

def test_parse_listen_address():
    assert parse_listen_address("localhost:19435") == ("localhost", 19435)
    assert parse_listen_address(":9") == ("", 9)
    assert parse_listen_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost", "host:port", "h:70000", ""):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


def run_cli(args):
    r = subprocess.run(OVLTRACE + args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stderr.strip().splitlines()


def test_port_in_use_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, err = run_cli(["exporter", "--web.listen-address", f"127.0.0.1:{port}"])
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("ovltrace: error:") and "in use" in err[0], err


@pytest.mark.parametrize("addr", ["nonsense", "localhost:99999", "no.such.host.invalid:19435"])
def test_bad_listen_address_is_one_line_error(addr):
    rc, err = run_cli(["exporter", "--web.listen-address", addr])
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("ovltrace: error:"), err
