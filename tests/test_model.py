"""The model and the analysis on hand-made records: windows,
interference, stall shares, leaks, losses."""
import pytest

from ovltrace import analysis
from ovltrace.model import (Container, Counters, Cursor, ErrorReturned, Flush, Model, OverlayMeta,
                            Victim, WbError)
from ovltrace.report.build import build_report


def meta(key, mp, dev="7:0", kind="overlay", container=None):
    return OverlayMeta(key=key, kind=kind, mountpoint=mp, upper_dev=dev, container=container)


def model_abc():
    m = Model()
    m.add(meta("a", "/c/a/merged", container=Container("docker", "id-a", "alpha")))
    m.add(meta("b", "/c/b/merged"))
    m.add(meta("x", "/other/merged", dev="8:1"))
    m.add(meta("fs", "/upper", kind="upperfs"))
    return m


def test_window_is_difference_of_cumulative_counters():
    m = model_abc()
    m.counters(1.0, {"a": Counters(bytes_dirtied=100)})
    m.counters(2.0, {"a": Counters(bytes_dirtied=250)})
    m.counters(3.0, {"a": Counters(bytes_dirtied=400)})
    s = m.snapshot(since=1.0, t=3.0)
    row = next(r for r in s.overlays if r.meta.key == "a")
    assert row.window.bytes_dirtied == 300
    assert row.total.bytes_dirtied == 400
    assert m.snapshot().overlays[0].window.bytes_dirtied == 400


def test_interference_and_stall():
    m = model_abc()
    m.flush(Flush("syncfs", 10, 10, "syncer", 1.0, 0.5, 0, "b", "7:0",
                  [Victim("a", 4096 * 100), Victim("b", 4096)]))
    m.flush(Flush("syncfs", 10, 10, "syncer", 2.0, 0.1, 0, "b", "7:0", [Victim("b", 4096)]))
    s = m.snapshot(t=3.0)
    a = analysis.interference(s.flushes, s.metas)
    # the first flush: 0.5 s split by bytes, 100/101 on a's data, 1/101 on b's own
    assert a.parties["b"].others_bytes_flushed == 409600
    assert a.parties["b"].own_bytes_flushed == 2 * 4096
    assert a.parties["a"].bytes_flushed_by_others == 409600
    assert a.parties["b"].waited_on_others_seconds == pytest.approx(0.5 * 100 / 101)
    assert a.parties["a"].made_others_wait_seconds == pytest.approx(0.5 * 100 / 101)
    pair = a.pairs[("b", "a")]
    assert (pair.bytes, pair.flushes) == (409600, 1)
    assert pair.stall_seconds == pytest.approx(0.5 * 100 / 101)
    assert list(a.pairs) == [("b", "a")]            # own data is no pair
    js = build_report(s)
    assert js["flushes"][0]["overlay"] == "/c/b/merged"
    assert js["flushes"][0]["victims"][0] == {
        "name": "alpha", "overlay": "/c/a/merged", "bytes_written_back": 409600,
        "stall_seconds": round(0.5 * 100 / 101, 6)}


def test_shares_of_one_flush_add_up_to_its_duration():
    f = Flush("sync", 1, 1, "sync", 0.0, 0.3, 0, None, None,
              [Victim("a", 3000), Victim("b", 1000), Victim("fs", 2000)])
    assert sum(s.seconds for s in analysis.shares(f)) == pytest.approx(0.3)
    m = model_abc()
    m.flush(f)
    a = analysis.interference(m.snapshot(t=1.0).flushes, m.metas)
    # sync from no container: a host process; the upper fs rest is no pair
    assert {k: round(p.stall_seconds, 6) for k, p in a.pairs.items()} == {
        ("process:sync", "a"): 0.15, ("process:sync", "b"): 0.05}
    assert analysis.shares(Flush("syncfs", 1, 1, "x", 0.0, 0.2, 0, "a", "7:0", [])) == []


def test_a_containers_sync_is_charged_to_its_overlay():
    m = model_abc()
    m.flush(Flush("sync", 7, 7, "sync", 1.0, 0.2, 0, None, None, [Victim("b", 4096)],
                  caller_container=Container("docker", "id-a", "alpha")))
    a = analysis.interference(m.snapshot(t=2.0).flushes, m.metas)
    assert list(a.pairs) == [("a", "b")]


def test_leak_and_silent_loss():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    m.wb_error(WbError(1.1, "b", 13, 5))
    # a, which wrote nothing, is handed EIO by syncfs; b is never told
    m.flush(Flush("syncfs", 1, 1, "app", 2.0, 0.01, -5, "a", "7:0", []))
    # x sits on another upper fs: an error there is no leak from b
    m.error_returned(ErrorReturned(2.5, "x", "syncfs", 5, 2, "other"))
    s = m.snapshot(t=3.0)
    e = analysis.errors(s)
    assert [(l.victim, l.source, l.errno) for l in e.leaks] == [("a", "b", 5)]
    assert [(l.key, l.writeback_errors) for l in e.losses] == [("b", 2)]
    js = build_report(s)
    assert js["leaks"] == [{"victim": "alpha", "source": "b", "victim_overlay": "/c/a/merged",
                            "source_overlay": "/c/b/merged", "errno": 5, "call": "syncfs",
                            "t": 2.01}]
    assert js["silent_losses"][0]["overlay"] == "/c/b/merged"


def test_told_overlay_is_not_a_silent_loss():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    m.error_returned(ErrorReturned(2.0, "b", "fsync", 5, 3, "db"))
    e = analysis.errors(m.snapshot(t=3.0))
    assert e.losses == [] and e.leaks == []


def test_error_before_window_start_is_outside():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    assert analysis.errors(m.snapshot(since=2.0, t=3.0)).losses == []


def test_gone_overlay_stays_in_window_not_live():
    m = model_abc()
    m.counters(1.0, {"b": Counters(bytes_dirtied=10)})
    m.gone("b", 1.5)
    s = m.snapshot(t=2.0)
    row = next(r for r in s.overlays if r.meta.key == "b")
    assert not row.live and row.window.bytes_dirtied == 10
    assert all(r.meta.key != "b" for r in m.snapshot(since=1.6, t=2.0).overlays)


def test_json_keys():
    js = build_report(model_abc().snapshot(t=1.0))
    assert js["version"] == 2
    for k in ("window_seconds", "overlays", "flushes", "leaks", "silent_losses"):
        assert k in js
    ov = js["overlays"][0]
    for k in ("mountpoint", "mnt_ns", "upperdir", "workdir", "upper_dev", "options", "container",
              "inodes_dirtied", "bytes_dirtied", "bytes_written_back", "copy_ups",
              "copy_up_bytes", "writeback_errors"):
        assert k in ov
    assert ov["container"] == {"runtime": "docker", "id": "id-a", "name": "alpha"}


def test_error_storm_is_bounded_but_still_a_silent_loss():
    m = model_abc()
    m.max_records = 100
    for i in range(1000):
        m.wb_error(WbError(1.0 + i / 1000, "b", i, 5))
    m.counters(2.5, {"b": Counters(writeback_errors=1000)})
    s = m.snapshot(t=3.0)
    assert len(s.wb_errors) <= 100 and m.trimmed >= 900
    assert [(l.key, l.writeback_errors) for l in analysis.errors(s).losses] == [("b", 1000)]


def test_prune_forgets_gone_overlays_and_old_records():
    m = model_abc()
    m.counters(1.0, {"b": Counters(bytes_dirtied=5)})
    m.gone("b", 2.0)
    m.flush(Flush("sync", 1, 1, "sync", 1.0, 0.1, 0, None, None, []))
    m.counters(5.0, {"a": Counters(bytes_dirtied=7)})
    m.prune(3.0)
    assert "b" not in m.metas and m.snapshot(since=0.0).flushes == []
    assert m.counters_at("a", 6.0).bytes_dirtied == 7


def test_delta_hands_out_each_record_once_across_trims_and_prunes():
    m = model_abc()
    m.max_records = 8
    seen, cur = [], Cursor()
    for i in range(50):
        m.flush(Flush("sync", i, i, "sync", float(i), 0.0, 0, None, None, []))
        if i % 7 == 0:
            d = m.delta(cur)
            seen += [f.pid for f in d.flushes]
            cur = d.cursor
        if i == 30:
            m.prune(25.0)
    seen += [f.pid for f in m.delta(cur).flushes]
    assert seen == sorted(set(seen))                  # never twice, in order
    assert seen[-6:] == list(range(44, 50))           # nothing new is lost


def test_a_model_without_history_keeps_the_newest_sample_only():
    """The exporter's model (history 0): a scrape reads the newest totals,
    so each overlay keeps its first sample and the last two, whatever the
    run's length (a thousand overlays sampled twice a second held ~95 MiB
    of samples over the two-minute retention before)."""
    m = Model()
    m.history = 0.0
    m.add(OverlayMeta("a", "overlay", "/a", "7:1"))
    for i in range(1, 500):
        m.counters(i / 2, {"a": Counters(bytes_dirtied=i)})
        assert len(m._samples["a"]) <= 3
        assert m.delta(None).totals["a"].bytes_dirtied == i
    deflt = Model()
    deflt.add(OverlayMeta("a", "overlay", "/a", "7:1"))
    for i in range(1, 500):
        deflt.counters(i / 2, {"a": Counters(bytes_dirtied=i)})
    assert len(deflt._samples["a"]) == 500          # history 900 s: every sample kept
