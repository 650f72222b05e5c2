"""The BPF side as seen from Python: build, attach, feed, read, detach.

`Probes` owns the BPF object.  It knows nothing of containers or reports:
it is told which upper filesystems and overlays to watch (slots), and
hands back raw counters per slot and raw rare events.  The session turns
those into the model.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from . import bpfdefs
from .counters import COUNTERS, Counters, bpf_members
from .privileges import tracing_refusal
from .errors import OvltraceError
from .hooks import (FORCED, TRACEFS, Attacher, Hook, _stderr_to, hook_mode, require_functions,
                    select_hooks)
from .kernel.btf import BTF, BTFError
from .kernel.headers import HeaderError, build_tree, remove_tree
from .kernel.layout import FUNCTIONS, HOOKS, Layout, generate, kernel_release
from .untrusted import decode

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def bpf_stats_enabled() -> bool:
    try:
        with open(BPF_STATS) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def kdev(major: int, minor: int) -> int:
    """The kernel's internal dev_t (super_block.s_dev), not userspace's."""
    return (major << 20) | minor


def parse_dev(s: str) -> int:
    major, minor = s.split(":")
    return kdev(int(major), int(minor))


def format_dev(d: int) -> str:
    return f"{d >> 20}:{d & 0xFFFFF}"


def ensure_tracefs(path: str = TRACEFS) -> None:
    """Syscall tracepoints need tracefs; mount it if this machine hasn't."""
    if os.path.isdir(os.path.join(path, "events")):
        return
    import subprocess
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", path], capture_output=True, text=True)
    if r.returncode != 0 and not os.path.isdir(os.path.join(path, "events")):
        raise OvltraceError(f"tracefs is not mounted at {path} and mounting it failed: "
                            f"{r.stderr.strip() or 'mount returned ' + str(r.returncode)}")


def load_btf(path: str | None = None) -> BTF:
    path = path or DEFAULT_BTF
    if not os.path.exists(path):
        raise OvltraceError(f"BTF not found at {path}: this kernel needs CONFIG_DEBUG_INFO_BTF "
                            "(or point --btf at a BTF file)")
    try:
        btf = BTF.load(path)
        # overlay as a module has its own (split) BTF
        mod = "/sys/kernel/btf/overlay"
        if path == DEFAULT_BTF and os.path.exists(mod):
            btf = BTF.load(mod, base=btf)
        return btf
    except BTFError as e:
        raise OvltraceError(str(e)) from None


@dataclass
class Limits:
    """Map sizes; they bound the kernel memory ovltrace takes."""
    max_slots: int = 4096          # overlays + upper filesystems
    max_upper_fs: int = 64
    icache: int = 65536            # a power of 2
    dcache: int = 16384            # directory answers; a power of 2
    dirty: int = 65536
    victims: int = 16384
    orphans: int = 8192            # inodes dirtied before userspace knew their overlay
    ringbuf_pages: int = 64
    umount_tail_ms: int = 2000

    @classmethod
    def for_overlays(cls, n: int) -> "Limits":
        slots = 256
        while slots < 2 * n + 64:
            slots *= 2
        return cls(max_slots=slots)

    def cflags(self) -> list[str]:
        return [f"-DMAX_SLOTS={self.max_slots}", f"-DMAX_UPPER_FS={self.max_upper_fs}",
                f"-DMAX_DIRS={2 * self.max_slots}", f"-DICACHE_SIZE={self.icache}", f"-DDCACHE_SIZE={self.dcache}",
                f"-DDIRTY_SIZE={self.dirty}", f"-DMAX_VICTIMS={self.victims}",
                f"-DORPHAN_SIZE={self.orphans}",
                f"-DRINGBUF_PAGES={self.ringbuf_pages}",
                f"-DUMOUNT_TAIL_NS={self.umount_tail_ms * 1_000_000}ULL"]


@dataclass
class RawEvent:
    type: int
    kind: int
    pid: int
    tid: int
    slot: int
    gen: int
    dev: int
    err: int
    ts_ns: int
    end_ns: int
    ino: int
    flush_id: int
    cgroup_id: int
    comm: str
    path: str
    synced_dev: int = 0            # sync_filesystem hook: the upper sb synced
    sb_errseq: int = 0             # its s_wb_err after the sync
    sb_err_advanced: int = 0       # s_wb_err moved during the flush


ORPHAN_ANC = 16      # bpf/ovltrace.h


@dataclass(frozen=True)
class Orphan:
    """An upper-fs inode dirtied under no overlay userspace knew (orphans in
    bpf/ovltrace.h)."""
    key: tuple[int, int]          # (inode address, inode number): the map key
    id: int
    dev: int                      # upper fs, kernel encoding
    seq: int                      # overlay mounts begun when it was made
    first_ns: int
    ancestors: tuple[int, ...]    # inode numbers from the inode up, as far as kept
    counters: Counters


@dataclass
class RawMount:
    """An overlay mount step the kernel reported (struct mount_event)."""
    kind: int
    pid: int
    tid: int
    seq: int
    ret: int
    fd: int
    ts_ns: int
    end_ns: int
    cgroup_id: int
    comm: str
    dir: str
    data: str
    type: int = bpfdefs.EV_MOUNT


# struct mount_event without data[]: parsed by hand, since only the bytes of
# data[] that were read are sent (tests/test_counters.py checks the layout)
MOUNT_EVENT_HEAD = struct.Struct("<5I2iI3Q16s256s")


def parse_mount_event(raw: bytes) -> RawMount:
    (_type, kind, pid, tid, seq, ret, fd, n, ts, end, cg, comm,
     dir_) = MOUNT_EVENT_HEAD.unpack_from(raw)
    data = raw[MOUNT_EVENT_HEAD.size:MOUNT_EVENT_HEAD.size + n]
    return RawMount(kind, pid, tid, seq, ret, fd, ts, end, cg, _cstr(comm), _cstr(dir_), _cstr(data))


def _cstr(b: bytes) -> str:
    return decode(b.split(b"\0")[0])


class Probes:
    def __init__(self, btf_path: str | None = None, limits: Limits | None = None,
                 only_hooks: list[str] | None = None, mode: str | None = None):
        self.limits = limits or Limits()
        self.btf = load_btf(btf_path)
        self.layout: Layout = generate(self.btf, TRACEFS)
        if self.layout.missing_core:
            raise OvltraceError(f"BTF {self.btf.path} lacks what attribution needs "
                                f"({self.layout.missing_core}): not this kernel's BTF?")
        self.only_hooks = only_hooks
        self.mode = hook_mode(mode)
        self.chosen: dict[str, Hook] | None = None     # set by attach()
        self.bpf = None
        self.events: list[RawEvent] = []
        self._free_slots = list(range(self.limits.max_slots - 1, 0, -1))  # slot 0 unused
        self._slot_gen: dict[int, int] = {}
        self._epoch = 0
        self.slots_exhausted = 0

    # -- hooks -------------------------------------------------------------
    def hooks(self) -> list[Hook]:
        if self.chosen is not None:
            return list(self.chosen.values())
        out = []     # before attaching: what the tracepoint path can do
        for name, why in self.layout.hooks.items():
            if self.only_hooks is not None and name not in self.only_hooks and why is None:
                why = "not requested"
            out.append(Hook(name, HOOKS[name]["what"], None if why else "tracepoint", why,
                            FUNCTIONS.get(name, {}).get("function")))
        return out

    def _requested(self, name: str) -> bool:
        return self.only_hooks is None or name in self.only_hooks

    def enabled_hooks(self) -> list[str]:
        return [h.name for h in self.hooks() if h.mechanism]

    def source(self) -> str:
        """The full BPF program as compiled (what --ebpf prints)."""
        parts = ["/* ---- kernel_layout.h (generated from BTF) ---- */", self.layout.header,
                 "/* ---- ovltrace.h ---- */", (BPF_DIR / "ovltrace.h").read_text(),
                 "/* ---- ovltrace.bpf.c ---- */", (BPF_DIR / "ovltrace.bpf.c").read_text()]
        return "\n".join(parts)

    def cflags(self, gen_dir: str) -> list[str]:
        fns = [] if self.mode == "tracepoints" else \
            [h for h, why in self.layout.functions.items() if why is None and self._requested(h)]
        fetch = ["-DHAVE_BPF_FETCH"] if kernel_release() >= (5, 12) else []
        return ([f"-I{gen_dir}", f"-I{BPF_DIR}", "-Wno-macro-redefined"] + self.limits.cflags()
                + fetch
                + [f"-DHOOK_{h}" for h in self.enabled_hooks()] + [f"-DFN_{h}" for h in fns])

    # -- lifecycle ---------------------------------------------------------
    def attach(self) -> None:
        refusal = tracing_refusal()
        if refusal:
            raise OvltraceError(refusal)
        ensure_tracefs()
        self.layout = generate(self.btf, TRACEFS)   # tracepoints are visible now
        self.btf = None              # the parsed BTF (~14 MiB of Python objects) is done with
        enabled = self.enabled_hooks()
        if not enabled:
            reasons = "; ".join(f"{h.name}: {h.reason}" for h in self.hooks())
            raise OvltraceError(f"no hook can be attached on this kernel ({reasons})")
        try:
            tree = build_tree()
        except HeaderError as e:
            raise OvltraceError(str(e)) from None
        try:
            with open(os.path.join(tree, "kernel_layout.h"), "w") as f:
                f.write(self.layout.header)
            try:
                from bcc import BPF  # imported late: slow, and not needed for replay
            except ImportError:
                raise OvltraceError("the bcc Python module is missing (install python3-bpfcc)") from None
            try:
                # bcc reads the header tree's place from its environment, at
                # compile time only: set for the compile, then put back
                with _env("BCC_KERNEL_SOURCE", tree):
                    self.bpf = _quiet_compile(_manual_bpf(BPF), str(BPF_DIR / "ovltrace.bpf.c"),
                                              self.cflags(tree))
            except Exception as e:  # bcc raises bare Exception
                raise OvltraceError(f"BPF program failed to load: {str(e).splitlines()[0]}") from None
        finally:
            remove_tree(tree)
        stats = self.bpf["stats"]
        check_stats_layout(getattr(stats, "sLeaf", stats.Leaf))   # per-CPU: one CPU's struct
        try:
            self._set_epoch()
            # the copy-up workdir estimate is off unless copy_up ends up on
            # that stand-in (Attacher._tracepoint): never counted twice
            self.set_config(bpfdefs.CFG_FN_COPY_UP, 1)
            attacher = Attacher(self.bpf, self.layout, self)
            wanted = [h for h in HOOKS if self._requested(h)]
            self.chosen = select_hooks(wanted, self.mode, attacher.attach)
            for h in HOOKS:
                if h not in self.chosen:
                    self.chosen[h] = Hook(h, HOOKS[h]["what"], None, "not requested",
                                          FUNCTIONS.get(h, {}).get("function"))
            if self.mode == "functions" or self.mode in FORCED:
                require_functions(self.chosen, self.mode)
            if not self.enabled_hooks():
                raise OvltraceError("no hook can be attached on this kernel (" + "; ".join(
                    f"{h.name}: {h.reason}" for h in self.chosen.values()) + ")")
            self.bpf["events"].open_ring_buffer(self._on_event)
            self.bpf["error_events"].open_ring_buffer(self._on_event)
            if self.chosen["mounts"].mechanism:
                self.bpf["mount_events"].open_ring_buffer(self._on_mount_event)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- slots -------------------------------------------------------------
    def _alloc_slot(self) -> tuple[int, int] | None:
        if not self._free_slots:
            self.slots_exhausted += 1
            return None
        slot = self._free_slots.pop()
        gen = self._slot_gen.get(slot, 0) + 1
        self._slot_gen[slot] = gen
        # zero the counters before the slot goes live under its new gen
        stats = self.bpf["stats"]
        stats[ctypes.c_int(slot)] = _percpu_zero(stats)
        self.bpf["slot_gen"][ctypes.c_int(slot)] = ctypes.c_uint32(gen)
        return slot, gen

    def _free_slot(self, slot: int) -> None:
        self.bpf["slot_gen"][ctypes.c_int(slot)] = ctypes.c_uint32(0)
        self._free_slots.append(slot)

    def _set_epoch(self) -> None:
        self._epoch += 1
        self.bpf["config"][ctypes.c_int(bpfdefs.CFG_EPOCH)] = ctypes.c_uint32(self._epoch)

    def set_config(self, idx: int, value: int) -> None:
        self.bpf["config"][ctypes.c_int(idx)] = ctypes.c_uint32(value)

    def watch_upper_fs(self, dev: int) -> tuple[int, int] | None:
        ref = self._alloc_slot()
        if ref is None:
            return None
        t = self.bpf["upper_devs"]
        t[ctypes.c_uint32(dev)] = t.Leaf(ref[0], ref[1])
        self._set_epoch()
        self.bpf["sb_filter"].clear()
        return ref

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def watch_overlay(self, ovl_dev: int, upper_dev: int, upper_ino: int | None,
                      work_ino: int | None) -> tuple[int, int] | None:
        ref = self._alloc_slot()
        if ref is None:
            return None
        slot, gen = ref
        dirs = self.bpf["dirs"]
        for ino, role in ((upper_ino, bpfdefs.ROLE_UPPER), (work_ino, bpfdefs.ROLE_WORK)):
            if ino:
                dirs[dirs.Key(upper_dev, 0, ino)] = dirs.Leaf(slot, gen, role, 0)
        if ovl_dev:                 # 0: gone before it was seen (only its dirs are known)
            od = self.bpf["ovl_devs"]
            od[ctypes.c_uint32(ovl_dev)] = od.Leaf(slot, gen)
        self._set_epoch()   # cached "outside any overlay" answers are void now
        return ref

    def unwatch_overlay(self, ovl_dev: int, upper_dev: int, upper_ino: int | None,
                        work_ino: int | None, slot: int) -> None:
        dirs = self.bpf["dirs"]
        for ino in (upper_ino, work_ino):
            if ino:
                k = dirs.Key(upper_dev, 0, ino)
                v = dirs.get(k)
                if v is not None and v.slot == slot:
                    del dirs[k]
        od = self.bpf["ovl_devs"]
        v = od.get(ctypes.c_uint32(ovl_dev))
        if v is not None and v.slot == slot:
            del od[ctypes.c_uint32(ovl_dev)]
        self._free_slot(slot)

    # -- reading -------------------------------------------------------------
    def read_stats(self, slots: list[int]) -> dict[int, Counters]:
        """Each slot's counters, summed over CPUs, by the counter schema."""
        table = self.bpf["stats"]
        return {slot: _counters(table.getvalue(ctypes.c_int(slot))) for slot in slots}

    # -- mounts as they happen, and the orphans they leave -----------------
    def mounts_begun(self) -> int:
        """Overlay mounts the kernel side has seen begin (their seq numbers
        run 1..this)."""
        return self.bpf["kstate"][ctypes.c_int(bpfdefs.KS_MOUNT_SEQ)].value

    def settle(self, seq: int) -> None:
        """Userspace knows every overlay mount up to `seq`: once that is all
        of them, the kernel stops keeping orphans."""
        self.set_config(bpfdefs.CFG_SETTLED, seq & 0xFFFFFFFF)

    def read_orphans(self) -> list[Orphan]:
        out = []
        for k, v in self.bpf["orphans"].items():
            n = v.levels
            anc = [v.anc[i % ORPHAN_ANC] for i in range(max(0, n - ORPHAN_ANC), n)]
            out.append(Orphan((k.inode, k.ino), v.id, v.dev, v.seq, v.first_ns,
                              tuple(anc), _counters([v.s])))
        return out

    def mark_orphans_decided(self, keys: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """Send these orphans' inodes to their owner's slot from now on
        (the kernel stops adding to the orphans); returns those marked (a
        full map marks no more)."""
        table = self.bpf["orphans_decided"]
        marked = set()
        for inode, ino in keys:
            try:
                table[table.Key(inode, ino)] = ctypes.c_uint8(1)
            except Exception:         # bcc raises a bare Exception when full
                break
            marked.add((inode, ino))
        return marked

    def drop_orphans(self, keys: list[tuple[int, int]]) -> None:
        """Forget these orphans and their marks."""
        for name in ("orphans", "orphans_decided"):
            table = self.bpf[name]
            for inode, ino in keys:
                try:
                    del table[table.Key(inode, ino)]
                except KeyError:
                    pass

    def read_counters(self) -> dict[str, int]:
        table = self.bpf["counters"]
        out = {}
        for i, name in enumerate(bpfdefs.HEALTH_COUNTERS):
            out[name] = sum(table.getvalue(ctypes.c_int(i)))
        return out

    def read_dirty_now(self, max_age_ns: int) -> dict[tuple[int, int], int]:
        """Inodes dirty now per (slot, gen).  Entries older than max_age_ns
        are dropped: an inode deleted while dirty never reports clean."""
        now = time.monotonic_ns()
        table = self.bpf["dirty_inodes"]
        out: dict[tuple[int, int], int] = {}
        stale = []
        for k, v in table.items():
            if now - v.since_ns > max_age_ns:
                stale.append(k)
                continue
            key = (v.slot, v.gen)
            out[key] = out.get(key, 0) + 1
        for k in stale:
            try:
                del table[k]
            except KeyError:
                pass
        return out

    def take_victims(self, flush_ids: set[int]) -> dict[int, dict[tuple[int, int], int]]:
        """Bytes written back per flush and slot, for finished flushes; their
        entries are removed from the map."""
        table = self.bpf["victims"]
        out: dict[int, dict[tuple[int, int], int]] = {}
        done = []
        for k, v in table.items():
            if k.flush_id in flush_ids:
                out.setdefault(k.flush_id, {})[(k.slot, k.gen)] = v.value
                done.append(k)
        for k in done:
            try:
                del table[k]
            except KeyError:
                pass
        return out

    def flush_last(self, flush_id: int) -> int | None:
        v = self.bpf["flush_last"].get(ctypes.c_uint64(flush_id))
        return None if v is None else v.value

    def forget_flush(self, flush_id: int, tid: int) -> None:
        try:
            del self.bpf["flush_last"][ctypes.c_uint64(flush_id)]
        except KeyError:
            pass
        fl = self.bpf["flushes"]
        v = fl.get(ctypes.c_uint32(tid))
        if v is not None and v.id == flush_id:
            try:
                del fl[ctypes.c_uint32(tid)]
            except KeyError:
                pass

    def program_stats(self) -> tuple[bool, dict[str, tuple[int, int, int]]]:
        """Whether kernel.bpf_stats_enabled is on, and {program: (run_time_ns,
        run_cnt, recursion_misses)} from our own program fds' fdinfo (run
        figures only while the sysctl is on; never another process's
        programs).  recursion_misses: runs the kernel skipped because the
        program was already running on that CPU (an I/O completion
        interrupting it): events ovltrace did not see, always counted."""
        out = {}
        for name, fn in (self.bpf.funcs.items() if self.bpf is not None else ()):
            fd = getattr(fn, "fd", None)
            if not isinstance(fd, int) or fd < 0:
                continue
            info = {}
            try:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k in ("run_time_ns", "run_cnt", "recursion_misses"):
                            info[k] = int(v)
            except (OSError, ValueError):
                continue
            out[name.decode() if isinstance(name, bytes) else str(name)] = (
                info.get("run_time_ns", 0), info.get("run_cnt", 0), info.get("recursion_misses", 0))
        return bpf_stats_enabled(), out

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) of the maps that can fill up."""
        out = {}
        for name in ("dirty_inodes", "victims", "dirs", "flushes", "orphans"):
            t = self.bpf[name]
            out[name] = (len(t), t.max_entries)
        return out

    def poll(self, timeout_ms: int = 0) -> list[RawEvent]:
        self.bpf.ring_buffer_poll(timeout_ms)
        ev, self.events = self.events, []
        return ev

    def _on_mount_event(self, _ctx, data, size) -> None:
        self.events.append(parse_mount_event(ctypes.string_at(data, size)))

    def _on_event(self, _ctx, data, _size) -> None:
        e = self.bpf["events"].event(data)
        self.events.append(RawEvent(
            e.type, e.kind, e.pid, e.tid, e.slot, e.gen, e.dev, e.err, e.ts_ns, e.end_ns,
            e.ino, e.flush_id, e.cgroup_id, decode(bytes(e.comm).split(b"\0")[0]),
            decode(bytes(e.path).split(b"\0")[0]),
            e.synced_dev, e.sb_errseq, e.sb_err_advanced))


def _counters(structs) -> Counters:
    """struct ovl_stats (one, or one per CPU) -> Counters, by the schema."""
    values = []
    for d in COUNTERS:
        cols = [getattr(v, d.member) for v in structs]
        if d.length:
            values.append(tuple(sum(c[i] for c in cols) for i in range(d.length)))
        elif d.index is not None:
            values.append(sum(c[d.index] for c in cols))
        else:
            values.append(sum(cols))
    return Counters(*values)


def check_stats_layout(leaf) -> None:
    """The compiled struct ovl_stats (bpf/ovltrace.h) must hold exactly the
    members counters.COUNTERS reads (by name, so order is free): a C change
    not made in the schema (or the reverse) stops here, not in a wrong number."""
    want = sorted(bpf_members())
    have = sorted((name, getattr(t, "_length_", 0)) for name, t in leaf._fields_)
    if have != want:
        raise OvltraceError("struct ovl_stats in bpf/ovltrace.h and ovltrace/counters.py "
                            f"disagree: C has {have}, the schema {want}")


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _manual_bpf(BPF):
    """bcc attaches every kprobe__/kfunc__/tracepoint__ function in the
    BPF() constructor and raises on the first failure, which would take all
    hooks down; ovltrace attaches each itself."""
    class ManualBPF(BPF):
        def _trace_autoload(self):
            pass
    return ManualBPF


def _percpu_zero(table):
    return (table.Leaf * table.total_cpu)()


def _quiet_compile(BPF, src_file: str, cflags: list[str]):
    """Compile with bcc, keeping its compiler chatter off the terminal but
    returning the first real error line in the exception."""
    chatter: list[str] = []
    try:
        with _stderr_to(chatter):
            return BPF(src_file=src_file.encode(), cflags=cflags)
    except Exception as e:
        errors = [line for line in chatter if "error" in line]
        raise Exception(errors[0] if errors else str(e)) from None
