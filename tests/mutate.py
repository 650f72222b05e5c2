#!/usr/bin/env python3
"""`make mutate`: plant known bugs, one at a time, and require the suite
to catch each.  A suite that stays green with a bug planted cannot be
trusted with the numbers it checks.

Each mutant is one exact text replacement in a copy of the tree (never
in the working tree), run against only the tests that can see it, so the
whole check takes minutes.  It prints which tests caught which mutant
and ends with `K/N mutants killed`; the exit status is 0 only if K = N.
A mutant whose text no longer applies is an error: the list must follow
the code.

    sudo .venv/bin/python tests/mutate.py            # every mutant
    sudo .venv/bin/python tests/mutate.py -k folio   # those whose name matches
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache",
                              "*.pyc", "*.egg-info", "build")


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: list[str]


MUTANTS = [
    Mutant("replay doubles every counter", "ovltrace/recording.py",
           "values = {k: Counters.from_values(v) for k, v in rec[\"values\"].items()}",
           "values = {k: Counters.from_values(v) + Counters.from_values(v)"
           " for k, v in rec[\"values\"].items()}",
           ["tests/test_recording.py"]),
    Mutant("a flush drops a victim", "ovltrace/session.py",
           "vs = [Victim(k, b) for k, b in by_key.items()]",
           "vs = [Victim(k, b) for k, b in by_key.items()][1:]",
           ["tests/test_live_core.py::test_syncfs_interference",
            "tests/test_one_truth_live.py"]),
    Mutant("two containers' bytes swapped", "ovltrace/session.py",
           "counters = {self.watched[s].key: self._charged(self.watched[s].key, c)\n"
           "                    for s, c in stats.items()}",
           "counters = dict(zip([self.watched[s].key for s in stats][::-1], stats.values()))",
           ["tests/test_live_core.py::test_attribution_three_overlays"]),
    Mutant("the last flush is lost", "ovltrace/session.py",
           "sample = self._read_sample(final=True)",
           "sample = self._read_sample(final=False)",
           ["tests/test_live_core.py::test_unmount_flushes_the_neighbours"]),
    Mutant("a returned errno mis-signed", "ovltrace/analysis.py",
           "ErrorReturned(f.end, f.target, \"syncfs\", -f.ret, f.pid, f.comm)",
           "ErrorReturned(f.end, f.target, \"syncfs\", f.ret, f.pid, f.comm)",
           ["tests/test_model.py", "tests/test_live_errors.py"]),
    Mutant("a large folio counted as one page", "bpf/ovltrace.bpf.c",
           "bytes = K_PAGE_SIZE << (f.w[OFF_folio__flags_1 / 8] & 0xff);",
           "bytes = K_PAGE_SIZE;",
           ["tests/test_live_core.py::test_attribution_three_overlays"]),
    Mutant("a workdir file charged to the upper fs", "bpf/ovltrace.bpf.c",
           "\t\t\to->role = dv->role;\n\t\t\tfound = 1;",
           "\t\t\to->role = dv->role;\n\t\t\tif (dv->role == ROLE_WORK) {"
           " struct slot_ref *r = upper_devs.lookup(&dev); if (r) { o->slot = r->slot;"
           " o->gen = r->gen; o->role = ROLE_FS; } }\n\t\t\tfound = 1;",
           ["tests/test_live_core.py::test_copy_up_of_big_lower_file"]),
    Mutant("stall counts a flush's whole duration per victim", "ovltrace/views/exporter.py",
           "            m[1] += s.seconds", "            m[1] += f.duration",
           ["tests/test_exporter.py", "tests/test_one_truth_live.py"]),
    Mutant("no orphan is kept while a mount is unsettled", "bpf/ovltrace.bpf.c",
           "if (found == 2 && unsettled) {", "if (found == 2 && unsettled && 0) {",
           ["tests/test_live_instant.py::test_the_new_mount_api_too"]),
    Mutant("an orphan no overlay claims is dropped", "ovltrace/session.py",
           "owner = fs.key if fs is not None else None", "owner = None",
           ["tests/test_live_instant.py::test_host_writes_beside_instant_mounts_stay_the_upper_fs"]),
    Mutant("the kernel adds to an orphan after userspace decided it", "bpf/ovltrace.bpf.c",
           "\tif (orphans_decided.lookup(&k))\n\t\treturn 0;\n", "",
           ["tests/test_live_instant.py::test_an_orphan_decided_stops_growing_before_it_is_dropped"]),
    Mutant("a slotless overlay's orphans dropped once they stand still", "ovltrace/session.py",
           "        if w is None:\n            return still", "        if True:\n            return still",
           ["tests/test_live_instant.py::"
            "test_an_overlay_without_a_slot_keeps_its_orphans_until_it_is_forgotten"]),
    Mutant("an orphan charged to an overlay mounted after it", "ovltrace/session.py",
           "w.mounted_ns <= o.first_ns", "w.mounted_ns is not None",
           ["tests/test_mountevents.py"]),
    Mutant("a Docker init layer is nobody's", "ovltrace/containers.py",
           'c = self._by_upper.get(f"{m.group(1)}/overlay2/{m.group(2)}/diff")', "c = None",
           ["tests/test_lifecycle_live.py"]),
    Mutant("a container named only if its state was on disk at mount", "ovltrace/session.py",
           "if self._unnamed and self.resolver.version != self._named_at:", "if False:",
           ["tests/test_lifecycle_live.py"]),
    Mutant("lifecycle stall counted whole per neighbour", "ovltrace/analysis.py",
           "            n.seconds += s.seconds", "            n.seconds += e.flush.duration",
           ["tests/test_lifecycle.py"]),
    Mutant("the text format lets a quote through", "ovltrace/views/exposition.py",
           r""".replace('"', '\\"')""", "",
           ["tests/test_exporter.py"]),
    Mutant("Markdown lets a pipe through", "ovltrace/untrusted.py",
           r'_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")',
           r'_MD_SPECIAL = re.compile(r"([\\`*_\[\]~])")',
           ["tests/test_untrusted.py"]),
    Mutant("basic auth lets any password in", "ovltrace/commands/exporter.py",
           "and not auth.allowed(cfg.users, environ.get(\"HTTP_AUTHORIZATION\")):",
           "and not auth.allowed(cfg.users, environ.get(\"HTTP_AUTHORIZATION\")) and False:",
           ["tests/test_exporter_secure_live.py::test_tls_and_basic_auth_with_a_real_prometheus"]),
    Mutant("a missing capability goes unnamed", "ovltrace/privileges.py",
           "        if lack and not need.without:\n            if i == 0:",
           "        if lack and not need.without and False:\n            if i == 0:",
           ["tests/test_image_live.py::test_one_capability_fewer_is_named"]),
    Mutant("a client certificate is taken unverified", "ovltrace/commands/webconfig.py",
           '"VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,',
           '"VerifyClientCertIfGiven": ssl.CERT_NONE,',
           ["tests/test_exporter_secure_live.py::test_tls_and_basic_auth_with_a_real_prometheus"]),
    Mutant("the fleet window uses increase()", "ovltrace/fleet.py",
           'return f"sum by ({\', \'.join(by)}) ({per_series})"',
           'return f"sum by ({\', \'.join(by)}) (increase({m}[{rng}]))"',
           ["tests/test_fleet_backfill.py::test_window_deltas_are_exact"]),
    Mutant("the fleet's silent loss ignores errors handed back", "ovltrace/report/fleet.py",
           '"silent_loss": bool(o["writeback_errors"]) and not returned.get(name)})',
           '"silent_loss": bool(o["writeback_errors"])})',
           ["tests/test_fleet_live.py::test_a_later_window_sees_that_b_was_told"]),
    Mutant("the fleet merges a workload's nodes away", "ovltrace/report/fleet.py",
           'g["nodes"].append(f["node"])',
           'g["nodes"] = [f["node"]]',
           ["tests/test_fleet_backfill.py::test_workloads_gather_across_nodes"]),
    Mutant("a rename leaves directory answers valid", "bpf/ovltrace.bpf.c",
           "	if (ret < 0)\n		return;\n	u32 idx = KS_RENAME_SEQ;",
           "	if (ret < 0 || 1)\n		return;\n	u32 idx = KS_RENAME_SEQ;",
           ["tests/test_live_dircache.py::test_a_moved_directory_takes_its_new_owner"]),
    Mutant("a reused directory keeps the old answer", "bpf/ovltrace.bpf.c",
           "	if (ce.igen != igen)\n		return 0;",
           "	if (ce.igen != igen && 0)\n		return 0;",
           ["tests/test_live_dircache.py::test_a_stale_directory_answer_is_refused"]),
    Mutant("the compiler's pages are kept", "ovltrace/memory.py",
           "            libc.madvise(start, end - start, MADV_DONTNEED)",
           "            pass",
           ["tests/test_memory_live.py::test_the_compilers_memory_is_given_back"]),
    Mutant("relocated (RELRO) pages dropped too", "ovltrace/memory.py",
           "                if int(parts[1]) == 0:",
           "                if int(parts[1]) >= 0:",
           ["tests/test_memory_live.py::test_only_clean_read_only_compiler_mappings_are_chosen"]),
    Mutant("the exporter keeps what it consumed", "ovltrace/views/exporter.py",
           "                model.release(view.cursor)",
           "                model.release(self._cursor)",
           ["tests/test_exporter.py::test_the_sole_reader_releases_what_it_consumed"]),
    Mutant("every (slot, gen) kept forever", "ovltrace/session.py",
           "        for sg in [sg for sg, key in self.by_slotgen.items() if key not in metas]:",
           "        for sg in [sg for sg, key in self.by_slotgen.items() if key is None]:",
           ["tests/test_session_adopt.py::test_churn_leaves_no_ids_behind"]),
    Mutant("orphans' owners forgotten too early", "ovltrace/session.py",
           "            if t >= before:\n                break",
           "            if t > before + ORPHAN_OWNER_GRACE:\n                break",
           ["tests/test_session_adopt.py::test_churn_leaves_no_ids_behind"]),
]


def copy_tree(dst: Path) -> None:
    shutil.copytree(ROOT, dst, ignore=SKIP)


def apply(tree: Path, m: Mutant) -> None:
    path = tree / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutate: mutant {m.name!r} does not apply: its text occurs {n} times "
                         f"in {m.file} (update tests/mutate.py with the code)")
    path.write_text(text.replace(m.old, m.new))


def run(tree: Path, tests: list[str]) -> tuple[bool, list[str], float]:
    """Run tests in a copy of the tree; (any failed, failed tests, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", "-rf", *tests], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=900)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)))
    return r.returncode != 0, failed, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[],
                    help="only mutants whose name contains this (repeatable)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("mutate: needs root (the live tests load BPF and mount filesystems)")
        return 1
    chosen = [m for m in MUTANTS if not a.k or any(k in m.name for k in a.k)]
    if not chosen:
        print(f"mutate: no mutant's name contains {' or '.join(a.k)}")
        return 1
    killed = 0
    with tempfile.TemporaryDirectory(prefix="ovltrace-mutate.") as tmp:
        base = Path(tmp) / "clean"
        copy_tree(base)
        # unmutated, the same tests must pass: a failure below is the mutant's
        union = sorted({t for m in chosen for t in m.tests})
        bad, failed, secs = run(base, union)
        if bad:
            print(f"mutate: the unmutated copy fails {', '.join(failed) or 'to run'}: "
                  "fix the suite first")
            return 1
        print(f"unmutated: {len(union)} test selections pass ({secs:.0f}s)", flush=True)
        for m in chosen:
            tree = Path(tmp) / "mutant"
            shutil.copytree(base, tree)
            try:
                apply(tree, m)
                dead, failed, secs = run(tree, m.tests)
            finally:
                shutil.rmtree(tree, ignore_errors=True)
            killed += dead
            caught = ", ".join(f.split("::")[-1] for f in failed) or "-"
            print(f"{'killed' if dead else 'SURVIVED'}  {m.name} ({secs:.0f}s): caught by {caught}",
                  flush=True)
    print(f"{killed}/{len(chosen)} mutants killed")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
