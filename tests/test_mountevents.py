"""The userspace half of "no registration window", without a kernel:
assembling mount events, settling mount numbers, charging orphans."""
from __future__ import annotations

from ovltrace import bpfdefs
from ovltrace.counters import Counters
from ovltrace.mountevents import Assembler, Settler
from ovltrace.probes import MOUNT_EVENT_HEAD, Orphan, RawMount, parse_mount_event
from ovltrace.session import _claimant, _Watched


def ev(kind, pid=7, fd=-1, seq=0, ret=0, dir_="", data="", ts=100):
    return RawMount(kind, pid, pid, seq, ret, fd, ts, ts + 5, 0, "runc", dir_, data)


def test_mount_2_is_one_event():
    a = Assembler()
    sm, late = a.feed(ev(bpfdefs.MK_MOUNT, seq=3, dir_="/m",
                         data="lowerdir=/l1:/l2,upperdir=/u\\,x,workdir=/w,volatile"))
    assert late is None
    assert (sm.seq, sm.ok, sm.upperdir, sm.workdir, sm.target, sm.flags) == \
        (3, True, "/u,x", "/w", "/m", ("volatile",))
    failed, _ = a.feed(ev(bpfdefs.MK_MOUNT, seq=4, ret=-2, data="upperdir=/u"))
    assert failed.seq == 4 and not failed.ok


def test_new_api_steps_make_one_mount_and_its_mount_point():
    a = Assembler()
    assert a.feed(ev(bpfdefs.MK_FS_UPPER, fd=5, data="/up")) == (None, None)
    assert a.feed(ev(bpfdefs.MK_FS_WORK, fd=5, data="/wk")) == (None, None)
    sm, _ = a.feed(ev(bpfdefs.MK_FS_CREATE, fd=5, seq=9))
    assert (sm.seq, sm.upperdir, sm.workdir, sm.target) == (9, "/up", "/wk", None)
    assert a.feed(ev(bpfdefs.MK_FSMOUNT, fd=5, ret=6)) == (None, None)
    assert a.feed(ev(bpfdefs.MK_MOVE_MOUNT, fd=6, dir_="/mnt/x")) == (None, (9, "/mnt/x"))
    # another process's fd 6 is not this mount
    assert a.feed(ev(bpfdefs.MK_MOVE_MOUNT, pid=8, fd=6, dir_="/y")) == (None, None)


def test_settled_is_the_contiguous_prefix_and_a_gap_times_out():
    s = Settler(gap_timeout=10)
    s.take(1)
    s.take(3)
    assert s.advance(begun=3, now=0) == 1          # 2 still running, or its event lost
    assert s.advance(begun=3, now=9) == 1
    s.take(2)
    assert s.advance(begun=3, now=9.5) == 3
    assert s.advance(begun=5, now=20) == 3         # 4 and 5 begun, none reported
    assert s.advance(begun=5, now=30.1) == 4       # given up one at a time
    assert s.advance(begun=5, now=40.2) == 5


def _w(key, upper_ino, work_ino, mounted_ns):
    from ovltrace.mounts import Overlay
    ov = Overlay(mountpoint="/m", mnt_ns=0, mount_id=0, dev="", upperdir="/u", workdir="/w",
                 lowerdirs=(), upper_dev="7:0", upper_fstype="ext4", upper_ino=upper_ino,
                 work_ino=work_ino, options=(), pid=1)
    return _Watched(key, 1, 1, ov, 0, 7 << 20, mounted_ns=mounted_ns)


def test_an_orphan_goes_to_the_nearest_overlay_mounted_before_it():
    old = _w("old", 20, 21, mounted_ns=50)         # an overlay whose upperdir holds the newer's
    new = _w("new", 30, 31, mounted_ns=100)
    dirs = {(7 << 20, 20): old, (7 << 20, 21): old, (7 << 20, 30): new, (7 << 20, 31): new}

    def orphan(anc, first_ns):
        return Orphan((1, anc[0]), 1, 7 << 20, 2, first_ns, tuple(anc), Counters())
    assert _claimant(orphan([99, 30, 20, 2], 150), dirs) == "new"
    assert _claimant(orphan([99, 30, 20, 2], 90), dirs) == "old"     # before new's mount
    assert _claimant(orphan([98, 31, 2], 150), dirs) == "new"        # its workdir
    assert _claimant(orphan([97, 5, 2], 150), dirs) is None          # outside both
    assert _claimant(orphan([96, 20, 2], 40), dirs) is None          # before any mount


def test_mount_event_head_matches_the_c_struct():
    """struct mount_event's fields before data[], as ovltrace.h lays them
    out (5 u32, 2 s32, u32, 3 u64, comm[16], dir[PATH_LEN * 2])."""
    from test_counters import header_enums
    e = header_enums()
    assert MOUNT_EVENT_HEAD.size == 8 * 4 + 3 * 8 + e["COMM_LEN"] + 2 * e["PATH_LEN"]
    raw = MOUNT_EVENT_HEAD.pack(bpfdefs.EV_MOUNT, 1, 2, 3, 4, -5, 6, 3, 7, 8, 9,
                                b"comm\0", b"/dir\0") + b"abc"
    m = parse_mount_event(raw)
    assert (m.kind, m.pid, m.seq, m.ret, m.fd, m.ts_ns, m.dir, m.data) == \
        (1, 2, 4, -5, 6, 7, "/dir", "abc")
