"""After the compile, ovltrace gives back what only the compile needed
(ovltrace/memory.py): the compiler libraries' clean pages and glibc's
freed heap, measured in a real session's own /proc/self/smaps; and the
choice of mappings, on a hand-made smaps (a RELRO segment must stay)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from ovltrace.memory import clean_compiler_mappings

PROBE = r"""
import json
from ovltrace.session import Session

def compiler_kib():
    rss = anon = 0
    cur = False
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):
            cur = len(parts) > 5 and ("/libLLVM" in parts[5] or "/libclang" in parts[5])
        elif cur and parts[0] == "Rss:":
            rss += int(parts[1])
        elif cur and parts[0] == "Anonymous:":
            anon += int(parts[1])
    return rss, anon

with Session() as s:
    s.start()
    rss, anon = compiler_kib()
    status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status")
              if l.startswith(("VmRSS", "VmHWM"))}
    print(json.dumps({"compiler": rss, "compiler_private": anon, **status}))
"""


@pytest.mark.live
def test_the_compilers_memory_is_given_back():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nafter start: RSS {got['VmRSS'] // 1024} MiB (peak {got['VmHWM'] // 1024} MiB), "
          f"compiler libraries resident {got['compiler'] // 1024} MiB "
          f"({got['compiler_private'] // 1024} MiB private)")
    # the compile touched ~90 MiB of the compiler libraries (the peak shows
    # it); after start only their private pages (relocated data) remain
    assert got["VmHWM"] - got["VmRSS"] > 40 * 1024, got
    assert got["compiler"] - got["compiler_private"] < 4 * 1024, got


SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                1024 kB
Anonymous:             0 kB
7f0000100000-7f0000900000 r-xp 00100000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                8192 kB
Anonymous:             0 kB
7f0000900000-7f0000a00000 r--p 00900000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                1024 kB
Anonymous:           512 kB
7f0000a00000-7f0000a10000 rw-p 00a00000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                  64 kB
Anonymous:            64 kB
7f0000b00000-7f0000c00000 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 512 kB
Anonymous:             0 kB
7f0000c00000-7f0000d00000 r-xp 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14
Rss:                 256 kB
Anonymous:             0 kB
"""


def test_only_clean_read_only_compiler_mappings_are_chosen(tmp_path):
    path = tmp_path / "smaps"
    path.write_text(SMAPS)
    assert clean_compiler_mappings(str(path)) == [
        (0x7f0000000000, 0x7f0000100000),      # constants
        (0x7f0000100000, 0x7f0000900000),      # code
        (0x7f0000c00000, 0x7f0000d00000),      # libclang's code
    ]                                          # not RELRO (private pages), .data, nor libc
