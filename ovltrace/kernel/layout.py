"""Kernel struct layouts and constants for the BPF programs, read from BTF.

This is the one place that knows which kernel members the BPF code reads.
`generate()` turns BTF into kernel_layout.h (OFF_x/SZ_x macros, flag
values) and decides, per hook, whether this kernel has what it needs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .btf import BTF, BTFError, KIND_INT, KIND_TYPEDEF

# macro name -> (struct, dotted member path)
MEMBERS: dict[str, tuple[str, str]] = {
    "inode_i_sb": ("inode", "i_sb"),
    "inode_i_ino": ("inode", "i_ino"),
    "inode_i_generation": ("inode", "i_generation"),
    "inode_i_state": ("inode", "i_state"),
    "inode_i_mode": ("inode", "i_mode"),
    "inode_i_dentry": ("inode", "i_dentry"),
    "inode_i_mapping": ("inode", "i_mapping"),
    "dentry_d_parent": ("dentry", "d_parent"),
    "dentry_d_inode": ("dentry", "d_inode"),
    "dentry_d_alias": ("dentry", "d_u.d_alias"),
    "super_block_s_dev": ("super_block", "s_dev"),
    "address_space_host": ("address_space", "host"),
    "address_space_wb_err": ("address_space", "wb_err"),
    "folio_flags": ("folio", "flags"),
    "folio__flags_1": ("folio", "_flags_1"),
    "writeback_control_nr_to_write": ("writeback_control", "nr_to_write"),
    "wb_writeback_work_reason": ("wb_writeback_work", "reason"),
    "task_struct_files": ("task_struct", "files"),
    "files_struct_fdt": ("files_struct", "fdt"),
    "fdtable_fd": ("fdtable", "fd"),
    "fdtable_max_fds": ("fdtable", "max_fds"),
    "file_f_inode": ("file", "f_inode"),
    # function hooks only
    "dentry_d_sb": ("dentry", "d_sb"),
    "inode_i_size": ("inode", "i_size"),
    "super_block_s_wb_err": ("super_block", "s_wb_err"),
    # overlayfs internals (module BTF when overlay is a module)
    "ovl_inode_flags": ("ovl_inode", "flags"),
    "ovl_inode_vfs_inode": ("ovl_inode", "vfs_inode"),
    "ovl_inode___upperdentry": ("ovl_inode", "__upperdentry"),
}
# structs that live in a module: their BTF is the module's (5.11+), which
# a kernel may lack even where vmlinux has BTF
MODULE_STRUCTS = {"ovl_inode": "overlay"}
# members whose size is not that of an integer (only their offset is used)
_AGGREGATE = {"dentry_d_alias", "ovl_inode_vfs_inode"}
# Members whose absence degrades a hook instead of disabling it.
OPTIONAL = {"folio__flags_1"}  # without it, every folio counts as one page

# read in one go on the hot path (see INODE_SPAN in the BPF code)
INODE_SPAN = ["inode_i_mode", "inode_i_sb", "inode_i_ino", "inode_i_generation", "inode_i_state",
              "inode_i_mapping"]
MAX_SPAN = 256
ATTRIBUTION = ["inode_i_mode", "inode_i_sb", "inode_i_ino", "inode_i_generation", "inode_i_state",
               "inode_i_mapping", "inode_i_dentry",
               "dentry_d_parent", "dentry_d_inode", "dentry_d_alias", "super_block_s_dev"]
FD_TO_SB = ["task_struct_files", "files_struct_fdt", "fdtable_fd", "fdtable_max_fds",
            "file_f_inode", "inode_i_sb", "super_block_s_dev"]

# What each tracepoint-path hook needs: members, and tracepoints (category/name).
HOOKS: dict[str, dict] = {
    "inode_dirty": {"members": ATTRIBUTION + ["inode_i_state", "inode_i_mode"],
                    "tracepoints": ["writeback/writeback_mark_inode_dirty"],
                    "what": "upper inodes dirtied (__mark_inode_dirty)"},
    "folio_dirty": {"members": ATTRIBUTION + ["folio_flags"],
                    "tracepoints": ["writeback/writeback_dirty_folio",
                                    "writeback/writeback_mark_inode_dirty"],
                    "programs": ["writeback/writeback_dirty_folio"],
                    "what": "bytes dirtied, copy-up bytes",
                    # before folios (5.16): one page per event
                    "older": {"members": ATTRIBUTION,
                              "tracepoints": ["writeback/writeback_dirty_page",
                                              "writeback/writeback_mark_inode_dirty"],
                              "programs": ["writeback/writeback_dirty_page"],
                              "define": "DIRTY_PAGE_TP",
                              "note": "no writeback_dirty_folio (kernels before 5.16): "
                                      "writeback_dirty_page counts bytes dirtied, a page each"}},
    "writeback": {"members": ATTRIBUTION + ["inode_i_state", "writeback_control_nr_to_write",
                                            "wb_writeback_work_reason"],
                  "tracepoints": ["writeback/writeback_single_inode", "writeback/writeback_queue",
                                  "writeback/writeback_start", "writeback/writeback_written"],
                  "what": "bytes written back, per flush"},
    "wb_error": {"members": ATTRIBUTION + ["address_space_host", "address_space_wb_err"],
                 "tracepoints": ["filemap/filemap_set_wb_err"],
                 "what": "writeback errors (__filemap_set_wb_err, for errseq_set)"},
    "syncfs": {"members": FD_TO_SB, "tracepoints": ["syscalls/sys_enter_syncfs", "syscalls/sys_exit_syncfs"],
               "what": "syncfs calls and their duration"},
    "copy_up": {"members": ATTRIBUTION + ["inode_i_mode"],
                "tracepoints": ["writeback/writeback_mark_inode_dirty"],   # + folio_dirty's
                "programs": [],     # the estimate lives in the inode_dirty/folio_dirty hooks
                "what": "copy-ups, bytes (ovl_copy_up_flags; stand-in: workdir estimate)"},
    "sync_fs": {"members": FD_TO_SB, "tracepoints": ["syscalls/sys_enter_syncfs"],
                "programs": [],     # the syncfs hook's syscall tracepoints stand in
                "what": "superblock each sync flushed (sync_filesystem; stand-in: syscall)"},
    "sync": {"members": [], "tracepoints": ["syscalls/sys_enter_sync", "syscalls/sys_exit_sync"],
             "what": "sync calls"},
    "umount": {"members": [], "tracepoints": ["syscalls/sys_enter_umount", "syscalls/sys_exit_umount"],
               "what": "unmounts (and the flush they cause)"},
    "mounts": {"members": [],
               "tracepoints": [f"syscalls/sys_{d}_{c}" for c in ("mount", "fsopen", "fsconfig", "fsmount")
                               for d in ("enter", "exit")] + ["syscalls/sys_enter_move_mount"],
               "what": "overlay mounts as they happen (none missed, however short-lived)"},
    "fsync": {"members": FD_TO_SB, "tracepoints": ["syscalls/sys_enter_fsync", "syscalls/sys_exit_fsync",
                                                   "syscalls/sys_enter_fdatasync", "syscalls/sys_exit_fdatasync"],
              "what": "fsync/fdatasync calls and errors they return"},
    "renames": {"members": [], "tracepoints": [f"syscalls/sys_exit_{c}"
                                               for c in ("rename", "renameat", "renameat2")],
                "what": "renames (keep cached directory owners exact; without it, none cached)"},
}

# Hooks that a kernel function can serve better than the tracepoint path,
# tried in this order: fentry/fexit, kprobe/kretprobe, then the tracepoint
# stand-in (the hook of the same name in HOOKS).  `exit`: needs the return.
FUNCTIONS: dict[str, dict] = {
    "inode_dirty": {"function": "__mark_inode_dirty", "exit": False,
                    "members": ATTRIBUTION + ["inode_i_mode"]},
    "copy_up": {"function": "ovl_copy_up_flags", "exit": True,
                "members": ["dentry_d_sb", "dentry_d_inode", "super_block_s_dev", "inode_i_mode",
                            "inode_i_size", "ovl_inode_flags", "ovl_inode_vfs_inode",
                            "ovl_inode___upperdentry"]},
    "sync_fs": {"function": "sync_filesystem", "exit": True,
                "members": ["super_block_s_dev", "super_block_s_wb_err"]},
    "wb_error": {"function": "__filemap_set_wb_err", "exit": False,
                 "members": ATTRIBUTION + ["address_space_host"]},
}
# No mechanism can hook it on any kernel we know (lib/ is built notrace).
UNHOOKABLE = {"errseq_set": "notrace (lib/ is built without ftrace): kprobes refuse it "
                            "(\"Could not probe notrace function\"), fentry fails; covered by "
                            "wb_error (__filemap_set_wb_err) and s_wb_err read by sync_fs"}

# Inode state flags are #defines (not in BTF) until the kernel made them
# an enum; 6.12 renumbered them ("fs: reorder i_state bits").
_FLAG_FALLBACK = {"I_DIRTY_SYNC": 1 << 0, "I_DIRTY_DATASYNC": 1 << 1,
                  "I_DIRTY_PAGES": 1 << 2, "I_DIRTY_TIME": 1 << 11}
_FLAG_FALLBACK_612 = {"I_DIRTY_SYNC": 1 << 3, "I_DIRTY_DATASYNC": 1 << 4,
                      "I_DIRTY_PAGES": 1 << 5, "I_DIRTY_TIME": 1 << 11}


def kernel_release() -> tuple[int, int]:
    """(major, minor) of the running kernel: what BTF cannot tell (macro
    values, BPF instructions such as the fetching atomics of 5.12)."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# The BPF code reads every kernel pointer (and unsigned long) into a u64.
SUPPORTED_PTR_SIZE = 8


def pointer_size(btf: BTF) -> int:
    """sizeof(void *) of the kernel the BTF describes.  BTF stores no size
    for pointer types: list_head.prev follows exactly one pointer, and
    unsigned long (what the kernel stores pointers in) is the same size."""
    try:
        return btf.offset("list_head", "prev")[0]
    except BTFError:
        pass
    for name in ("__kernel_ulong_t", "uintptr_t"):
        tid = btf.find(KIND_TYPEDEF, name)
        if tid is not None and btf.kind(btf.resolve(tid)) == KIND_INT:
            return btf.size(tid)
    raise BTFError("cannot tell the kernel's pointer size (no list_head, no __kernel_ulong_t)")


def pt_regs(btf: BTF) -> str | None:
    """struct pt_regs as C, from BTF: bcc's PT_REGS_PARMx read it, and
    without kernel headers nothing else defines it.  Only a flat file of
    unsigned longs (x86_64) is written out."""
    try:
        word = pointer_size(btf)       # sizeof(unsigned long)
        tid = btf.struct("pt_regs")
        members = btf.members(tid)
        body, pos = [], 0
        for m in members:
            if m.bitfield_size or m.bit_offset != pos * 8 or btf.size(m.type_id) != word:
                return None
            body.append(f"\tunsigned long {m.name or f'__anon{pos}'};")   # 6.9+: cs/ss unions
            pos += word
        if pos != btf.size(tid):
            return None
    except BTFError:
        return None
    return "struct pt_regs {\n" + "\n".join(body) + "\n};"


def programs(hook: str, variant: str | None = None) -> list[str]:
    """The tracepoints (category/name) the hook's own programs attach to
    (`variant`: Layout.variants[hook], the kernel's older tracepoints)."""
    need = HOOKS[hook][variant] if variant else HOOKS[hook]
    return need.get("programs", need["tracepoints"])


@dataclass
class Layout:
    header: str
    hooks: dict[str, str | None] = field(default_factory=dict)   # hook -> None (ok) or why not
    functions: dict[str, str | None] = field(default_factory=dict)  # function variant: same
    notes: list[str] = field(default_factory=list)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    missing_core: str | None = None     # set when even attribution is impossible
    variants: dict[str, str] = field(default_factory=dict)   # hook -> "older": its old tracepoints
    module_structs: dict[str, str] = field(default_factory=dict)  # function hook -> module whose
    #                                   structs it lacks (that module has no BTF here)


def tracepoint_exists(tp: str, tracefs: str) -> bool:
    return os.path.isdir(os.path.join(tracefs, "events", tp))


def generate(btf: BTF, tracefs: str = "/sys/kernel/tracing",
             page_size: int | None = None, release: tuple[int, int] | None = None) -> Layout:
    lines = ["/* generated by ovltrace from BTF: do not edit */", "#pragma once"]
    try:
        ptr_size = pointer_size(btf)
        unsupported = (None if ptr_size == SUPPORTED_PTR_SIZE else
                       f"unsupported kernel: pointers are {ptr_size} bytes, ovltrace's BPF code "
                       f"reads them as {SUPPORTED_PTR_SIZE}")
    except BTFError as e:
        ptr_size, unsupported = 0, f"unsupported kernel: {e}"
    lines.append(f"#define KPTR_SIZE {ptr_size}")
    found: dict[str, tuple[int, int]] = {}
    missing: dict[str, str] = {}
    for macro, (struct_name, path) in MEMBERS.items():
        try:
            off, size = btf.offset(struct_name, path)
            if size not in (1, 2, 4, 8) and macro not in _AGGREGATE:
                raise BTFError(f"{struct_name}.{path} has unexpected size {size}")
            found[macro] = (off, size)
        except BTFError as e:
            missing[macro] = str(e)
    for macro in MEMBERS:
        if macro in found:
            off, size = found[macro]
            lines.append(f"#define OFF_{macro} {off}")
            lines.append(f"#define SZ_{macro} {min(size, 8)}")
        elif macro not in OPTIONAL:
            # keep the C compiling; the hooks that need it are not attached
            lines.append(f"#define OFF_{macro} 0")
            lines.append(f"#define SZ_{macro} 0")

    notes = []
    flags = {}
    fallbacks = _FLAG_FALLBACK_612 if (release or kernel_release()) >= (6, 12) else _FLAG_FALLBACK
    for name, fallback in fallbacks.items():
        try:
            flags[name] = btf.enum_value(name)
        except BTFError:
            flags[name] = fallback
    for name, val in flags.items():
        lines.append(f"#define K_{name} {val}")
    lines.append("#define K_I_DIRTY (K_I_DIRTY_SYNC | K_I_DIRTY_DATASYNC | K_I_DIRTY_PAGES)")
    lines.append("#define K_I_DIRTY_ALL (K_I_DIRTY | K_I_DIRTY_TIME)")
    try:
        lines.append(f"#define K_WB_REASON_SYNC {btf.enum_value('WB_REASON_SYNC')}")
    except BTFError:
        lines.append("#define K_WB_REASON_SYNC 2")   # stable since 2.6.x
    try:
        lines.append(f"#define K_PG_head {btf.enum_value('PG_head')}")
    except BTFError:
        found.pop("folio__flags_1", None)
        missing.setdefault("folio__flags_1", "enum pageflags has no PG_head")
        lines = [l for l in lines if "folio__flags_1" not in l]
    if "folio__flags_1" not in found:
        notes.append("large folios cannot be sized on this kernel: each dirtied folio counts as one page")
    lines.append(f"#define K_PAGE_SIZE {page_size or os.sysconf('SC_PAGE_SIZE')}UL")
    span = [found[m] for m in INODE_SPAN if m in found]
    if len(span) == len(INODE_SPAN):
        start = min(off for off, _ in span)
        end = max(off + size for off, size in span)
        if end - start > MAX_SPAN:
            # 6.1 keeps i_generation near the end of struct inode: read it
            # on its own (two reads per event instead of one there)
            span = [found[m] for m in INODE_SPAN if m in found and m != "inode_i_generation"]
            start = min(off for off, _ in span)
            end = max(off + size for off, size in span)
            lines.append("#define INODE_GEN_SEPARATE 1")
            notes.append("inode.i_generation lies apart from the other hot members: "
                         "two reads per event")
        if end - start > MAX_SPAN:
            missing["inode_i_state"] = f"inode members too far apart ({end - start} bytes)"
        # 8-byte aligned, so every member is read with one aligned load
        start -= start % 8
        end += -end % 8
        lines.append(f"#define INODE_SPAN_START {start}")
        lines.append(f"#define INODE_SPAN_LEN {end - start}")
    else:
        lines.append("#define INODE_SPAN_START 0")
        lines.append("#define INODE_SPAN_LEN 8")

    hooks: dict[str, str | None] = {}
    variants: dict[str, str] = {}
    for hook, need in HOOKS.items():
        why = _lacks(need, missing, tracefs)
        older = need.get("older")
        if why and older and _lacks(older, missing, tracefs) is None:
            why = None
            variants[hook] = "older"
            lines.append(f"#define {older['define']} 1")
            notes.append(older["note"])
        hooks[hook] = unsupported or why
    if "folio_dirty" in variants:      # no folios there, so none to size
        notes = [n for n in notes if not n.startswith("large folios cannot be sized")]
    regs = pt_regs(btf)
    lines.append(regs or "/* struct pt_regs: not a flat register file here, no kprobes */")
    functions: dict[str, str | None] = {}
    module_structs: dict[str, str] = {}
    for hook, need in FUNCTIONS.items():
        gone = [m for m in need["members"] if m in missing]
        module = MODULE_STRUCTS.get(MEMBERS[gone[0]][0]) if gone else None
        if module:
            module_structs[hook] = module
        functions[hook] = (f"kernel lacks {MEMBERS[gone[0]][0]}.{MEMBERS[gone[0]][1]} "
                           f"({missing[gone[0]]})" if gone else None)
        if not regs and functions[hook] is None:
            functions[hook] = "struct pt_regs is not a flat register file (only x86_64 is)"
        functions[hook] = unsupported or functions[hook]
    try:
        lines.append(f"#define K_OVL_UPPERDATA {btf.enum_value('OVL_UPPERDATA')}")
    except BTFError:
        lines.append("#define K_OVL_UPPERDATA 3")    # enum ovl_inode_flag, stable since 4.19
    lines.append("#define K_O_TRUNC 01000")          # same on x86 and arm64
    core = [m for m in ATTRIBUTION if m in missing]
    missing_core = missing[core[0]] if core else None
    return Layout("\n".join(lines) + "\n", hooks, functions=functions, notes=notes,
                  offsets=found, missing_core=missing_core, variants=variants,
                  module_structs=module_structs)


def _lacks(need: dict, missing: dict[str, str], tracefs: str) -> str | None:
    """Why this kernel cannot serve a hook's needs (members, tracepoints), or None."""
    for m in need["members"]:
        if m in missing:
            return f"kernel lacks {MEMBERS[m][0]}.{MEMBERS[m][1]} ({missing[m]})"
    for tp in need["tracepoints"]:
        if not tracepoint_exists(tp, tracefs):
            return f"tracepoint {tp} not found"
    return None
