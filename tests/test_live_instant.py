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

import pytest

from conftest import audit_json
from ovltrace.workloads import instant_container

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
