"""After the compile, ovltrace gives back what only the compile needed
(ovltrace/memory.py): the compiler libraries' pages and glibc's freed
heap, measured in a real session's own /proc/self/smaps."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.live

PROBE = r"""
import json, sys
from ovltrace.session import Session

def compiler_rss_kib():
    rss, cur = 0, False
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):
            cur = len(parts) > 5 and ("/libLLVM" in parts[5] or "/libclang" in parts[5])
        elif parts[0] == "Rss:" and cur:
            rss += int(parts[1])
    return rss

s = Session()
s.__enter__()
try:
    s.start()
    status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status")
              if l.startswith(("VmRSS", "VmHWM"))}
    print(json.dumps({"compiler": compiler_rss_kib(), **status}))
finally:
    s.__exit__(None, None, None)
"""


def test_the_compilers_memory_is_given_back():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    import json
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nafter start: RSS {got['VmRSS'] // 1024} MiB (peak {got['VmHWM'] // 1024} MiB), "
          f"compiler libraries resident {got['compiler'] // 1024} MiB")
    # the compile touched tens of MiB of LLVM/clang code (the peak shows
    # it; about 85 MiB stays resident without the release); after start
    # only their written data pages remain (about 10 MiB: private copies,
    # which only swap could take)
    assert got["VmHWM"] - got["VmRSS"] > 40 * 1024, got
    assert got["compiler"] < 20 * 1024, got
