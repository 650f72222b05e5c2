"""A recording replays into exactly the model it was recorded from: the
same report, number for number (a replay that doubled or dropped
anything would hide behind outputs that only compare a replay with
itself)."""
from __future__ import annotations

import json

from ovltrace.model import Model
from ovltrace.recording import RecordingWriter, apply, read_records
from ovltrace.report.build import build_report
from test_top import build_model


def report(m: Model) -> dict:
    rep = build_report(m.snapshot())
    rep.pop("report")                         # says "live" or "recording"
    return json.loads(json.dumps(rep))        # tuples vs lists: compare as JSON


def test_replay_is_exact(tmp_path):
    path = str(tmp_path / "rec.jsonl.gz")
    w = RecordingWriter(path)
    live = build_model(sink=w)
    w.close(12.0)
    header, records = read_records(path)
    replayed = Model()
    for rec in records:
        apply(replayed, rec)
    assert header["format"] == "ovltrace-recording"
    a, b = report(live), report(replayed)
    assert a["overlays"] == b["overlays"]
    assert a["interference"] == b["interference"] and a["flushes"] == b["flushes"]
    assert a == b
