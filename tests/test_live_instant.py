"""Containers that write the moment they mount, and are gone before the
mount table could be read: every byte still belongs to them.

The kernel side reports each overlay mount as it happens and, until
userspace has seen every mount begun, keeps dirtying under no known
overlay as orphans; userspace charges each orphan to the overlay whose
upperdir is above it (or to the rest of the upper fs).  The truth here is
what each container wrote (page-rounded, as the page cache dirties it)
and what the host wrote outside any overlay, checked on both sides."""
from __future__ import annotations

import os
import time

import pytest

from conftest import audit_json
from ovltrace.sandbox import syncfs_path
from ovltrace.session import Session
from ovltrace.workloads import instant_container, mount_overlay, unmount

pytestmark = pytest.mark.live

PAGE = 4096


def pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def instant_size(i: int) -> int:
    """A distinct byte count per container (7 is invertible mod 4096)."""
    return PAGE * (i % 13) + (i * 7) % PAGE + 1


def ours(rep: dict, sandbox) -> tuple[dict, list]:
    """The sandbox's overlays and upper fs (the audit sees the whole host)."""
    rows = {o["mountpoint"]: o for o in rep["overlays"] if o["upper_dev"] == sandbox.upper_dev}
    return rows, [u for u in rep["upper_filesystems"] if u["upper_dev"] == sandbox.upper_dev]


def check_each_exact(rep: dict, made: dict[str, int], sandbox) -> int:
    """Every container listed with exactly its bytes, and its unmount's
    flush writing back exactly those; returns the bytes those flushes
    wrote back for the upper fs outside the overlays."""
    rows, fs = ours(rep, sandbox)
    assert set(rows) == set(made), (len(rows), len(made))       # none missing, none extra
    wrong = {mp: (rows[mp]["bytes_dirtied"], rows[mp]["bytes_written_back"], pages(n))
             for mp, n in made.items()
             if (rows[mp]["bytes_dirtied"], rows[mp]["bytes_written_back"],
                 rows[mp]["inodes_dirtied"]) != (pages(n), pages(n), 1)}
    assert not wrong, f"{len(wrong)} of {len(made)} wrong: {list(wrong.items())[:5]}"
    # each unmount is a flush the container itself caused, writing back its bytes
    flushes = {f["overlay"]: f for f in rep["flushes"]
               if f["kind"] == "umount" and f["upper_dev"] == sandbox.upper_dev}
    assert set(flushes) == set(made)
    outside = 0
    for mp, n in made.items():
        victims = {v["overlay"]: v["bytes_written_back"] for v in flushes[mp]["victims"]}
        outside += victims.pop(fs[0]["mountpoint"], 0)
        assert victims == {mp: pages(n)}, (mp, flushes[mp])
    return outside


def test_a_thousand_instant_containers_each_exact(sandbox):
    made: dict[str, int] = {}

    def work():
        for i in range(1000):
            n = instant_size(i)
            made[instant_container(sandbox, f"i{i:04d}", n).mountpoint] = n

    rep = audit_json([], work)
    assert check_each_exact(rep, made, sandbox) == 0
    assert rep["self"]["orphans_full"] == 0 and rep["self"]["mount_events_dropped"] == 0
    # the upper fs itself: nothing written outside the overlays, so no byte
    # of theirs may land there (an orphan counted twice would)
    fs = ours(rep, sandbox)[1]
    assert [u["outside_overlays"]["bytes_dirtied"] for u in fs] == [0]
    assert [u["bytes_dirtied"] for u in fs] == [sum(pages(n) for n in made.values())]


def test_the_new_mount_api_too(sandbox):
    made: dict[str, int] = {}

    def work():
        for i in range(50):
            n = instant_size(i)
            made[instant_container(sandbox, f"n{i:02d}", n, new_api=True).mountpoint] = n

    rep = audit_json([], work)
    assert check_each_exact(rep, made, sandbox) == 0      # mount points learnt from move_mount


def test_host_writes_beside_instant_mounts_stay_the_upper_fs(sandbox):
    """Dirtying outside every overlay while mounts are unsettled is kept as
    orphans too: none of it may be charged to a container, all of it must
    reach the upper fs's own row."""
    made: dict[str, int] = {}
    host = 0

    def work():
        nonlocal host
        for i in range(100):
            name = f"h{i:03d}"
            n = instant_size(i)
            made[instant_container(sandbox, name, n,
                                   between=lambda i=i: _host_write(sandbox, i)).mountpoint] = n
            host += pages(PAGE * (i % 5 + 1))

    rep = audit_json([], work)
    assert check_each_exact(rep, made, sandbox) == host       # each unmount wrote back a host file too
    fs = ours(rep, sandbox)[1]
    assert [u["outside_overlays"]["bytes_dirtied"] for u in fs] == [host]


# Orphans are read, charged and dropped while the kernel may still be adding
# to them: the two tests below put a writeback exactly between the read and
# the drop (what, at random, lost 2 of 1,000 instant containers' bytes).

def test_an_orphan_decided_stops_growing_before_it_is_dropped(sandbox):
    """A host file dirtied while a mount is unsettled is an orphan of the
    upper fs.  Once decided, the kernel must send its inode's events to
    the upper fs's slot (orphans_decided), or a writeback between the last
    read and the drop lands on the orphan and is lost."""
    n = PAGE * 3 + 5
    with Session() as s:
        s.start()
        ov = sandbox.prepare_overlay("beside")
        mount_overlay(ov.lowerdir, ov.upperdir, ov.workdir, ov.mountpoint)   # unsettled until seen
        host = os.path.join(sandbox.upper_fs, "host-file")
        with open(host, "wb") as f:
            f.write(b"h" * n)
        [key] = [o.key for o in _orphans_on(s, sandbox) if o.counters.bytes_dirtied]
        drop, synced = s.probes.drop_orphans, []

        def sync_then_drop(keys):
            if key in keys and not synced:
                s.probes.settle(0)       # as if a mount had begun unseen: orphans are kept again
                syncfs_path(sandbox.upper_fs)
                synced.append(True)
            drop(keys)

        s.probes.drop_orphans = sync_then_drop
        _step_until(s, lambda: synced)
        _step_for(s, 1.5)
        unmount(ov.mountpoint)
        model = s.finish()
        [fs] = [m.key for m in model.metas.values()
                if m.kind == "upperfs" and m.upper_dev == sandbox.upper_dev]
        c = model.counters_at(fs, s.now())
        assert (c.bytes_dirtied, c.bytes_written_back) == (pages(n), pages(n))
        assert _orphans_on(s, sandbox) == []     # none left behind


def test_an_overlay_without_a_slot_keeps_its_orphans_until_it_is_forgotten(sandbox):
    """Out of slots, an overlay has nothing the kernel could charge later
    events to: its orphans must stay until the overlay is forgotten, or its
    unmount flush, landing after the read that decided them, is lost."""
    n = PAGE * 5 + 123
    with Session() as s:
        s.start()
        s.probes._free_slots.clear()             # every slot taken
        ov = sandbox.prepare_overlay("noslot")
        mount_overlay(ov.lowerdir, ov.upperdir, ov.workdir, ov.mountpoint)
        with open(os.path.join(ov.mountpoint, "data"), "wb") as f:   # before any step: an orphan
            f.write(b"r" * n)
        assert len([o for o in _orphans_on(s, sandbox) if o.counters.bytes_dirtied]) == 1
        read, unmounted, reads = s.probes.read_orphans, [], []

        def read_then_unmount():
            out = read()
            if any(w.ov.mountpoint == ov.mountpoint for w in s.slotless.values()):
                reads.append(True)
                # the read that decided the orphan, one that saw it still,
                # then this: its flush writes the file back now
                if len(reads) == 3:
                    unmount(ov.mountpoint)
                    unmounted.append(True)
            return out

        s.probes.read_orphans = read_then_unmount
        _step_until(s, lambda: unmounted)
        [k] = [m.key for m in s.model.metas.values() if m.mountpoint == ov.mountpoint]
        _step_until(s, lambda: k not in s.slotless)      # forgotten after its grace
        model = s.finish()
        c = model.counters_at(k, s.now())
        assert (c.bytes_dirtied, c.bytes_written_back, c.inodes_dirtied) == (pages(n), pages(n), 1)
        assert _orphans_on(s, sandbox) == []


def _step_until(s, done, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "timed out"
        s.step(0.1)


def _step_for(s, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.step(0.1)


def _orphans_on(s, sandbox) -> list:
    """The orphans the kernel holds on the sandbox's upper fs."""
    major, minor = (int(x) for x in sandbox.upper_dev.split(":"))
    return [o for o in s.probes.read_orphans() if o.dev == (major << 20) | minor]


def _host_write(sandbox, i: int) -> None:
    with open(os.path.join(sandbox.upper_fs, f"host-{i:03d}"), "wb") as f:
        f.write(b"h" * (PAGE * (i % 5 + 1)))


def test_the_program_loads_without_fetching_atomics(monkeypatch):
    """Kernels before 5.12 have no fetching atomics: the program is built
    without them there (bpf/ovltrace.bpf.c next_value) and must still load."""
    from ovltrace import probes
    monkeypatch.setattr(probes, "kernel_release", lambda: (5, 10))
    p = probes.Probes()
    assert "-DHAVE_BPF_FETCH" not in p.cflags("/gen")
    p.attach()
    try:
        assert p.chosen["mounts"].mechanism == "tracepoint"
    finally:
        p.close()
    monkeypatch.setattr(probes, "kernel_release", lambda: (5, 12))
    assert "-DHAVE_BPF_FETCH" in probes.Probes().cflags("/gen")
