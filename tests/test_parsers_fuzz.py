"""Property tests on everything a user or a file can feed ovltrace: bad
input is a clear error of the expected type, never a crash."""
from __future__ import annotations

import gzip
import os
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from ovltrace.format import parse_duration
from ovltrace.errors import OvltraceError
from ovltrace.model import Model
from ovltrace.recording import apply, read_records


@given(st.text(max_size=30))
def test_duration_parser_only_raises_valueerror(text):
    try:
        v = parse_duration(text)
    except ValueError:
        return
    assert v > 0


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("500ms", 0.5), ("2m", 120), ("1h", 3600),
                                          ("3", 3), (" 1.5s ", 1.5)])
def test_duration_examples(text, seconds):
    assert parse_duration(text) == seconds


def _read_all(data: bytes, gz: bool) -> None:
    fd, path = tempfile.mkstemp()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(data) if gz else data)
        header, records = read_records(path)
        m = Model()
        for rec in records:
            apply(m, rec)
        m.snapshot()
    finally:
        os.unlink(path)


HEADER = b'{"format": "ovltrace-recording", "version": 1}\n'


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_recording_reader_on_garbage(data, gz):
    try:
        _read_all(data, gz)
    except OvltraceError:
        pass


record = st.fixed_dictionaries({"type": st.sampled_from(
    ["overlay", "gone", "counters", "flush", "wb_error", "error_returned", "self", "hooks", "end",
     "cgroup_accounting", "inode_paths", "unknown"])},
    optional={"t": st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.none()),
              "key": st.text(max_size=5), "meta": st.dictionaries(st.text(max_size=8), st.integers()),
              "values": st.dictionaries(st.text(max_size=3), st.lists(st.integers(), max_size=14))})


@settings(max_examples=300, deadline=None)
@given(st.lists(record, max_size=6))
def test_recording_reader_on_wrong_records(records):
    import json
    data = HEADER + b"".join(json.dumps(r).encode() + b"\n" for r in records)
    try:
        _read_all(data, False)
    except OvltraceError as e:
        assert "\n" not in str(e)
