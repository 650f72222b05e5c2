"""tests/vm/verdict.py: the VM run is judged from the guest's result files
(junit XML and hook logs per pass), never from an exit code."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vm_verdict", ROOT / "tests" / "vm" / "verdict.py")
verdict = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verdict)

LIMIT = ("fentry: Failed to load BPF program b'kfunc__ovl_copy_up_flags': No such file or "
         "directory; ovl_copy_up_flags is in module overlay, and bcc 0.26 finds fentry targets "
         "only in vmlinux BTF")
SKIP = f"copy_up off under --hooks fentry: {LIMIT}"
EXPECTED = ["tests/test_hooks_live.py::test_exact_copy_ups",
            "tests/test_live_core.py::test_attribution_three_overlays"]


def junit(*cases: str) -> str:
    """pytest's --junitxml layout (as pytest 9 writes it)."""
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
            '<testsuite name="pytest">' + "".join(cases) + "</testsuite></testsuites>")


def case(nodeid: str, inner: str = "") -> str:
    cls, name = verdict.node_key(nodeid)
    return f'<testcase classname="{cls}" name="{name}" time="1.0">{inner}</testcase>'


def skipped(msg: str) -> str:
    return f'<skipped type="pytest.skip" message="{msg}">tests/x.py:1: {msg}</skipped>'


def hooks_entry(mech: str, copy_up: str | None = "same", limit: str | None = None) -> dict:
    hooks = {h: {"mechanism": mech, "limit": None} for h in verdict.FUNCTION_HOOKS}
    if copy_up != "same":
        hooks["copy_up"] = {"mechanism": copy_up, "limit": limit}
    hooks["syncfs"] = {"mechanism": "tracepoint", "limit": None}
    return {"test": "tests/x.py::t", "hooks": hooks}


def test_node_key():
    assert verdict.node_key("tests/test_live_core.py::test_a") == ("tests.test_live_core", "test_a")
    assert verdict.node_key("tests/t.py::TestK::test_b[x-1]") == ("tests.t.TestK", "test_b[x-1]")


def test_clean_fentry_pass_with_the_documented_skip():
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped(SKIP)), case(EXPECTED[1])))
    line, problems, passed, failed = verdict.judge_tests("fentry", res, EXPECTED)
    assert problems == [] and (passed, failed) == (1, 0)
    assert line == ("vm fentry: 1 passed, 1 skipped (1 x copy_up off under --hooks fentry: "
                    "ovl_copy_up_flags is in module overlay, and bcc 0.26 finds fentry targets "
                    "only in vmlinux BTF)")


def test_the_same_skip_is_not_documented_for_kprobes():
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped(SKIP.replace("fentry", "kprobes", 1))),
                                    case(EXPECTED[1])))
    _, problems, _, failed = verdict.judge_tests("kprobes", res, EXPECTED)
    assert failed == 1 and "UNDOCUMENTED SKIP tests.test_hooks_live::test_exact_copy_ups" in problems[0]
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped("needs root")), case(EXPECTED[1])))
    assert verdict.judge_tests("fentry", res, EXPECTED)[3] == 1


def test_failures_errors_and_missing_tests_count():
    res = verdict.parse_junit(junit(case(EXPECTED[0], '<failure message="assert 0 == 1">x</failure>')))
    line, problems, passed, failed = verdict.judge_tests("kprobes", res, EXPECTED)
    assert (passed, failed) == (0, 2)
    assert line == "vm kprobes: 0 passed, 0 skipped, 1 failed, 0 errors, 1 missing"
    assert any(p.startswith("vm kprobes: MISSING tests/test_live_core.py::") for p in problems)
    res = verdict.parse_junit(junit(case(EXPECTED[0], '<error message="fixture">x</error>'),
                                    case(EXPECTED[1])))
    assert verdict.judge_tests("kprobes", res, EXPECTED)[3] == 1


def test_hooks_must_use_the_pass_mechanism():
    line, problems = verdict.judge_hooks("fentry", [hooks_entry("fentry", None, LIMIT)] * 3)
    assert problems == []
    assert line == ("vm fentry hooks (3 reports): inode_dirty fentry; copy_up off "
                    "(ovl_copy_up_flags is in module overlay, and bcc 0.26 finds fentry targets "
                    "only in vmlinux BTF); sync_fs fentry; wb_error fentry")
    # a fallback, or the limit under the other mechanism, is a problem
    for mode, entry in (("fentry", hooks_entry("fentry", "kprobe")),
                        ("fentry", hooks_entry("fentry", "tracepoint")),
                        ("kprobes", hooks_entry("kprobe", None, LIMIT)),
                        ("kprobes", hooks_entry("fentry"))):
        assert verdict.judge_hooks(mode, [hooks_entry(verdict.PASSES[mode]), entry])[1], (mode, entry)
    assert verdict.judge_hooks("kprobes", [])[1] == ["vm kprobes: no ovltrace report recorded its hooks"]
    assert verdict.judge_hooks("kprobes", [], narrowed=True)[1] == []


def test_judge_needs_both_passes(tmp_path, capsys):
    (tmp_path / "expected.txt").write_text("\n".join(EXPECTED) + "\n\n2 tests collected\n")
    (tmp_path / "junit-fentry.xml").write_text(junit(case(EXPECTED[0], skipped(SKIP)),
                                                     case(EXPECTED[1])))
    (tmp_path / "hooks-fentry.jsonl").write_text(json.dumps(hooks_entry("fentry", None, LIMIT)) + "\n")
    assert verdict.judge(str(tmp_path)) == 1
    out = capsys.readouterr().out.splitlines()
    assert "vm kprobes: pass did not run or left no result" in "\n".join(out)
    assert out[-1] == "vm: 1 passed, 2 failed"          # kprobes: both expected tests missing
    (tmp_path / "junit-kprobes.xml").write_text(junit(case(EXPECTED[0]), case(EXPECTED[1])))
    (tmp_path / "hooks-kprobes.jsonl").write_text(json.dumps(hooks_entry("kprobe")) + "\n")
    assert verdict.judge(str(tmp_path)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "vm: 3 passed, 0 failed"
