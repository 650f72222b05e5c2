"""The directory-answer cache (bpf/ovltrace.bpf.c, dcache), for real: a new file's owner comes from its
directory's cached answer, and no answer outlives a move of the
directory (a rename anywhere voids them all), nor the directory itself
(a removed directory whose dentry, inode and number are reused by a new
one in another container).  Counts are exact on both sides, and each
test checks that the cache was used, or it would prove nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import ctypes

import pytest

from conftest import audit_json, by_mountpoint, sh
from ovltrace import bpfdefs
from ovltrace.session import Session

pytestmark = pytest.mark.live

KiB = 1 << 10


def new_files(directory: str, prefix: str, n: int, size: int = 4 * KiB) -> None:
    for i in range(n):
        with open(os.path.join(directory, f"{prefix}{i}"), "wb") as f:
            f.write(b"d" * size)


def outside(report: dict, upper_dev: str) -> dict:
    return next(u["outside_overlays"] for u in report["upper_filesystems"]
                if u["upper_dev"] == upper_dev)


def test_a_moved_directory_takes_its_new_owner(sandbox):
    """Host-side moves (the cache keys on the directory's dentry, which a
    rename keeps): A's directory moved into B's upperdir, then a
    directory from outside any overlay moved into A's."""
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    loose = os.path.join(sandbox.upper_fs, "loose")

    def work():
        os.makedirs(f"{a.upperdir}/d/e")
        os.makedirs(loose)
        new_files(f"{a.upperdir}/d/e", "before", 5)        # caches d/e -> A
        new_files(loose, "before", 3)                      # caches loose -> outside
        os.rename(f"{a.upperdir}/d", f"{b.upperdir}/d")     # across upperdirs
        os.rename(loose, f"{a.upperdir}/loose")            # outside -> A
        new_files(f"{b.upperdir}/d/e", "after", 7)         # B's now
        new_files(f"{a.upperdir}/loose", "after", 2)       # A's now
        sh("sync")

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    ra, rb = by_mountpoint(rep, a.mountpoint), by_mountpoint(rep, b.mountpoint)
    assert (ra["bytes_dirtied"], ra["inodes_dirtied"]) == ((5 + 2) * 4 * KiB, 5 + 2)
    assert (rb["bytes_dirtied"], rb["inodes_dirtied"]) == (7 * 4 * KiB, 7)
    # (its inode count also holds the directories the host changed there)
    assert outside(rep, sandbox.upper_dev)["bytes_dirtied"] == 3 * 4 * KiB
    # the cache was used (a host-wide count: any rename on the host voids
    # every answer, so only "some" is certain; the exact bytes above are
    # what the test is about)
    assert rep["self"]["dir_cache_hits"] >= 1, rep["self"]


# The rmdir/mkdir sequence as it happens: ext4 hands the removed
# directory's inode number to a new directory in the other container.
# (Its dentry stays behind as a negative dentry, so the cache key is not
# reused here; test_a_stale_directory_answer_is_refused makes that case.)
REUSE = r"""
import os, sys, time
old_dir, new_parent, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
def files(d, p, n):
    for i in range(n):
        with open(f"{d}/{p}{i}", "wb") as f:
            f.write(b"r" * 4096)
os.makedirs(old_dir)
files(old_dir, "a", 3)
old_ino = os.stat(old_dir).st_ino
os.sync()
for i in range(3):
    os.unlink(f"{old_dir}/a{i}")
os.rmdir(old_dir)
for t in range(tries):
    time.sleep(0.05)                       # an RCU grace period
    d = f"{new_parent}/n{t}"
    os.mkdir(d)
    if os.stat(d).st_ino == old_ino:
        files(d, "b", 4)
        print(d)
        break
    os.rmdir(d)
else:
    print("")
"""


def test_a_reused_directory_is_not_the_old_one(sandbox):
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    seen = {}

    def work():
        out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", REUSE,
                              f"{a.upperdir}/old", b.upperdir, "200"],
                             capture_output=True, text=True, check=True).stdout.strip()
        seen["new"] = out
        time.sleep(0.2)
        sh("sync")

    rep = audit_json(["--overlay", a.mountpoint, "--overlay", b.mountpoint], work)
    assert seen["new"], "no new directory reused the removed one's inode number in 200 tries"
    ra, rb = by_mountpoint(rep, a.mountpoint), by_mountpoint(rep, b.mountpoint)
    # bytes only: the inode counts also hold the directories made and removed
    assert (ra["bytes_dirtied"], rb["bytes_dirtied"]) == (3 * 4 * KiB, 4 * 4 * KiB)
    assert rep["self"]["dir_cache_hits"] >= 1, rep["self"]


M64 = (1 << 64) - 1


def dcache_check(e) -> int:
    """bpf/ovltrace.bpf.c dcache_check(), for entries this test forges."""
    return (e.dentry ^ e.inode ^ e.ino ^ e.rseq ^ (e.igen << 32 | e.slot) ^ (e.gen << 32 | e.role)
            ^ (e.epoch << 32 | e.dev) ^ 0x646972636163686F) & M64


def test_a_stale_directory_answer_is_refused(sandbox):
    """What a directory whose dentry, inode and number were reused would
    meet (slab reuse cannot be forced from userspace), made on purpose:
    the cached answer of B's directory rewritten to say A, with one
    identity field off.  The kernel must refuse it and charge B.  A
    control entry with every field right must be obeyed (charging A), or
    the test could not fail."""
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    os.makedirs(f"{b.mountpoint}/dir")
    dir_ino = os.stat(f"{b.upperdir}/dir").st_ino
    major, minor = (int(x) for x in sandbox.upper_dev.split(":"))
    kdev = major << 20 | minor                   # the kernel's dev_t, as the maps hold it
    with Session() as s:
        s.start()
        for _ in range(10):
            s.step(0.1)
        table = s.probes.bpf["dcache"]
        dirs = s.probes.bpf["dirs"]
        [a_ref] = [v for k, v in dirs.items() if k.dev == kdev
                   and k.ino == os.stat(a.upperdir).st_ino and v.role == bpfdefs.ROLE_UPPER]
        new_files(f"{b.mountpoint}/dir", "first", 1)            # caches dir -> B
        found = [(k.value, v) for k, v in table.items() if v.dev == kdev and v.ino == dir_ino]
        [(idx, entry)] = found
        assert entry.role == bpfdefs.ROLE_UPPER and entry.slot != a_ref.slot

        def forge(**off) -> None:
            e = type(entry)()
            ctypes.memmove(ctypes.addressof(e), ctypes.addressof(entry), ctypes.sizeof(e))
            e.slot, e.gen = a_ref.slot, a_ref.gen
            for name, delta in off.items():
                setattr(e, name, getattr(e, name) ^ delta)
            e.check = dcache_check(e)
            table[ctypes.c_int(idx)] = e

        for i, off in enumerate([{"igen": 1}, {"ino": 1}, {"inode": 64}, {"rseq": 1}]):
            forge(**off)
            new_files(f"{b.mountpoint}/dir", f"off{i}-", 1)      # refused: B's
        forge()
        new_files(f"{b.mountpoint}/dir", "control", 1)           # obeyed: A's
        for _ in range(5):
            s.step(0.1)
        model = s.finish()
        got = {m.mountpoint: model.counters_at(k, s.now()).bytes_dirtied
               for k, m in model.metas.items() if m.kind == "overlay"}
    assert (got[a.mountpoint], got[b.mountpoint]) == (4 * KiB, 5 * 4 * KiB)
