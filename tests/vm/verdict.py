"""The VM run's verdict, from the files the guest leaves in its rwdir (not
from an exit code: a guest that dies half-way must not look green).

    verdict.py hooks LOG MODE     # guest: which mechanism each hook used
    verdict.py judge OUT [-n]     # host: both passes' junit XML + hook logs

Per pass (OVLTRACE_HOOKS=fentry, then kprobes) the guest writes
junit-<mode>.xml (pytest --junitxml) and hooks-<mode>.jsonl (tests/conftest.py
log_hooks: one line per ovltrace report).  judge fails unless both passes
ran, every expected test (expected.txt, collected on the host) is in each,
none failed or errored, skips are only the documented ones, and every
function hook ran on the pass's mechanism (or was off for a documented limit).
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

PASSES = FORCED                          # OVLTRACE_HOOKS -> mechanism, one pass each
FUNCTION_HOOKS = tuple(FUNCTIONS)
# (pass, hook) that may be off, and the words its reason must hold: overlay
# is a module in Debian 6.1, and bcc 0.26 finds fentry targets only in
# vmlinux BTF (README "Hooks", ovltrace.probes.known_limit).  The tests
# that check copy-up counts skip then (tests/conftest.py
# skip_if_hook_off_by_limit), with "<hook> off under --hooks <pass>: <reason>".
DOCUMENTED_OFF = {("fentry", "copy_up"): "finds fentry targets only in vmlinux BTF"}


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


def documented_skip(mode: str, msg: str) -> bool:
    for (m, hook), words in DOCUMENTED_OFF.items():
        if m == mode and msg.startswith(f"{hook} off under --hooks {mode}: ") and words in msg:
            return True
    return False


def short(msg: str) -> str:
    """'copy_up off under --hooks fentry: fentry: <error>; <limit>' -> the
    first and last parts."""
    head, _, rest = msg.partition(": ")
    return f"{head}: {rest.rpartition('; ')[2]}" if rest else msg


def judge_tests(mode: str, results, expected: list[str]) -> tuple[str, list[str], int, int]:
    """(summary line, problems, passed, failed) of one pass."""
    problems = []
    seen = {key for key, _, _ in results}
    missing = [e for e in expected if node_key(e) not in seen]
    for e in missing:
        problems.append(f"vm {mode}: MISSING {e}")
    n = Counter(outcome for _, outcome, _ in results)
    bad_skips = 0
    reasons = Counter()
    for (cls, name), outcome, msg in results:
        if outcome in ("failed", "error"):
            problems.append(f"vm {mode}: {outcome.upper()} {cls}::{name}: {msg[:300]}")
        elif outcome == "skipped":
            if documented_skip(mode, msg):
                reasons[short(msg)] += 1
            else:
                bad_skips += 1
                problems.append(f"vm {mode}: UNDOCUMENTED SKIP {cls}::{name}: {msg[:300]}")
    line = f"vm {mode}: {n['passed']} passed, {n['skipped']} skipped"
    if reasons:
        line += " (" + "; ".join(f"{c} x {r}" for r, c in reasons.items()) + ")"
    if n["failed"] or n["error"]:
        line += f", {n['failed']} failed, {n['error']} errors"
    if missing:
        line += f", {len(missing)} missing"
    return line, problems, n["passed"], n["failed"] + n["error"] + len(missing) + bad_skips


def hooks_used(entries: list[dict]) -> dict[str, Counter]:
    """hook -> Counter of 'mechanism' (or 'off: <limit>') over all reports."""
    used: dict[str, Counter] = {h: Counter() for h in FUNCTION_HOOKS}
    for e in entries:
        for h in FUNCTION_HOOKS:
            v = e["hooks"].get(h, {})
            used[h][v.get("mechanism") or f"off: {v.get('limit') or 'no reason'}"] += 1
    return used


def judge_hooks(mode: str, entries: list[dict], narrowed: bool = False) -> tuple[str, list[str]]:
    """(line naming each function hook's mechanism in this pass, problems)."""
    mech = PASSES[mode]
    if not entries:
        return (f"vm {mode} hooks: no ovltrace report recorded",
                [] if narrowed else [f"vm {mode}: no ovltrace report recorded its hooks"])
    problems, parts = [], []
    for h, used in hooks_used(entries).items():
        words = DOCUMENTED_OFF.get((mode, h))
        for what in used:
            if what == mech or (words and what.startswith("off: ") and words in what):
                continue
            problems.append(f"vm {mode}: {h} used {what!r} in {used[what]} report(s), "
                            f"not {mech}")
        shown = [f"off ({w[5:].rpartition('; ')[2]})" if w.startswith("off: ") else w for w in used]
        parts.append(f"{h} {' or '.join(shown)}")
    return f"vm {mode} hooks ({len(entries)} reports): " + "; ".join(parts), problems


def read_jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def judge(out: str, narrowed: bool = False) -> int:
    with open(os.path.join(out, "expected.txt")) as f:
        expected = [l.strip() for l in f if "::" in l]
    problems: list[str] = []
    passed = failed = 0
    if not expected:
        problems.append("vm: no expected tests (host collection empty)")
    for mode in PASSES:
        path = os.path.join(out, f"junit-{mode}.xml")
        try:
            with open(path) as f:
                results = parse_junit(f.read())
        except (OSError, ET.ParseError) as e:
            problems.append(f"vm {mode}: pass did not run or left no result ({path}: {e})")
            results = []
        line, probs, p, fl = judge_tests(mode, results, expected)
        print(line)
        hline, hprobs = judge_hooks(mode, read_jsonl(os.path.join(out, f"hooks-{mode}.jsonl")),
                                    narrowed)
        print(hline)
        problems += probs + hprobs
        passed, failed = passed + p, failed + fl
    for p in problems:
        print(p)
    print(f"vm: {passed} passed, {failed} failed")
    return 1 if problems or failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["hooks"] and len(argv) == 3:
        line, problems = judge_hooks(argv[2], read_jsonl(argv[1]), narrowed=True)
        print(line.replace("vm ", "guest: ", 1))
        for p in problems:
            print(p.replace("vm ", "guest: ", 1))
        return 0
    if argv[:1] == ["judge"] and len(argv) in (2, 3):
        return judge(argv[1], narrowed=argv[2:] == ["-n"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
