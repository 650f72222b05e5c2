"""Overlay mounts as the kernel reported them (bpf: HOOK_mounts): one
record per mount, assembled from its events, and the bookkeeping that lets
the kernel side stop keeping orphans.

The kernel numbers every overlay mount it sees begin (seq).  Until
userspace has taken every number up to the newest (`Settler`), dirtying
under no overlay it knows is kept as orphans, so nothing written between a
mount and userspace learning of it is lost, even when the overlay is gone
before the mount table could be read.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from . import bpfdefs
from .mounts import parse_overlay_options

GAP_TIMEOUT = 10.0      # a seq never reported (event lost, mount hung) is given up after this
_MAX_PENDING = 1024     # new-API contexts and mount fds remembered


@dataclass(frozen=True)
class SeenMount:
    seq: int
    ok: bool                      # the mount succeeded
    pid: int
    comm: str
    cgroup_id: int
    start_ns: int                 # mount syscall entry (CLOCK_MONOTONIC)
    end_ns: int
    upperdir: str | None          # as the mounter passed them (relative to its root or cwd)
    workdir: str | None
    target: str | None            # mount point as passed; None until the new API's move_mount
    flags: tuple[str, ...] = ()


def put_bounded(d: OrderedDict, k, v, cap: int = _MAX_PENDING) -> None:
    """d[k] = v, forgetting the oldest entry beyond `cap`."""
    d[k] = v
    if len(d) > cap:
        d.popitem(last=False)


class Assembler:
    """RawMount events in, SeenMount records (and late mount points) out.

    mount(2) reports everything at its exit; the new API reports upperdir
    and workdir at fsconfig(SET_STRING), the mount at FSCONFIG_CMD_CREATE,
    and where it went at move_mount (through fsmount's fd)."""

    def __init__(self) -> None:
        self._ctx: OrderedDict = OrderedDict()     # (pid, fs fd) -> {"upperdir": .., "workdir": ..}
        self._ctx_seq: OrderedDict = OrderedDict() # (pid, fs fd) -> seq of its CMD_CREATE
        self._mnt_seq: OrderedDict = OrderedDict() # (pid, mount fd) -> seq

    def feed(self, ev) -> tuple[SeenMount | None, tuple[int, str] | None]:
        """One event -> (a mount, or None; (seq, mount point) learnt late, or None)."""
        who = (ev.pid, ev.fd)
        if ev.kind == bpfdefs.MK_MOUNT:
            opts = parse_overlay_options(ev.data, octal=False)
            return self._seen(ev, opts["upperdir"], opts["workdir"], ev.dir or None,
                              opts["flags"]), None
        if ev.kind in (bpfdefs.MK_FS_UPPER, bpfdefs.MK_FS_WORK):
            name = "upperdir" if ev.kind == bpfdefs.MK_FS_UPPER else "workdir"
            ctx = self._ctx.get(who) or {}
            ctx[name] = ev.data
            put_bounded(self._ctx, who, ctx)
            return None, None
        if ev.kind == bpfdefs.MK_FS_CREATE:
            ctx = self._ctx.get(who) or {}
            put_bounded(self._ctx_seq, who, ev.seq)
            return self._seen(ev, ctx.get("upperdir"), ctx.get("workdir"), None, ()), None
        if ev.kind == bpfdefs.MK_FSMOUNT:
            seq = self._ctx_seq.get(who)
            if seq is not None:
                put_bounded(self._mnt_seq, (ev.pid, ev.ret), seq)
            return None, None
        if ev.kind == bpfdefs.MK_MOVE_MOUNT:
            seq = self._mnt_seq.pop(who, None)
            return None, (seq, ev.dir) if seq is not None and ev.dir else None
        return None, None

    @staticmethod
    def _seen(ev, upper, work, target, flags) -> SeenMount:
        return SeenMount(ev.seq, ev.ret == 0, ev.pid, ev.comm, ev.cgroup_id, ev.ts_ns, ev.end_ns,
                         upper, work, target, tuple(flags))


class Settler:
    """The highest seq such that every mount up to it has been taken."""

    def __init__(self, gap_timeout: float = GAP_TIMEOUT) -> None:
        self.settled = 0
        self._taken: set[int] = set()
        self._gap_since: float | None = None
        self._gap_timeout = gap_timeout

    def take(self, seq: int) -> None:
        if seq > self.settled:
            self._taken.add(seq)

    def advance(self, begun: int, now: float) -> int:
        """`begun`: the kernel's count of mounts begun.  A missing seq (its
        event lost, or its mount still running) holds the rest back, for
        GAP_TIMEOUT at most."""
        while True:
            while self.settled + 1 in self._taken:
                self.settled += 1
                self._taken.discard(self.settled)
            if self.settled >= begun and not self._taken:
                self._gap_since = None
                return self.settled
            if self._gap_since is None:
                self._gap_since = now
            if now - self._gap_since < self._gap_timeout:
                return self.settled
            self.settled += 1                 # give that one up
            self._gap_since = now


def resolve_dir(pid: int, path: str | None, proc: str = "/proc") -> tuple[int, int, str] | None:
    """(st_dev, st_ino, path as the host sees it) of a directory a mounter
    named: through its root or cwd while it lives, else as a host path
    (absolute paths only)."""
    if not path:
        return None
    if os.path.isabs(path):
        # never the host path while the mounter lives: its root may differ
        alive = os.path.exists(f"{proc}/{pid}")
        tries = [(f"{proc}/{pid}/root{path}" if alive else path, path)]
    else:
        try:
            cwd = os.readlink(f"{proc}/{pid}/cwd")
        except OSError:
            return None
        tries = [(f"{proc}/{pid}/cwd/{path}", os.path.normpath(os.path.join(cwd, path)))]
    for probe, shown in tries:
        try:
            st = os.stat(probe)
        except OSError:
            continue
        return st.st_dev, st.st_ino, shown
    return None
