"""The BTF reader against this kernel's real BTF, and against garbage."""
import ctypes
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ovltrace.kernel.btf import BTF, BTFError
from ovltrace.kernel import layout as layout_mod
from ovltrace.kernel.layout import (ATTRIBUTION, FUNCTIONS, HOOKS, MEMBERS, generate, pointer_size,
                                    programs)

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.fixture(scope="module")
def btf():
    return BTF.load(VMLINUX)


def test_offsets_are_found_and_pointer_sized(btf):
    # members move between kernels (6.18 was checked by hand with pahole),
    # so only check they are found, consistent and pointer-sized.
    off, size = btf.offset("inode", "i_sb")
    assert size == 8 and off % 8 == 0
    off, size = btf.offset("dentry", "d_u.d_alias")   # inside an anonymous union
    assert size == 16                                   # an hlist_node
    assert btf.offset("super_block", "s_dev")[1] == 4


def test_member_in_anonymous_union(btf):
    # i_dentry sits in a union with i_rcu in struct inode
    assert btf.offset("inode", "i_dentry")[1] == 8


def test_enum_values(btf):
    assert btf.enum_value("WB_REASON_SYNC") == 2
    with pytest.raises(BTFError):
        btf.enum_value("NO_SUCH_ENUMERATOR_X")


def test_missing_member_is_a_clear_error(btf):
    with pytest.raises(BTFError, match="no member"):
        btf.offset("inode", "i_no_such_member")
    with pytest.raises(BTFError, match="not in BTF"):
        btf.struct("no_such_struct_xyz")


def test_layout_has_every_hook_here(btf):
    layout = generate(btf, tracefs="/nonexistent")       # no tracefs: hooks say why
    assert layout.missing_core is None
    assert all("tracepoint" in why for why in layout.hooks.values())
    for m in ATTRIBUTION:
        assert f"#define OFF_{m} " in layout.header


def test_layout_disables_hook_when_member_missing(btf, monkeypatch):
    monkeypatch.setitem(MEMBERS, "file_f_inode", ("file", "f_no_such"))
    layout = generate(btf, tracefs="/sys/kernel/tracing")
    assert "f_no_such" in layout.hooks["syncfs"]
    assert "f_no_such" in layout.hooks["fsync"]
    assert layout.hooks["sync"] is None or "tracepoint" in layout.hooks["sync"]


def test_pointer_size_from_btf(btf):
    assert pointer_size(btf) == ctypes.sizeof(ctypes.c_void_p) == 8
    layout = generate(btf, tracefs="/sys/kernel/tracing")
    assert "#define KPTR_SIZE 8\n" in layout.header
    assert not any("unsupported" in (why or "") for why in layout.hooks.values())


class _NoListHead:
    """This kernel's BTF without struct list_head: the size of unsigned
    long must do."""
    def __init__(self, btf):
        self._btf = btf

    def offset(self, struct_name, path):
        if struct_name == "list_head":
            raise BTFError("struct list_head not in BTF")
        return self._btf.offset(struct_name, path)

    def __getattr__(self, name):
        return getattr(self._btf, name)


def test_pointer_size_without_list_head(btf):
    assert pointer_size(_NoListHead(btf)) == 8


def test_other_pointer_size_is_unsupported_per_hook(btf, monkeypatch):
    monkeypatch.setattr(layout_mod, "pointer_size", lambda b: 4)
    layout = generate(btf, tracefs="/sys/kernel/tracing")
    assert "#define KPTR_SIZE 4\n" in layout.header
    assert [h for h, why in layout.hooks.items() if why is None] == []
    for why in list(layout.hooks.values()) + list(layout.functions.values()):
        assert why.startswith("unsupported kernel: pointers are 4 bytes"), why
    assert set(layout.functions) == set(FUNCTIONS)


def test_unknown_pointer_size_is_unsupported(btf, monkeypatch):
    def unknown(b):
        raise BTFError("cannot tell the kernel's pointer size")
    monkeypatch.setattr(layout_mod, "pointer_size", unknown)
    layout = generate(btf, tracefs="/sys/kernel/tracing")
    assert all("cannot tell the kernel's pointer size" in why for why in layout.hooks.values())


def test_not_btf(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello world, this is not BTF at all")
    with pytest.raises(BTFError, match="not a BTF"):
        BTF.load(str(p))
    with pytest.raises(BTFError, match="cannot read"):
        BTF.load(str(tmp_path / "missing"))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_garbage_only_raises_btferror(data):
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(data), len(data), 0)
    try:
        b = BTF(header + data + b"\0", path="fuzz")
        b.find(4, "inode")
    except BTFError:
        pass


class _NoFolio(_NoListHead):
    """This kernel's BTF as a 5.10 kernel's: no struct folio."""
    def offset(self, struct_name, path):
        if struct_name == "folio":
            raise BTFError("struct folio not in BTF")
        return self._btf.offset(struct_name, path)

    def enum_value(self, name):
        return self._btf.enum_value(name)


def _tracefs_without(tmp_path, gone: set[str]) -> str:
    """A tracefs with the tracepoints the hooks name that this kernel has,
    minus `gone`, plus 5.10's writeback_dirty_page."""
    named = {tp for need in HOOKS.values() for tp in need["tracepoints"]}
    for tp in named - gone:
        if os.path.isdir(f"/sys/kernel/tracing/events/{tp}"):
            (tmp_path / "events" / tp).mkdir(parents=True)
    (tmp_path / "events" / "writeback" / "writeback_dirty_page").mkdir(parents=True, exist_ok=True)
    return str(tmp_path)


def test_kernels_before_folios_count_pages(btf, tmp_path):
    """5.10: no struct folio, no writeback_dirty_folio: writeback_dirty_page
    serves the bytes-dirtied hook, and so the copy-up estimate too."""
    tracefs = _tracefs_without(tmp_path, {"writeback/writeback_dirty_folio"})
    layout = generate(_NoFolio(btf), tracefs=tracefs)
    assert layout.hooks["folio_dirty"] is None and layout.variants == {"folio_dirty": "older"}
    assert layout.hooks["copy_up"] is None
    assert "#define DIRTY_PAGE_TP 1\n" in layout.header
    assert programs("folio_dirty", "older") == ["writeback/writeback_dirty_page"]
    assert any("writeback_dirty_page" in n for n in layout.notes)
    assert not any("large folios" in n for n in layout.notes)
    # a kernel with folios keeps the folio tracepoint
    layout = generate(btf, tracefs=_tracefs_without(tmp_path / "a", set()))
    assert layout.variants == {} and "DIRTY_PAGE_TP" not in layout.header
    # neither tracepoint: the hook says why (the newer one's name)
    tracefs = _tracefs_without(tmp_path / "b", {"writeback/writeback_dirty_folio",
                                                "writeback/writeback_dirty_page"})
    os.rmdir(os.path.join(tracefs, "events", "writeback", "writeback_dirty_page"))
    layout = generate(_NoFolio(btf), tracefs=tracefs)
    assert "folio" in layout.hooks["folio_dirty"] and layout.variants == {}


def test_module_structs_missing_are_named(btf, monkeypatch):
    """5.10's overlay module has no BTF: the copy-up function hook lacks
    ovl_inode, and the layout says which module that is (hooks.Attacher
    makes it a documented limit)."""
    monkeypatch.setitem(MEMBERS, "ovl_inode_flags", ("ovl_inode", "no_such_flags"))
    layout = generate(btf, tracefs="/sys/kernel/tracing")
    assert "no_such_flags" in layout.functions["copy_up"]
    assert layout.module_structs == {"copy_up": "overlay"}
    monkeypatch.undo()
    assert generate(btf, tracefs="/sys/kernel/tracing").module_structs == {}


class _NoStateEnum(_NoListHead):
    """BTF of a kernel whose inode state flags are #defines (before 6.18's enum)."""
    def enum_value(self, name):
        if name.startswith("I_"):
            raise BTFError(f"{name} not in BTF")
        return self._btf.enum_value(name)


def test_inode_state_flags_by_kernel_when_btf_lacks_them(btf):
    """6.12 renumbered the i_state bits ("fs: reorder i_state bits"); before
    the enum they are only macros, so the release decides."""
    def flag(layout, name):
        return int(next(l for l in layout.header.splitlines()
                        if l.startswith(f"#define K_{name} ")).split()[2])
    old = generate(_NoStateEnum(btf), tracefs="/sys/kernel/tracing", release=(6, 1))
    new = generate(_NoStateEnum(btf), tracefs="/sys/kernel/tracing", release=(6, 12))
    assert [flag(old, n) for n in ("I_DIRTY_SYNC", "I_DIRTY_DATASYNC", "I_DIRTY_PAGES",
                                   "I_DIRTY_TIME")] == [1, 2, 4, 2048]
    assert [flag(new, n) for n in ("I_DIRTY_SYNC", "I_DIRTY_DATASYNC", "I_DIRTY_PAGES",
                                   "I_DIRTY_TIME")] == [8, 16, 32, 2048]
    # where BTF has them (this machine's enum), BTF wins whatever the release
    here = generate(btf, tracefs="/sys/kernel/tracing", release=(5, 10))
    assert flag(here, "I_DIRTY_PAGES") == btf.enum_value("I_DIRTY_PAGES")
