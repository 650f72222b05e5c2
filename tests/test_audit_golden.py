"""Audit on the golden recordings (made from the live demo by
tests/data/make_golden.py): every format must carry the findings the
scenario implies (not byte-for-byte), the JSON must validate against
ovltrace/schema/audit-v2.json, and --fail-on must gate."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SCHEMA = json.loads((ROOT / "ovltrace" / "schema" / "audit-v2.json").read_text())
FORMATS = ("table", "markdown", "json", "html")

# What each scenario must show: finding ids, and words every format must carry.
EXPECTED = {
    "demo": {"findings": {"syncfs-flushes-others", "dirty-data-stalls-others", "big-copy-up",
                          "cgroup-accounting-gap"},
             "words": ["syncer", "batch", "syncfs in a loop", "volatile", "copied up",
                       "cgroup"]},
    "leak": {"findings": {"error-leak", "shares-upper-with-errors"},
             "words": ["A was handed EIO caused by B", "lost.dat"]},
    "loss": {"findings": {"error-leak", "silent-data-loss", "shares-upper-with-errors"},
             "words": ["A was handed EIO caused by B", "B lost data and was never told",
                       "lost.dat"]},
}


def ovltrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovltrace.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def audit(name: str, *args: str) -> subprocess.CompletedProcess:
    return ovltrace("audit", "--from", str(DATA / f"{name}.jsonl.gz"), *args)


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    out = {}
    for name in EXPECTED:
        r = audit(name, "--format", "json")
        assert r.returncode == 0, r.stderr
        out[name] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_json_validates_and_has_findings(reports, name):
    rep = reports[name]
    jsonschema.Draft202012Validator(SCHEMA).validate(rep)
    ids = {f["id"] for f in rep["findings"]}
    assert EXPECTED[name]["findings"] <= ids, ids
    for f in rep["findings"]:
        assert f["evidence"], f          # every finding is backed by numbers
    assert rep["report"]["source"] == "recording"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_agrees_with_its_scenario(reports, name):
    """The truth each scenario measured on its own (make_golden.py), exact."""
    sys.path.insert(0, str(DATA))
    from make_golden import check_against_truth
    truth = json.loads((DATA / f"{name}.truth.json").read_text())
    assert check_against_truth(reports[name], truth) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_is_not_older_than_the_schema(name):
    """Re-make the goldens (tests/data/make_golden.py) when the counters or
    the recording format change: old files would test old behaviour."""
    from ovltrace.counters import COUNTERS
    from ovltrace.recording import VERSION
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        header = json.loads(f.readline())
        counters = [json.loads(line) for line in f if '"type":"counters"' in line]
    assert header["version"] == VERSION
    assert counters and all(len(v) == len(COUNTERS) for rec in counters
                            for v in rec["values"].values())


def test_schema_itself_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_rejects_a_renamed_key(reports):
    rep = dict(reports["demo"])
    rep["interference_matrix"] = rep.pop("interference")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(rep)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_format_carries_the_findings(reports, name, fmt):
    r = audit(name, "--format", fmt)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for f in reports[name]["findings"]:
        assert f["title"] in text.replace("&#x27;", "'").replace("\n    ", " "), (fmt, f["title"])
    for word in EXPECTED[name]["words"]:
        assert word in text.replace("&#x27;", "'").replace("\n    ", " ").replace("\n      ", " "), \
            (fmt, word)
    if fmt == "table":
        assert max(len(line) for line in text.splitlines()) <= 80


def test_demo_numbers(reports):
    rep = reports["demo"]
    cells = {(c["caller"], c["victim"]): c for c in rep["interference"]}
    # the syncfs neighbour wrote back the bulk writer's 96 MiB
    assert cells[("syncer", "batch")]["bytes"] >= 90 << 20
    stall = {s["name"]: s for s in rep["stall_by_container"]}
    assert stall["syncer"]["syncfs_calls"] >= 10
    assert stall["syncer"]["waited_on_others_seconds"] > 0
    assert stall["batch"]["made_others_wait_seconds"] > 0
    assert rep["worst_flushes"][0]["caller"] == "syncer"
    hot = rep["copy_up_hotspots"][0]
    assert hot["name"] == "cache" and hot["copy_up_bytes"] >= 32 << 20
    cg = rep["cgroup_accounting"]
    assert cg["available"] and {c["name"] for c in cg["containers"]} >= {"webshop", "batch"}
    assert all(c["v2"]["cgroup"].endswith("/" + c["name"]) for c in cg["containers"])


def test_error_inodes_resolved_to_paths(reports):
    for name in ("leak", "loss"):
        errs = {e["name"]: e for e in reports[name]["errors_by_container"]}
        assert errs["B"]["inodes"][0]["path"].endswith("/B/diff/lost.dat")
        assert errs["A"]["leaked_to_it_from"] == ["B"]
    assert {e["name"]: e for e in reports["loss"]["errors_by_container"]}["B"]["silent_loss"]


def test_markdown_is_markdown():
    text = audit("loss", "--format", "markdown").stdout
    assert text.startswith("# ovltrace audit")
    assert "## Findings" in text and "- **CRITICAL: " in text
    assert "| CONTAINER" in text and ("|:--" in text or "|---" in text)


@pytest.mark.parametrize("gates,code", [
    ("leak", 4), ("silent-loss", 8), ("leak,silent-loss", 12), ("stall>1ms", 16),
    ("leak,silent-loss,stall>1ms", 28), ("stall>1h", 0)])
def test_fail_on_exit_codes(gates, code):
    r = audit("loss", "--fail-on", gates, "--format", "json")
    assert r.returncode == code, r.stderr
    json.loads(r.stdout)                 # the report is still printed
    if code:
        assert "fail-on" in r.stderr


def test_fail_on_clean_recording_passes():
    # the demo has no errors: leak/silent-loss gates stay closed
    assert audit("demo", "--fail-on", "leak,silent-loss").returncode == 0


@pytest.mark.parametrize("bad", ["leak,nonsense", "stall>soon", "stall>"])
def test_fail_on_bad_gate_is_a_usage_error(bad):
    r = audit("demo", "--fail-on", bad)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_output_file_format_from_extension(tmp_path):
    for ext, probe in ((".html", "<svg"), (".md", "# ovltrace audit"), (".json", '"findings"')):
        out = tmp_path / f"report{ext}"
        r = audit("leak", "-o", str(out))
        assert r.returncode == 0 and r.stdout == "", r.stderr
        assert probe in out.read_text()


# ---- bad recordings: one line, no traceback ---------------------------------

def _lines(name: str) -> list[str]:
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        return f.read().splitlines(keepends=True)


def _one_line_error(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovltrace: error: "), r.stderr


def test_truncated_mid_record(tmp_path):
    p = tmp_path / "cut.jsonl"
    text = "".join(_lines("loss"))
    p.write_text(text[: len(text) // 2])
    r = ovltrace("audit", "--from", str(p))
    _one_line_error(r)
    assert "truncated" in r.stderr


def test_truncated_gzip(tmp_path):
    raw = (DATA / "loss.jsonl.gz").read_bytes()
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(raw[: len(raw) // 2])
    _one_line_error(ovltrace("audit", "--from", str(p)))


def test_cut_at_a_line_boundary_warns_and_reports(tmp_path):
    p = tmp_path / "cut.jsonl"
    lines = _lines("loss")
    p.write_text("".join(lines[: len(lines) * 2 // 3]))
    r = ovltrace("audit", "--from", str(p))
    assert r.returncode == 0 and "no end record" in r.stderr and "Traceback" not in r.stderr


def test_future_version(tmp_path):
    lines = _lines("demo")
    header = json.loads(lines[0])
    header["version"] = 99
    p = tmp_path / "future.jsonl"
    p.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    r = ovltrace("audit", "--from", str(p))
    _one_line_error(r)
    assert "newer" in r.stderr


@pytest.mark.parametrize("content", [b"", b"hello\n", b"\x1f\x8bgarbage", b"\xff\xfe\x00bin",
                                     b'{"format": "ovltrace-recording", "version": 1}\n[1,2]\n'])
def test_corrupt(tmp_path, content):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    _one_line_error(ovltrace("audit", "--from", str(p)))


def test_bad_annotation_record(tmp_path):
    lines = _lines("loss")
    p = tmp_path / "bad.jsonl"
    p.write_text(lines[0] + '{"type": "inode_paths", "paths": {"o1.1": {"x": "/a"}}}\n'
                 + "".join(lines[1:]))
    _one_line_error(ovltrace("audit", "--from", str(p)))


def test_missing_file():
    _one_line_error(ovltrace("audit", "--from", "/nonexistent/rec.jsonl"))
