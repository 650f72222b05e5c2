"""How the session links a mount seen in the kernel to the overlay the
mount table showed (pure Python: the probes are a stand-in that hands out
slots).  The race that matters: one table read catches a short-lived
mount, the next one misses it, and only then is its mount event read.
It is one overlay, listed once."""
from __future__ import annotations

import os
import time

from ovltrace.mountevents import SeenMount
from ovltrace.mounts import Overlay
from ovltrace.probes import Limits
from ovltrace.session import Session

UDEV_S = "7:0"
UPPER_INO, WORK_INO = 1234, 1235


class FakeProbes:
    def __init__(self):
        self.limits = Limits()
        self.next_slot = 0

    @property
    def free_slots(self) -> int:
        return self.limits.max_slots - self.next_slot

    def _slot(self):
        self.next_slot += 1
        return self.next_slot, 1

    def watch_upper_fs(self, dev):
        return self._slot()

    def watch_overlay(self, ovl_dev, upper_dev, upper_ino, work_ino):
        return self._slot()


def overlay(dev: str = "0:99") -> Overlay:
    return Overlay(mountpoint="/c/merged", mnt_ns=1, mount_id=7, dev=dev,
                   upperdir="/u/c/diff", workdir="/u/c/work", lowerdirs=("/l",),
                   upper_dev=UDEV_S, upper_fstype="ext4", upper_ino=UPPER_INO,
                   work_ino=WORK_INO, options=(), pid=1, upper_mountpoint="/u")


def seen(seq: int, start_ns: int, target: str | None) -> tuple:
    sm = SeenMount(seq=seq, ok=True, pid=os.getpid(), comm="runc", cgroup_id=0,
                   start_ns=start_ns, end_ns=start_ns + 1000, upperdir="/u/c/diff",
                   workdir="/u/c/work", target=target)
    up = (os.makedev(7, 0), UPPER_INO, "/u/c/diff")
    work = (os.makedev(7, 0), WORK_INO, "/u/c/work")
    return sm, up, work, None


def session() -> Session:
    s = Session()
    s.probes = FakeProbes()
    return s


def overlays_listed(s: Session) -> list[str]:
    return sorted(k for k, m in s.model.metas.items() if m.kind == "overlay")


def began_before_now(s: Session) -> int:
    """A mount start (CLOCK_MONOTONIC ns) just before the session's now."""
    return int((s.t0 + s.now()) * 1e9) - 1_000_000


def test_new_api_mount_shown_and_gone_before_its_move_event_is_read():
    s = session()
    start = began_before_now(s)
    time.sleep(0.002)
    ov = overlay()
    s._apply([ov], [])                        # one read shows it (attached at move_mount) ...
    s._apply([], [ov])                        # ... the next one has lost it
    s._adopt([seen(5, start, None)], [])      # then its fsconfig CREATE event ...
    s._adopt([], [(5, "/c/merged")])          # ... and its move_mount
    assert len(overlays_listed(s)) == 1
    (w,) = [w for w in s.watched.values() if w.ov is not None]
    assert w.mounted_ns == start              # its orphans can be claimed by it
    assert s.instant_overlays == 0


def test_mount2_shown_and_gone_before_its_event_is_read():
    s = session()
    start = began_before_now(s)
    time.sleep(0.002)
    ov = overlay()
    s._apply([ov], [])
    s._apply([], [ov])
    s._adopt([seen(5, start, "/c/merged")], [])
    assert len(overlays_listed(s)) == 1 and s.instant_overlays == 0


def test_a_new_mount_on_a_gone_overlays_upperdir_is_its_own():
    """`docker restart`: the same upperdir mounted again after the old
    overlay left the table.  The old one was shown before the new mount
    began, so the new mount is another overlay."""
    s = session()
    ov = overlay()
    s._apply([ov], [])
    s._apply([], [ov])
    time.sleep(0.002)
    start = began_before_now(s) + 1_000_000
    s._adopt([seen(6, start, "/c/merged")], [])
    assert len(overlays_listed(s)) == 2 and s.instant_overlays == 1


def test_a_live_overlay_is_linked_to_its_mount():
    s = session()
    start = began_before_now(s)
    time.sleep(0.002)
    s._apply([overlay()], [])
    s._adopt([seen(5, start, "/c/merged")], [])
    assert len(overlays_listed(s)) == 1
    (w,) = [w for w in s.watched.values() if w.ov is not None]
    assert w.mounted_ns == start


def test_churn_leaves_no_ids_behind():
    """A long-running view forgets the (slot, gen) of overlays the model
    forgot, and an orphan's owner ORPHAN_OWNER_GRACE after the orphan left
    the map; what is still live stays."""
    from ovltrace import bpfdefs
    from ovltrace.session import ORPHAN_OWNER_GRACE
    s = session()
    live = overlay("0:50")
    s._apply([live], [])
    for i in range(100):
        ov = overlay(f"0:{100 + i}")
        s._apply([ov], [])
        s.model.gone(s.by_slotgen[max(s.by_slotgen)], s.now())
    assert len(s.by_slotgen) == 102                  # the upper fs, live, 100 gone
    s.model.prune(s.now() + 1)
    s._forget_ids()
    assert sorted(s.model.metas) == sorted(s.by_slotgen.values())
    assert len(s.by_slotgen) == 2
    # orphans: owners named, two of them left the map, one long ago
    for i in (1, 2, 3):
        s.orphan_owner[(bpfdefs.ORPHAN_SLOT, i)] = "o2.1"
    s._orphan_gone(1)
    s.t0 -= ORPHAN_OWNER_GRACE + 1                   # 121 s later
    s._orphan_gone(2)
    s._forget_ids()
    assert list(s.orphan_owner) == [(bpfdefs.ORPHAN_SLOT, 2), (bpfdefs.ORPHAN_SLOT, 3)]
    assert s._key_of(bpfdefs.ORPHAN_SLOT, 2) == "o2.1"
