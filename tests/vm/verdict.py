"""The VM matrix's verdict, from the files each guest leaves in its rwdir
(not from an exit code: a guest that dies half-way must not look green).

    verdict.py hooks LOG MODE     # guest: which mechanism each hook used
    verdict.py judge OUT [-n]     # host: every kernel's passes

OUT/kernels.txt (written by tests/vm/run) lists one line per kernel booted:
`SERIES KVER VERSION MODE...`; each kernel's guest wrote into OUT/SERIES/:
uname.txt (`uname -r` in the guest), junit-<mode>.xml (pytest --junitxml),
hooks-<mode>.jsonl (tests/conftest.py log_hooks: one line per ovltrace
report) and times.txt (`<what> <seconds>` lines).  judge fails unless
every kernel booted the kernel asked for, every pass ran every expected
test (expected-<mode>.txt, collected on the host from tests/vm/select) with none failed or errored and
no skip but the documented ones, and every function hook ran on the pass's
mechanism, or on its tracepoint stand-in for a documented limit.
-n: the selection was narrowed by extra pytest arguments, so a pass with no
ovltrace report is not a problem.
"""
from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from ovltrace.kernel.layout import FUNCTIONS  # noqa: E402
from ovltrace.hooks import FORCED  # noqa: E402

PASSES = {**FORCED, "tracepoints": "tracepoint"}   # OVLTRACE_HOOKS -> mechanism, one pass each
FUNCTION_HOOKS = tuple(FUNCTIONS)
# (pass, hook) that a forced mechanism cannot reach, and the words its
# documented limit says (ovltrace.hooks.known_limit, README "Hooks"): the
# tracepoint stand-in serves the hook then.  Overlay is a module in
# Debian's kernels, bcc 0.26 finds fentry targets only in vmlinux BTF,
# and before 5.11 modules have no BTF at all.
NO_MODULE_BTF = "which has no BTF here"
DOCUMENTED = {("fentry", "copy_up"): ("finds fentry targets only in vmlinux BTF", NO_MODULE_BTF),
              ("kprobes", "copy_up"): (NO_MODULE_BTF,)}


def node_key(nodeid: str) -> tuple[str, str]:
    """pytest node id -> (junit classname, name)."""
    path, *parts = nodeid.split("::")
    mod = path[:-3] if path.endswith(".py") else path
    return ".".join([mod.replace("/", ".")] + parts[:-1]), parts[-1] if parts else ""


def parse_junit(text: str) -> list[tuple[tuple[str, str], str, str]]:
    """[((classname, name), outcome, message)]; outcome passed, failed,
    error or skipped."""
    out = []
    for tc in ET.fromstring(text).iter("testcase"):
        outcome, msg = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                msg = child.get("message") or (child.text or "").strip()
                break
        out.append(((tc.get("classname", ""), tc.get("name", "")), outcome, msg))
    return out


def documented(mode: str, hook: str, text: str) -> bool:
    return any(w in text for w in DOCUMENTED.get((mode, hook), ()))


def documented_skip(mode: str, msg: str) -> bool:
    """A hook off under a forced mechanism, for a documented limit, with
    no stand-in either (tests/conftest.py skip_if_hook_off_by_limit)."""
    return any(msg.startswith(f"{hook} off under --hooks {mode}: ") and documented(mode, hook, msg)
               for m, hook in DOCUMENTED if m == mode)


def short(msg: str) -> str:
    """'copy_up off under --hooks fentry: fentry: <error>; <limit>' -> the
    first and last parts."""
    head, _, rest = msg.partition(": ")
    return f"{head}: {rest.rpartition('; ')[2]}" if rest else msg


def judge_tests(label: str, mode: str, results, expected: list[str]
                ) -> tuple[str, list[str], int, int]:
    """(summary line, problems, passed, failed) of one pass."""
    problems = []
    seen = {key for key, _, _ in results}
    missing = [e for e in expected if node_key(e) not in seen]
    for e in missing:
        problems.append(f"{label}: MISSING {e}")
    n = Counter(outcome for _, outcome, _ in results)
    bad_skips = 0
    reasons = Counter()
    for (cls, name), outcome, msg in results:
        if outcome in ("failed", "error"):
            problems.append(f"{label}: {outcome.upper()} {cls}::{name}: {msg[:300]}")
        elif outcome == "skipped":
            if documented_skip(mode, msg):
                reasons[short(msg)] += 1
            else:
                bad_skips += 1
                problems.append(f"{label}: UNDOCUMENTED SKIP {cls}::{name}: {msg[:300]}")
    line = f"{label}: {n['passed']} passed, {n['skipped']} skipped"
    if reasons:
        line += " (" + "; ".join(f"{c} x {r}" for r, c in reasons.items()) + ")"
    if n["failed"] or n["error"]:
        line += f", {n['failed']} failed, {n['error']} errors"
    if missing:
        line += f", {len(missing)} missing"
    return line, problems, n["passed"], n["failed"] + n["error"] + len(missing) + bad_skips


def used_as(v: dict) -> str:
    """One hook in one report: its mechanism, 'stand-in: <limit>' or 'off: <limit>'."""
    limit = (v.get("limit") or "").rpartition("; ")[2]
    if v.get("mechanism") and v.get("limit"):
        return f"{v['mechanism']} (stand-in: {limit})"
    return v.get("mechanism") or f"off: {limit or 'no reason'}"


def hooks_used(entries: list[dict]) -> dict[str, Counter]:
    """hook -> Counter of how it was served (used_as) over all reports."""
    used: dict[str, Counter] = {h: Counter() for h in FUNCTION_HOOKS}
    for e in entries:
        for h in FUNCTION_HOOKS:
            used[h][used_as(e["hooks"].get(h, {}))] += 1
    return used


def judge_hooks(label: str, mode: str, entries: list[dict], narrowed: bool = False
                ) -> tuple[str, list[str]]:
    """(line naming each function hook's mechanism in this pass, problems)."""
    mech = PASSES[mode]
    if not entries:
        return (f"{label} hooks: no ovltrace report recorded",
                [] if narrowed else [f"{label}: no ovltrace report recorded its hooks"])
    problems, parts = [], []
    for h, used in hooks_used(entries).items():
        for what in used:
            if what == mech or (what.startswith(("tracepoint (stand-in: ", "off: "))
                                and documented(mode, h, what)):
                continue
            problems.append(f"{label}: {h} used {what!r} in {used[what]} report(s), not {mech}")
        parts.append(f"{h} {' or '.join(used)}")
    return f"{label} hooks ({len(entries)} reports): " + "; ".join(parts), problems


def read_jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def read_times(path: str) -> dict[str, float]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                what, _, secs = line.strip().rpartition(" ")
                try:
                    out[what] = float(secs)
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def judge_doctor(d: str) -> tuple[str, str | None]:
    """(the capabilities doctor ran with, a problem or None): the guest
    runs doctor with only the capabilities deploy/ grants; it must exit 0
    having attached its hooks."""
    try:
        with open(os.path.join(d, "doctor-rc.txt")) as f:
            rc, _, caps = f.read().strip().partition(" ")
        with open(os.path.join(d, "doctor.txt")) as f:
            text = f.read()
    except FileNotFoundError:
        return "?", "doctor with the least capabilities left no result"
    if rc != "0" or "as attached just now" not in text:
        why = [l.strip() for l in text.splitlines() if "attach failed" in l or "MISSING" in l]
        return caps, f"doctor with only {caps} exited {rc}: {'; '.join(why) or 'not attached'}"
    return caps, None


def judge_kernel(out: str, series: str, kver: str, modes: list[str],
                 expected: dict[str, list[str]], narrowed: bool) -> tuple[list[str], list[str], int, int, dict]:
    """(report lines, problems, passed, failed, summary row) of one kernel."""
    d = os.path.join(out, series)
    lines, problems = [], []
    passed = failed = 0
    try:
        with open(os.path.join(d, "uname.txt")) as f:
            booted = f.read().strip()
    except FileNotFoundError:
        booted = None
    if booted != kver:
        problems.append(f"vm {series}: the guest ran {booted or 'nothing'}, not {kver}")
    caps, doctor_problem = judge_doctor(d)
    if doctor_problem:
        problems.append(f"vm {series}: {doctor_problem}")
    mechs: dict[str, set[str]] = {h: set() for h in FUNCTION_HOOKS}
    for mode in modes:
        label = f"vm {series} {mode}"
        path = os.path.join(d, f"junit-{mode}.xml")
        try:
            with open(path) as f:
                results = parse_junit(f.read())
        except (OSError, ET.ParseError) as e:
            problems.append(f"{label}: pass did not run or left no result ({path}: {e})")
            results = []
        line, probs, p, fl = judge_tests(label, mode, results, expected.get(mode, []))
        entries = read_jsonl(os.path.join(d, f"hooks-{mode}.jsonl"))
        hline, hprobs = judge_hooks(label, mode, entries, narrowed)
        for h, used in hooks_used(entries).items():
            mechs[h].update(used)
        lines += [line, hline]
        problems += probs + hprobs
        passed, failed = passed + p, failed + fl
    times = read_times(os.path.join(d, "times.txt"))
    row = {"kernel": booted or kver, "boot_s": times.get("boot"),
           "compile_s": times.get("compile"), "passes": " ".join(modes),
           "tests": f"{passed} passed, {failed} failed", "hooks": mechs,
           "seconds": times.get("total"), "caps": caps, "caps_ok": doctor_problem is None}
    return lines, problems, passed, failed, row


def summary(rows: list[dict]) -> list[str]:
    """The closing table: per kernel, its times and what served each hook."""
    def s(v):
        return "?" if v is None else f"{v:.0f}"
    out = ["", f"{'kernel':<22} {'boot s':>6} {'compile s':>9} {'total s':>7}  tests"]
    for r in rows:
        out.append(f"{r['kernel']:<22} {s(r['boot_s']):>6} {s(r['compile_s']):>9} "
                   f"{s(r['seconds']):>7}  {r['tests']} ({r['passes']})")
        for h, used in r["hooks"].items():
            out.append(f"  {h:<12} {' | '.join(sorted(used)) or '-'}")
        if "caps" in r:
            out.append(f"  {'least caps':<12} {r['caps']}: "
                       + ("doctor attached" if r["caps_ok"] else "FAILED"))
    return out


def judge(out: str, narrowed: bool = False) -> int:
    expected = {}
    for mode in PASSES:
        try:
            with open(os.path.join(out, f"expected-{mode}.txt")) as f:
                expected[mode] = [l.strip() for l in f if "::" in l]
        except FileNotFoundError:
            pass
    kernels = []
    try:
        with open(os.path.join(out, "kernels.txt")) as f:
            kernels = [l.split() for l in f if l.strip()]
    except FileNotFoundError:
        pass
    problems: list[str] = []
    passed = failed = 0
    if not any(expected.values()):
        problems.append("vm: no expected tests (host collection empty)")
    if not kernels:
        problems.append("vm: no kernel was booted (kernels.txt empty)")
    rows = []
    for series, kver, _version, *modes in kernels:
        lines, probs, p, fl, row = judge_kernel(out, series, kver, modes, expected, narrowed)
        for l in lines:
            print(l)
        problems += probs
        passed, failed = passed + p, failed + fl
        rows.append(row)
    for l in summary(rows):
        print(l)
    for p in problems:
        print(p)
    print(f"vm: {len(kernels)} kernels, {passed} passed, {failed} failed")
    return 1 if problems or failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["hooks"] and len(argv) == 3:
        line, problems = judge_hooks("guest", argv[2], read_jsonl(argv[1]), narrowed=True)
        print(line)
        for p in problems:
            print(p)
        return 0
    if argv[:1] == ["judge"] and len(argv) in (2, 3):
        return judge(argv[1], narrowed=argv[2:] == ["-n"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
