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


NO_BTF = ("kernel lacks ovl_inode.flags (struct ovl_inode not in BTF); ovl_copy_up_flags is in "
          "module overlay, which has no BTF here (module BTF came in 5.11): the hook cannot "
          "read overlay's own structs")


def test_clean_fentry_pass_with_the_documented_skip():
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped(SKIP)), case(EXPECTED[1])))
    line, problems, passed, failed = verdict.judge_tests("vm 6.1 fentry", "fentry", res, EXPECTED)
    assert problems == [] and (passed, failed) == (1, 0)
    assert line == ("vm 6.1 fentry: 1 passed, 1 skipped (1 x copy_up off under --hooks fentry: "
                    "ovl_copy_up_flags is in module overlay, and bcc 0.26 finds fentry targets "
                    "only in vmlinux BTF)")


def test_the_same_skip_is_not_documented_for_kprobes():
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped(SKIP.replace("fentry", "kprobes", 1))),
                                    case(EXPECTED[1])))
    _, problems, _, failed = verdict.judge_tests("vm 6.1 kprobes", "kprobes", res, EXPECTED)
    assert failed == 1 and "UNDOCUMENTED SKIP tests.test_hooks_live::test_exact_copy_ups" in problems[0]
    res = verdict.parse_junit(junit(case(EXPECTED[0], skipped("needs root")), case(EXPECTED[1])))
    assert verdict.judge_tests("vm 6.1 fentry", "fentry", res, EXPECTED)[3] == 1


def test_failures_errors_and_missing_tests_count():
    res = verdict.parse_junit(junit(case(EXPECTED[0], '<failure message="assert 0 == 1">x</failure>')))
    line, problems, passed, failed = verdict.judge_tests("vm 6.1 kprobes", "kprobes", res, EXPECTED)
    assert (passed, failed) == (0, 2)
    assert line == "vm 6.1 kprobes: 0 passed, 0 skipped, 1 failed, 0 errors, 1 missing"
    assert any(p.startswith("vm 6.1 kprobes: MISSING tests/test_live_core.py::") for p in problems)
    res = verdict.parse_junit(junit(case(EXPECTED[0], '<error message="fixture">x</error>'),
                                    case(EXPECTED[1])))
    assert verdict.judge_tests("vm 6.1 kprobes", "kprobes", res, EXPECTED)[3] == 1


def test_hooks_must_use_the_pass_mechanism_or_the_documented_stand_in():
    line, problems = verdict.judge_hooks("vm 6.1 fentry", "fentry",
                                         [hooks_entry("fentry", "tracepoint", LIMIT)] * 3)
    assert problems == []
    assert line == ("vm 6.1 fentry hooks (3 reports): inode_dirty fentry; copy_up tracepoint "
                    "(stand-in: ovl_copy_up_flags is in module overlay, and bcc 0.26 finds fentry "
                    "targets only in vmlinux BTF); sync_fs fentry; wb_error fentry")
    # 5.10: no module BTF, so no function hook for copy_up with either mechanism
    for mode in ("fentry", "kprobes"):
        entry = hooks_entry(verdict.PASSES[mode], "tracepoint", NO_BTF)
        assert verdict.judge_hooks("vm 5.10", mode, [entry])[1] == []
    # the tracepoints pass: every hook on its tracepoint
    assert verdict.judge_hooks("vm 5.10", "tracepoints", [hooks_entry("tracepoint")])[1] == []
    # a fallback without a documented limit, or a limit not documented for
    # the pass, is a problem
    for mode, entry in (("fentry", hooks_entry("fentry", "kprobe")),
                        ("fentry", hooks_entry("fentry", "tracepoint")),
                        ("kprobes", hooks_entry("kprobe", "tracepoint", LIMIT)),
                        ("kprobes", hooks_entry("kprobe", None, LIMIT)),
                        ("kprobes", hooks_entry("fentry")),
                        ("tracepoints", hooks_entry("tracepoint", "kprobe"))):
        assert verdict.judge_hooks("vm", mode, [hooks_entry(verdict.PASSES[mode]), entry])[1], \
            (mode, entry)
    assert verdict.judge_hooks("vm", "kprobes", [])[1] == ["vm: no ovltrace report recorded its hooks"]
    assert verdict.judge_hooks("vm", "kprobes", [], narrowed=True)[1] == []


def _kernel(out, series, kver, modes, results: dict, times="boot 12\ncompile 30\ntotal 300\n"):
    d = out / series
    d.mkdir()
    (d / "uname.txt").write_text(kver + "\n")
    (d / "times.txt").write_text(times)
    (d / "doctor-rc.txt").write_text("0 +bpf,+perfmon,+sys_ptrace,+dac_read_search\n")
    (d / "doctor.txt").write_text("hooks (mode auto; ...; as attached just now)\n")
    for mode, (xml, entry) in results.items():
        (d / f"junit-{mode}.xml").write_text(xml)
        (d / f"hooks-{mode}.jsonl").write_text(json.dumps(entry) + "\n")
    with open(out / "kernels.txt", "a") as f:
        f.write(f"{series} {kver} 1.0-1 {' '.join(modes)}\n")


def test_judge_needs_every_pass_of_every_kernel(tmp_path, capsys):
    for mode in verdict.PASSES:
        (tmp_path / f"expected-{mode}.txt").write_text("\n".join(EXPECTED) + "\n\n2 tests collected\n")
    ok = junit(case(EXPECTED[0]), case(EXPECTED[1]))
    _kernel(tmp_path, "6.1", "6.1.0-57-amd64", ["fentry", "kprobes"],
            {"fentry": (ok, hooks_entry("fentry", "tracepoint", LIMIT)),
             "kprobes": (ok, hooks_entry("kprobe"))})
    _kernel(tmp_path, "5.10", "5.10.0-46-amd64", ["fentry", "kprobes", "tracepoints"],
            {"fentry": (ok, hooks_entry("fentry", "tracepoint", NO_BTF)),
             "kprobes": (ok, hooks_entry("kprobe", "tracepoint", NO_BTF))})
    assert verdict.judge(str(tmp_path)) == 1
    out = capsys.readouterr().out.splitlines()
    assert "vm 5.10 tracepoints: pass did not run or left no result" in "\n".join(out)
    assert out[-1] == "vm: 2 kernels, 8 passed, 2 failed"     # tracepoints: both missing
    d = tmp_path / "5.10"
    (d / "junit-tracepoints.xml").write_text(ok)
    (d / "hooks-tracepoints.jsonl").write_text(json.dumps(hooks_entry("tracepoint")) + "\n")
    assert verdict.judge(str(tmp_path)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "vm: 2 kernels, 10 passed, 0 failed"
    table = out[out.index(next(l for l in out if l.startswith("kernel "))):]
    assert table[1].split()[:4] == ["6.1.0-57-amd64", "12", "30", "300"]
    assert [l.split()[:2] for l in table[2:6]] == [
        ["inode_dirty", "fentry"], ["copy_up", "kprobe"], ["sync_fs", "fentry"], ["wb_error", "fentry"]]
    assert table[3].endswith("| tracepoint (stand-in: ovl_copy_up_flags is in module overlay, "
                             "and bcc 0.26 finds fentry targets only in vmlinux BTF)")
    assert table[6] == "  least caps   +bpf,+perfmon,+sys_ptrace,+dac_read_search: doctor attached"
    # doctor with the least capabilities must have attached
    (d / "doctor-rc.txt").write_text("1 +bpf,+perfmon\n")
    (d / "doctor.txt").write_text("  attach failed: could not open bpf map: x, error: EPERM\n")
    assert verdict.judge(str(tmp_path)) == 1
    assert ("vm 5.10: doctor with only +bpf,+perfmon exited 1: attach failed: could not open "
            "bpf map: x, error: EPERM") in capsys.readouterr().out
    (d / "doctor-rc.txt").write_text("0 +bpf,+perfmon\n")
    (d / "doctor.txt").write_text("hooks (mode auto; ...; as attached just now)\n")
    # a guest that booted another kernel does not count
    (d / "uname.txt").write_text("6.1.0-57-amd64\n")
    assert verdict.judge(str(tmp_path)) == 1
    assert "vm 5.10: the guest ran 6.1.0-57-amd64, not 5.10.0-46-amd64" in capsys.readouterr().out
