"""Facts the audit adds at report time while live, kept in recordings.

Two things cannot be known later on another host, so a live audit or
`record` collects them and a recording stores them as extra records
(readers that don't know these types skip them):
  {"type": "cgroup_accounting", "t": s, "accounting": {key: {...}}}
  {"type": "inode_paths", "paths": {key: {ino: path}}}
"""
from __future__ import annotations

import os
import time

from .cgroupacct import CgroupAccounting
from .model import Model

SAMPLE_INTERVAL = 2.0          # seconds between cgroup samples
FIND_INTERVAL = 0.5            # look for cgroups of overlays that have none this often
WALK_CAP = 200_000             # directory entries looked at per upper dir


def resolve_inodes(root: str, inos: set[int], cap: int = WALK_CAP) -> dict[int, str]:
    """Paths (relative to root) of the given inode numbers: a bounded walk
    that reads d_ino from directory entries (no stat per file)."""
    found: dict[int, str] = {}
    todo = [root]
    seen = 0
    while todo and len(found) < len(inos) and seen < cap:
        d = todo.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    seen += 1
                    if e.inode() in inos and e.inode() not in found:
                        found[e.inode()] = os.path.relpath(e.path, root)
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
        except OSError:
            continue
    return found


def inode_paths(model: Model) -> dict[str, dict[int, str]]:
    """key -> {ino: path} for the inodes that had writeback errors."""
    wanted: dict[str, set[int]] = {}
    for e in model.snapshot().wb_errors:
        wanted.setdefault(e.key, set()).add(e.ino)
    out = {}
    for key, inos in wanted.items():
        m = model.metas.get(key)
        if m is None:
            continue
        roots = [m.upperdir, m.workdir] if m.kind == "overlay" else [m.mountpoint]
        paths: dict[int, str] = {}
        for root in roots:
            if root and os.path.isdir(root):
                for ino, rel in resolve_inodes(root, inos - set(paths)).items():
                    paths[ino] = os.path.join(root, rel)
        out[key] = paths
    return out


class Annotator:
    """Collects the extras during a live trace (call step() from the trace
    loop, finish() at the end)."""

    def __init__(self, session):
        self.session = session
        self.cgroups = CgroupAccounting()
        self._next = 0.0
        self._next_find = 0.0
        self._find_every = FIND_INTERVAL
        self._unknown: frozenset = frozenset()
        self.accounting: dict = {}
        self.paths: dict = {}

    def _overlays(self) -> dict[str, tuple[str, str]]:
        return {k: (m.dev, m.upper_dev) for k, m in self.session.model.metas.items()
                if m.kind == "overlay" and m.gone_at is None}

    def step(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + SAMPLE_INTERVAL
            self._next_find = now + FIND_INTERVAL
            self.cgroups.sample(self._overlays())
        elif now >= self._next_find:
            # short-lived processes (a job that writes and exits) need a
            # quicker look; only for overlays whose cgroup is still unknown.
            # Nothing found: look less often (a /proc walk costs on big hosts).
            overlays = self._overlays()
            unknown = frozenset(k for k in overlays if k not in self.cgroups.cgroups)
            if unknown != self._unknown:
                self._unknown, self._find_every = unknown, FIND_INTERVAL
            if unknown and self.cgroups.find_cgroups(overlays):
                self.cgroups.sample(overlays)
            elif unknown:
                self._find_every = min(8.0, self._find_every * 1.5)
            self._next_find = now + self._find_every

    def finish(self, writer=None) -> None:
        self.cgroups.sample(self._overlays())
        self.accounting = self.cgroups.result()
        self.paths = inode_paths(self.session.model)
        if writer is not None:
            write = writer.write_record
            write({"type": "cgroup_accounting", "t": round(self.session.model.now, 6),
                   "accounting": self.accounting})
            write({"type": "inode_paths",
                   "paths": {k: {str(i): p for i, p in v.items()} for k, v in self.paths.items()}})

    def extras(self) -> dict:
        return {"cgroup_accounting": self.accounting, "inode_paths": self.paths,
                "source": "live"}


def load(path: str) -> tuple[dict, Model, dict]:
    """Replay a recording; also return the extras it carries."""
    from . import recording
    header, records = recording.read_records(path)
    model = Model(0.0)
    name = os.path.basename(path)
    extras: dict = {"cgroup_accounting": None, "inode_paths": {}, "source": "recording"}
    saw_end = False
    for rec in records:
        kind = rec["type"]
        if kind == "cgroup_accounting" and isinstance(rec.get("accounting"), dict):
            extras["cgroup_accounting"] = rec["accounting"]
        elif kind == "inode_paths" and isinstance(rec.get("paths"), dict):
            try:
                extras["inode_paths"] = {k: {int(i): str(p) for i, p in v.items()}
                                         for k, v in rec["paths"].items()}
            except (AttributeError, ValueError):
                from .errors import OvltraceError
                raise OvltraceError(f"{name}: line {rec['_line']}: bad inode_paths record") from None
        else:
            recording.apply(model, rec, name)
        saw_end = saw_end or kind == "end"
    header["complete"] = saw_end
    extras["header"] = {k: header.get(k) for k in ("host", "kernel", "started", "version", "complete")}
    return header, model, extras
