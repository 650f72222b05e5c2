"""The BPF C read as text: the rules its correctness rests on that no live
test can catch reliably (races, mismatched ring buffers), names shared
with Python, and (live) that every function-hook variant still compiles
and passes the verifier on this kernel, which cannot attach them."""
from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, strategies as st

from ovltrace.counters import COPY_UP_LATENCY_BUCKETS, COUNTERS
from ovltrace.probes import BPF_DIR

SRC = (BPF_DIR / "ovltrace.bpf.c").read_text()
HDR = (BPF_DIR / "ovltrace.h").read_text()


def struct_members(text: str, name: str) -> list[tuple[str, str]]:
    body = re.search(r"struct %s \{(.*?)\n\};" % name, text, re.S)
    assert body, f"struct {name} not found"
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    return re.findall(r"^\s*(\w+)\s+(\w+(?:\[\w+\])?);", code, re.M)


def test_ringbuf_records_are_submitted_on_their_own_map():
    reserves = list(re.finditer(r"(\w+)\s*=\s*(\w+)\.ringbuf_reserve\(", SRC))
    assert len(reserves) >= 4
    for i, m in enumerate(reserves):
        var, rb = m.groups()
        end = reserves[i + 1].start() if i + 1 < len(reserves) else len(SRC)
        ends = re.findall(r"(\w+)\.ringbuf_(?:submit|discard)\(\s*%s\b" % var, SRC[m.end():end])
        assert ends, f"{rb} reservation at offset {m.start()} is never submitted"
        assert set(ends) == {rb}, f"reserved on {rb}, submitted on {ends}"


def test_events_are_filled_by_the_shared_helpers():
    for m in re.finditer(r"(\w+)\s*=\s*\w+\.ringbuf_reserve\(", SRC):
        tail = SRC[m.end():m.end() + 400]
        assert re.search(r"event_init(_flush)?\(%s," % m.group(1), tail), tail
    assert "__builtin_memset(e" not in SRC


def test_event_layout_unchanged():
    # Python reads struct event through bcc's ctypes mirror: same fields, same order
    assert struct_members(HDR, "event") == [
        ("u32", "type"), ("u32", "kind"), ("u32", "pid"), ("u32", "tid"), ("u32", "slot"),
        ("u32", "gen"), ("u32", "dev"), ("s32", "err"), ("u64", "ts_ns"), ("u64", "end_ns"),
        ("u64", "ino"), ("u64", "flush_id"), ("u64", "cgroup_id"), ("u32", "synced_dev"),
        ("u32", "sb_errseq"), ("u32", "sb_err_advanced"), ("u32", "pad"),
        ("char", "comm[COMM_LEN]"), ("char", "path[PATH_LEN]")]


def test_stats_members_carry_the_model_names():
    members = [n.split("[")[0] for _t, n in struct_members(HDR, "ovl_stats")]
    assert members == ["dirty_calls", "inodes_dirtied", "bytes_dirtied", "bytes_written_back",
                       "copy_ups", "copy_up_bytes", "writeback_errors", "fsync_calls",
                       "syncfs_calls", "errors_returned", "copy_ups_metadata_only",
                       "copy_up_failures", "copy_up_ns", "copy_up_latency", "sb_errseq_advances"]
    assert set(members) == {d.member for d in COUNTERS}      # the schema reads them all


def test_shared_map_counts_do_not_race():
    # victims is shared by every CPU writing back for a flush: created with
    # BPF_NOEXIST, then added to atomically; never lookup-miss-then-update
    assert "victims.update(" not in SRC
    assert "victims.insert(" in SRC and "__sync_fetch_and_add(v, bytes)" in SRC
    assert "copyup_seen.update(" not in SRC and "copyup_seen.insert(" in SRC


def test_sb_filter_is_lru():
    assert re.search(r'BPF_TABLE\("lru_hash",\s*u64,\s*struct sb_val,\s*sb_filter,', SRC)
    assert not re.search(r"BPF_HASH\(sb_filter\b", SRC)


def calls(name: str) -> list[str]:
    """The argument text of every call of `name` in the source."""
    out = []
    for m in re.finditer(r"\b%s\(" % name, SRC):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(SRC[i], 0)
            i += 1
        out.append(SRC[m.end():i - 1])
    return out


def test_no_literal_pointer_size():
    # kernel members are read through KREAD (sizes from BTF) or KPTR_SIZE
    reads = calls("bpf_probe_read_kernel")
    assert len(reads) >= 4
    for args in reads:
        assert not ("OFF_" in args and "sizeof(" in args), args
    assert "KPTR_SIZE" in SRC and not re.search(r"fd \* 8\b", SRC)


def bpf_log2(v: int) -> int:
    """bcc's helpers.h bpf_log2 (unsigned int)."""
    v &= 0xFFFFFFFF
    r = int(v > 0xFFFF) << 4
    v >>= r
    shift = int(v > 0xFF) << 3
    v >>= shift
    r |= shift
    shift = int(v > 0xF) << 2
    v >>= shift
    r |= shift
    shift = int(v > 0x3) << 1
    v >>= shift
    r |= shift
    return r | (v >> 1)


def bpf_log2l(v: int) -> int:
    """bcc's helpers.h bpf_log2l (unsigned long)."""
    hi = v >> 32
    return bpf_log2(hi) + 33 if hi else bpf_log2(v) + 1


def old_bucket(us: int) -> int:
    """The hand-written loop bpf_log2l replaced: what recordings hold."""
    b = 0
    for i in range(1, COPY_UP_LATENCY_BUCKETS):
        if us >> i:
            b = i
    return b


@given(st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 64) - 1)))
def test_copy_up_latency_bucket_is_the_same_with_bpf_log2l(us):
    b = bpf_log2l(us) - 1
    assert min(b, COPY_UP_LATENCY_BUCKETS - 1) == old_bucket(us)


def test_copy_up_latency_uses_bpf_log2l():
    assert "bpf_log2l(ns / 1000) - 1" in SRC
    assert not re.search(r"us >> i\b", SRC)


@pytest.mark.live
def test_every_function_hook_variant_compiles_and_verifies():
    """With all FN_ defines: compile, and load (verify) the kprobe variants
    and every tracepoint program; nothing is attached.  fentry programs
    need an attach target at load, which this machine refuses (EPERM)."""
    from ovltrace.kernel.headers import build_tree, remove_tree
    from ovltrace.kernel.layout import FUNCTIONS, generate, programs
    from ovltrace.hooks import TRACEFS
    from ovltrace.probes import (Probes, _env, _manual_bpf, _quiet_compile,
                                 ensure_tracefs)
    ensure_tracefs()
    p = Probes(mode="auto")
    p.layout = generate(p.btf, TRACEFS)
    tree = build_tree()
    try:
        with open(os.path.join(tree, "kernel_layout.h"), "w") as f:
            f.write(p.layout.header)
        from bcc import BPF
        flags = [f for f in p.cflags(tree) if not f.startswith("-DFN_")]
        flags += [f"-DFN_{h}" for h in FUNCTIONS]
        with _env("BCC_KERNEL_SOURCE", tree):
            b = _quiet_compile(_manual_bpf(BPF), str(BPF_DIR / "ovltrace.bpf.c"), flags)
    finally:
        remove_tree(tree)
    try:
        for spec in FUNCTIONS.values():
            b.load_func(f"kprobe__{spec['function']}".encode(), BPF.KPROBE)
            if spec["exit"]:
                b.load_func(f"kretprobe__{spec['function']}".encode(), BPF.KPROBE)
        for hook in p.enabled_hooks():
            for tp in programs(hook):
                cat, name = tp.split("/")
                if cat == "syscalls":
                    b.load_func(f"tracepoint__{cat}__{name}".encode(), BPF.TRACEPOINT)
                else:
                    b.load_func(f"raw_tracepoint__{name}".encode(), BPF.RAW_TRACEPOINT)
    finally:
        b.cleanup()


def test_icache_check_is_never_computed_over_the_shared_entry():
    # over *c, another CPU's half-written entry could pass as valid
    uses = [a for a in calls("icache_check") if not a.startswith("struct ")]
    assert uses and all(a.startswith("&") for a in uses), uses
    assert not re.search(r"\bc->\w+\s*=[^=]", SRC)
