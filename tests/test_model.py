"""The model on hand-made records: windows, interference, leaks, losses."""
from ovltrace.model import (ContainerRef, Counters, ErrorReturned, Flush, Model, OverlayMeta,
                            Victim, WbError, snapshot_json)


def meta(key, mp, dev="7:0", kind="overlay", container=None):
    return OverlayMeta(key=key, kind=kind, mountpoint=mp, upper_dev=dev, container=container)


def model_abc():
    m = Model()
    m.add(meta("a", "/c/a/merged", container=ContainerRef("docker", "id-a", "alpha")))
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
    rows = {r.meta.key: r for r in s.overlays}
    assert rows["b"].flushed_for_others == 409600
    assert rows["a"].flushed_by_others == 409600
    assert rows["b"].stall_caused == 0.5          # the second call flushed only its own data
    assert s.interference()[("b", "a")] == (409600, 0.5, 1)
    js = snapshot_json(s)
    assert js["flushes"][0]["overlay"] == "/c/b/merged"
    assert js["flushes"][0]["victims"][0] == {"overlay": "/c/a/merged", "bytes_written_back": 409600}


def test_leak_and_silent_loss():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    m.wb_error(WbError(1.1, "b", 13, 5))
    # a, which wrote nothing, is handed EIO by syncfs; b is never told
    m.flush(Flush("syncfs", 1, 1, "app", 2.0, 0.01, -5, "a", "7:0", []))
    # x sits on another upper fs: an error there is no leak from b
    m.error_returned(ErrorReturned(2.5, "x", "syncfs", 5, 2, "other"))
    s = m.snapshot(t=3.0)
    assert [(l.victim, l.source, l.errno) for l in s.leaks] == [("a", "b", 5)]
    assert [(l.key, l.writeback_errors) for l in s.silent_losses] == [("b", 2)]
    js = snapshot_json(s)
    assert js["leaks"] == [{"victim": "/c/a/merged", "source": "/c/b/merged", "errno": 5,
                            "call": "syncfs"}]
    assert js["silent_losses"][0]["overlay"] == "/c/b/merged"


def test_told_overlay_is_not_a_silent_loss():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    m.error_returned(ErrorReturned(2.0, "b", "fsync", 5, 3, "db"))
    s = m.snapshot(t=3.0)
    assert s.silent_losses == [] and s.leaks == []


def test_error_before_window_start_is_outside():
    m = model_abc()
    m.wb_error(WbError(1.0, "b", 12, 5))
    assert m.snapshot(since=2.0, t=3.0).silent_losses == []


def test_gone_overlay_stays_in_window_not_live():
    m = model_abc()
    m.counters(1.0, {"b": Counters(bytes_dirtied=10)})
    m.gone("b", 1.5)
    s = m.snapshot(t=2.0)
    row = next(r for r in s.overlays if r.meta.key == "b")
    assert not row.live and row.window.bytes_dirtied == 10
    assert all(r.meta.key != "b" for r in m.snapshot(since=1.6, t=2.0).overlays)


def test_json_v1_keys():
    js = snapshot_json(model_abc().snapshot(t=1.0))
    assert js["version"] == 1
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
    assert len(m.wb_errors) <= 100 and m.trimmed >= 900
    s = m.snapshot(t=3.0)
    assert [(l.key, l.writeback_errors) for l in s.silent_losses] == [("b", 1000)]


def test_prune_forgets_gone_overlays_and_old_records():
    m = model_abc()
    m.counters(1.0, {"b": Counters(bytes_dirtied=5)})
    m.gone("b", 2.0)
    m.flush(Flush("sync", 1, 1, "sync", 1.0, 0.1, 0, None, None, []))
    m.counters(5.0, {"a": Counters(bytes_dirtied=7)})
    m.prune(3.0)
    assert "b" not in m.metas and m.flushes == []
    assert m.counters_at("a", 6.0).bytes_dirtied == 7
