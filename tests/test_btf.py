"""The BTF reader against this kernel's real BTF, and against garbage."""
import ctypes
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ovltrace.kernel.btf import BTF, BTFError
from ovltrace.kernel import layout as layout_mod
from ovltrace.kernel.layout import ATTRIBUTION, FUNCTIONS, MEMBERS, generate, pointer_size

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.fixture(scope="module")
def btf():
    return BTF.load(VMLINUX)


def test_offsets_match_kernel_notes(btf):
    # KERNEL-NOTES measured these on 6.18; members move between kernels,
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
