"""A small reader for the kernel's BTF (BPF Type Format).

Only what ovltrace needs: find structs, unions and enums by name, resolve
member offsets (including members inside anonymous unions/structs) and
sizes, and enum values.  Split BTF (kernel modules such as
/sys/kernel/btf/overlay) is read on top of vmlinux.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes that follow the 12-byte common header, per kind: (fixed, per member).
_EXTRA = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12), KIND_ENUM: (0, 8), KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    """BTF is missing, unreadable, or lacks what a hook needs."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


class BTF:
    """Parsed type table of one BTF blob (plus its base, for split BTF)."""

    def __init__(self, data: bytes, base: "BTF | None" = None, path: str = "?"):
        self.path = path
        if len(data) < 24:
            raise BTFError(f"{path}: too short to be BTF")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"{path}: not a BTF file (bad magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        if hdr_len < 24 or hdr_len > len(data):
            raise BTFError(f"{path}: corrupt BTF header")
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_len = str_len
        if self._types_end > len(data) or self._str_start + str_len > len(data):
            raise BTFError(f"{path}: truncated BTF")
        self.base = base
        self._first_id = base.type_count if base else 1
        self._str_base = base._str_total if base else 0
        self._str_total = self._str_base + str_len
        self._offsets: list[int] = []  # byte offset of each type's header
        self._by_name: dict[tuple[int, str], int] = {}
        try:
            self._index()
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
            raise BTFError(f"{path}: corrupt BTF ({e})") from None

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, path: str, base: "BTF | None" = None) -> "BTF":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BTFError(f"cannot read BTF {path}: {e.strerror}") from None
        try:
            return cls(data, base, path)
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
            raise BTFError(f"{path}: corrupt BTF ({e})") from None

    @property
    def type_count(self) -> int:
        return self._first_id + len(self._offsets)

    def _index(self) -> None:
        data, pos, end = self._data, self._types_start, self._types_end
        unpack = struct.unpack_from
        wanted = (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF)
        tid = self._first_id
        while pos < end:
            name_off, info = unpack("<II", data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            self._offsets.append(pos)
            if kind in wanted and name_off:
                # keep the first definition; later ones are usually duplicates
                self._by_name.setdefault((kind, self.name_at(name_off)), tid)
            fixed, per = _EXTRA.get(kind, (0, 0))
            pos += 12 + fixed + per * vlen
            tid += 1
        if pos != end:
            raise BTFError(f"{self.path}: corrupt type section")

    # -- raw access --------------------------------------------------------
    def name_at(self, off: int) -> str:
        if off < self._str_base:
            return self.base.name_at(off)  # type: ignore[union-attr]
        start = self._str_start + off - self._str_base
        stop = self._data.index(b"\0", start)
        return self._data[start:stop].decode()

    def _owner(self, tid: int) -> "BTF":
        btf = self
        while tid < btf._first_id:
            btf = btf.base  # type: ignore[assignment]
        return btf

    def _header(self, tid: int) -> tuple["BTF", int, int, int, int, int]:
        btf = self._owner(tid)
        idx = tid - btf._first_id
        if tid == 0 or idx >= len(btf._offsets):
            raise BTFError(f"type id {tid} out of range")
        pos = btf._offsets[idx]
        name_off, info, size_or_type = struct.unpack_from("<III", btf._data, pos)
        return btf, pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, size_or_type | ((info >> 31) << 32)

    def kind(self, tid: int) -> int:
        return self._header(tid)[3]

    def name(self, tid: int) -> str:
        btf, _pos, name_off, *_ = self._header(tid)
        return btf.name_at(name_off)

    # -- lookups -----------------------------------------------------------
    def find(self, kind: int, name: str) -> int | None:
        btf: BTF | None = self
        while btf is not None:
            tid = btf._by_name.get((kind, name))
            if tid is not None:
                return tid
            btf = btf.base
        return None

    def struct(self, name: str) -> int:
        tid = self.find(KIND_STRUCT, name) or self.find(KIND_UNION, name)
        if tid is None:
            raise BTFError(f"struct {name} not in BTF")
        return tid

    def resolve(self, tid: int) -> int:
        """Strip typedefs and qualifiers."""
        while self.kind(tid) in _MODIFIERS:
            tid = self._header(tid)[5] & 0xFFFFFFFF
        return tid

    def size(self, tid: int) -> int:
        tid = self.resolve(tid)
        btf, pos, _n, kind, _v, sot = self._header(tid)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return sot & 0xFFFFFFFF
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _idx, nelems = struct.unpack_from("<III", btf._data, pos + 12)
            return self.size(elem) * nelems
        raise BTFError(f"type {tid} has no size")

    def members(self, tid: int) -> list[Member]:
        tid = self.resolve(tid)
        btf, pos, _n, kind, vlen, sot = self._header(tid)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"type {tid} is not a struct or union")
        kflag = (sot >> 32) & 1
        out = []
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", btf._data, pos + 12 + 12 * i)
            bits, size = (off & 0xFFFFFF, off >> 24) if kflag else (off, 0)
            out.append(Member(btf.name_at(name_off), mtype, bits, size))
        return out

    def member(self, tid: int, name: str) -> tuple[int, int]:
        """(byte offset, type id) of `name` in struct `tid`, searching
        anonymous members; raises BTFError if absent or a bitfield."""
        found = self._find_member(tid, name, 0)
        if found is None:
            raise BTFError(f"{self.name(self.resolve(tid)) or 'anonymous'} has no member {name}")
        bit_off, mtype, bitfield = found
        if bitfield or bit_off % 8:
            raise BTFError(f"member {name} is a bitfield")
        return bit_off // 8, mtype

    def _find_member(self, tid: int, name: str, base: int):
        for m in self.members(tid):
            if m.name == name:
                return base + m.bit_offset, m.type_id, m.bitfield_size
            if not m.name and self.kind(self.resolve(m.type_id)) in (KIND_STRUCT, KIND_UNION):
                hit = self._find_member(m.type_id, name, base + m.bit_offset)
                if hit:
                    return hit
        return None

    def offset(self, struct_name: str, path: str) -> tuple[int, int]:
        """Offset and size of a dotted member path, e.g. ('dentry', 'd_u.d_alias')."""
        tid, total = self.struct(struct_name), 0
        for part in path.split("."):
            off, tid = self.member(tid, part)
            total += off
        return total, self.size(tid)

    def enum_value(self, name: str) -> int:
        """Value of an enumerator, searched over every enum (e.g. 'PG_head')."""
        btf: BTF | None = self
        while btf is not None:
            val = btf._enum_value(name)
            if val is not None:
                return val
            btf = btf.base
        raise BTFError(f"enumerator {name} not in BTF")

    def _enum_value(self, name: str) -> int | None:
        cache = getattr(self, "_enums", None)
        if cache is None:
            cache = self._enums = {}
            data = self._data
            for pos in self._offsets:
                _no, info = struct.unpack_from("<II", data, pos)
                kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
                if kind == KIND_ENUM:
                    for i in range(vlen):
                        n, v = struct.unpack_from("<Ii", data, pos + 12 + 8 * i)
                        cache.setdefault(self.name_at(n), v)
                elif kind == KIND_ENUM64:
                    for i in range(vlen):
                        n, lo, hi = struct.unpack_from("<III", data, pos + 12 + 12 * i)
                        cache.setdefault(self.name_at(n), lo | (hi << 32))
        return cache.get(name)
