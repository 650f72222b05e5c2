"""What the kernel's cgroup accounting charged each container.

Beside ovltrace's own numbers the audit shows what cgroups saw, so a reader
can tell where cgroup accounting misses or misplaces overlay writeback
(google/cadvisor#2378): dirty page cache of a container, its writeback,
and the bytes its cgroup was charged for writing.

Read what exists, say plainly what doesn't:
  * cgroup v2: <cgroup2>/<path>/memory.stat (file_dirty, file_writeback:
    gauges) and io.stat (wbytes: cumulative, per device);
  * cgroup v1 (hybrid hosts): memory/<path>/memory.stat (dirty, writeback)
    and blkio/<path>/blkio.throttle.io_service_bytes (Write).
A v1 cgroup that several containers share (or the root "/") is not
per-container accounting; it is reported as shared.
"""
from __future__ import annotations

import os

from .containers import cgroup2_root, parse_proc_cgroup

CGROUP_FS = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def proc_cgroups(pid: int, proc: str = "/proc") -> dict[str, str]:
    """{"v2": path, "memory": v1 path, "blkio": v1 path} for a pid."""
    cg = parse_proc_cgroup(_read(f"{proc}/{pid}/cgroup") or "")
    return {k: v for k, v in cg.items() if k in ("v2", "memory", "blkio")}


def read_v2(cg2: str | None, path: str, dev: str | None) -> dict:
    """Accounting in a cgroup2 dir; missing controllers named in "missing"."""
    d: dict = {"path": path, "missing": []}
    if cg2 is None:
        d["missing"] = ["cgroup2 not mounted"]
        return d
    base = os.path.join(cg2, path.lstrip("/"))
    mem = _read(os.path.join(base, "memory.stat"))
    if mem is None:
        d["missing"].append("memory")
    else:
        kv = _kv(mem)
        d["file_dirty"] = kv.get("file_dirty", 0)
        d["file_writeback"] = kv.get("file_writeback", 0)
    io = _read(os.path.join(base, "io.stat"))
    if io is None:
        d["missing"].append("io")
    else:
        total = on_dev = 0
        for line in io.splitlines():
            parts = line.split()
            if not parts:
                continue
            kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            wb = int(kv.get("wbytes", 0) or 0)
            total += wb
            if parts[0] == dev:
                on_dev += wb
        d["wbytes"] = total
        d["wbytes_upper_dev"] = on_dev
    return d


def read_v1(memory_path: str | None, blkio_path: str | None, dev: str | None) -> dict:
    d: dict = {"memory_path": memory_path, "blkio_path": blkio_path, "missing": []}
    mem = _read(os.path.join(CGROUP_FS, "memory", (memory_path or "").lstrip("/"), "memory.stat")) \
        if memory_path else None
    if mem is None:
        d["missing"].append("memory")
    else:
        kv = _kv(mem)
        d["dirty"] = kv.get("dirty", 0)
        d["writeback"] = kv.get("writeback", 0)
    blk = _read(os.path.join(CGROUP_FS, "blkio", (blkio_path or "").lstrip("/"),
                             "blkio.throttle.io_service_bytes")) if blkio_path else None
    if blk is None:
        d["missing"].append("blkio")
    else:
        total = on_dev = 0
        for line in blk.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Write" and parts[2].isdigit():
                total += int(parts[2])
                if parts[0] == dev:
                    on_dev += int(parts[2])
        d["wbytes"] = total
        d["wbytes_upper_dev"] = on_dev
    return d


class CgroupAccounting:
    """Samples each overlay's cgroups during a trace.

    Gauges (dirty, writeback) keep their peak; write counters the change
    since the first sample.  Each overlay's cgroup is found from processes
    whose root or cwd is on the overlay (a container's processes have their
    root there; the sandbox's workloads their cwd).
    """

    def __init__(self, proc: str = "/proc", max_pids: int = 20000):
        self.proc = proc
        self.max_pids = max_pids
        self.cg2 = cgroup2_root()
        self.cgroups: dict[str, dict[str, str]] = {}     # overlay key -> proc_cgroups()
        self.first: dict[str, dict] = {}
        self.last: dict[str, dict] = {}
        self.peak: dict[str, dict[str, int]] = {}
        # ovltrace's own v1 memory cgroup: a container in it has none of its own
        self.own_memory = proc_cgroups(os.getpid(), proc).get("memory")

    def find_cgroups(self, overlays: dict[str, tuple[str, str]]) -> int:
        """overlays: key -> (overlay dev "maj:min", upper dev).  A key keeps
        the first cgroup found (processes that exit leave it behind)."""
        want = {}
        for key, (dev, _upper) in overlays.items():
            if key not in self.cgroups and dev and ":" in dev:
                ma, mi = dev.split(":")
                want[os.makedev(int(ma), int(mi))] = key
        if not want:
            return 0
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit()][: self.max_pids]
        except OSError:
            return 0
        before = len(self.cgroups)
        for pid in pids:
            for what in ("root", "cwd"):
                try:
                    key = want.get(os.stat(f"{self.proc}/{pid}/{what}").st_dev)
                except OSError:
                    key = None
                if key and key not in self.cgroups:
                    cgs = proc_cgroups(int(pid), self.proc)
                    if cgs:
                        self.cgroups[key] = cgs
                    break
        return len(self.cgroups) - before

    def sample(self, overlays: dict[str, tuple[str, str]]) -> None:
        self.find_cgroups(overlays)
        for key, cgs in self.cgroups.items():
            upper = overlays.get(key, (None, None))[1]
            now = {"v2": read_v2(self.cg2, cgs.get("v2", "/"), upper),
                   "v1": read_v1(cgs.get("memory"), cgs.get("blkio"), upper)}
            self.first.setdefault(key, now)
            self.last[key] = now
            peak = self.peak.setdefault(key, {})
            for ver, names in (("v2", ("file_dirty", "file_writeback")), ("v1", ("dirty", "writeback"))):
                for n in names:
                    if n in now[ver]:
                        peak[f"{ver}.{n}"] = max(peak.get(f"{ver}.{n}", 0), now[ver][n])

    def result(self) -> dict:
        """key -> accounting, JSON-ready; stored in recordings as is."""
        v1_users: dict[str, int] = {}
        for cgs in self.cgroups.values():
            v1_users[cgs.get("memory", "/")] = v1_users.get(cgs.get("memory", "/"), 0) + 1
        out = {}
        for key, cgs in self.cgroups.items():
            first, last, peak = self.first.get(key), self.last.get(key), self.peak.get(key, {})
            if not last:
                continue
            v2, v1 = last["v2"], last["v1"]
            d2: dict = {"cgroup": cgs.get("v2"), "missing": v2["missing"]}
            if "file_dirty" in v2:
                d2["file_dirty_peak"] = peak.get("v2.file_dirty", 0)
                d2["file_writeback_peak"] = peak.get("v2.file_writeback", 0)
            if "wbytes" in v2:
                d2["wbytes"] = v2["wbytes"] - first["v2"].get("wbytes", 0)
                d2["wbytes_upper_dev"] = v2["wbytes_upper_dev"] - first["v2"].get("wbytes_upper_dev", 0)
            mem = cgs.get("memory")
            d1: dict = {"memory_cgroup": mem, "missing": v1["missing"],
                        "shared": mem in (None, "/", self.own_memory) or v1_users.get(mem, 0) > 1}
            if "dirty" in v1:
                d1["dirty_peak"] = peak.get("v1.dirty", 0)
                d1["writeback_peak"] = peak.get("v1.writeback", 0)
            if "wbytes" in v1:
                d1["wbytes"] = v1["wbytes"] - first["v1"].get("wbytes", 0)
                d1["wbytes_upper_dev"] = v1["wbytes_upper_dev"] - first["v1"].get("wbytes_upper_dev", 0)
            out[key] = {"v2": d2, "v1": d1}
        return out
