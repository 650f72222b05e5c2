"""The per-overlay counters: the one list every layer is derived from.

BPF keeps these per slot and per CPU in `struct ovl_stats`
(bpf/ovltrace.h).  From this list come: the Python reader of that struct
(probes.read_stats checks the compiled struct has exactly these members,
so a C change that is not made here fails at start-up), the model's
`Counters`, the recording's positional counter lists (append only: old
recordings still read), the audit JSON keys and the exporter's
per-overlay metric families.  tests/test_counters.py fails on any drift.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field, make_dataclass
from itertools import zip_longest


@dataclass(frozen=True)
class CounterDef:
    name: str                 # model, recording and audit JSON name
    bpf: str                  # member of struct ovl_stats; "member[i]" for an array element
    help: str
    metric: str | None = None  # exporter counter family (None: served another way, or not)
    scale: float = 1.0        # metric value = raw x scale (ns -> seconds)
    length: int = 0           # > 0: an array (histogram buckets), kept as a tuple

    @property
    def member(self) -> str:
        return self.bpf.split("[")[0]

    @property
    def index(self) -> int | None:
        return int(self.bpf.split("[")[1].rstrip("]")) if "[" in self.bpf else None


COPY_UP_LATENCY_BUCKETS = 16      # log2(microseconds); COPYUP_LAT_SLOTS in bpf/ovltrace.h

COUNTERS: tuple[CounterDef, ...] = (
    CounterDef("inodes_dirtied", "inodes_dirtied",
               "Upper-filesystem inodes this overlay dirtied (clean to dirty).",
               "ovltrace_overlay_dirtied_inodes_total"),
    CounterDef("bytes_dirtied", "bytes_dirtied",
               "Bytes of page cache this overlay dirtied on its upper filesystem.",
               "ovltrace_overlay_dirtied_bytes_total"),
    CounterDef("bytes_written_back", "bytes_written_back",
               "Bytes of this overlay's data written back to disk.",
               "ovltrace_overlay_written_back_bytes_total"),
    CounterDef("copy_ups", "copy_ups", "Files copied up from a lower layer.",
               "ovltrace_overlay_copy_ups_total"),
    CounterDef("copy_up_bytes", "copy_up_bytes", "Bytes written by copy-ups.",
               "ovltrace_overlay_copy_up_bytes_total"),
    # served by errno from the error records (ovltrace_overlay_writeback_errors_total)
    CounterDef("writeback_errors", "writeback_errors",
               "Writeback errors on this overlay's inodes."),
    CounterDef("fsync_calls", "fsync_calls", "fsync/fdatasync calls on files of this overlay.",
               "ovltrace_overlay_fsync_calls_total"),
    CounterDef("syncfs_calls", "syncfs_calls", "syncfs calls on this overlay.",
               "ovltrace_overlay_syncfs_calls_total"),
    # served by call and errno (ovltrace_overlay_errors_returned_total)
    CounterDef("errors_returned", "errors_returned",
               "syncfs/fsync/fdatasync calls on this overlay that returned an error."),
    CounterDef("dirty_calls_pages", "dirty_calls[0]",
               "__mark_inode_dirty calls for dirty pages."),
    CounterDef("dirty_calls_sync", "dirty_calls[1]",
               "__mark_inode_dirty calls for inode metadata (I_DIRTY_SYNC)."),
    CounterDef("dirty_calls_datasync", "dirty_calls[2]",
               "__mark_inode_dirty calls for I_DIRTY_DATASYNC."),
    CounterDef("dirty_calls_time", "dirty_calls[3]",
               "__mark_inode_dirty calls for timestamps only (lazytime)."),
    CounterDef("copy_ups_metadata_only", "copy_ups_metadata_only",
               "Copy-ups of metadata only (metacopy=on, O_TRUNC); needs the "
               "ovl_copy_up_flags hook.", "ovltrace_overlay_copy_ups_metadata_only_total"),
    CounterDef("copy_up_failures", "copy_up_failures",
               "Copy-ups that failed; needs the ovl_copy_up_flags hook.",
               "ovltrace_overlay_copy_up_failures_total"),
    CounterDef("copy_up_ns", "copy_up_ns",
               "Time spent in copy-ups (divide by copy_ups_total for the mean latency); "
               "needs the ovl_copy_up_flags hook.",
               "ovltrace_overlay_copy_up_seconds_total", scale=1e-9),
    # upper fs slots only: syncs of that superblock during which s_wb_err moved
    CounterDef("sb_errseq_advances", "sb_errseq_advances",
               "Syncs of the upper superblock during which its s_wb_err moved; "
               "needs the sync_filesystem hook."),
    # served as the histogram ovltrace_overlay_copy_up_duration_seconds
    CounterDef("copy_up_latency", "copy_up_latency",
               "Copy-ups by duration: bucket i holds those of [2^i, 2^(i+1)) microseconds; "
               "needs the ovl_copy_up_flags hook.", length=COPY_UP_LATENCY_BUCKETS),
)

COUNTER_FIELDS = tuple(d.name for d in COUNTERS)


def _zero(d: CounterDef):
    return field(default=(0,) * d.length) if d.length else field(default=0)


_ALL = operator.attrgetter(*COUNTER_FIELDS)    # every field at once (hot: exporter, top)


def _sub(self, other):
    """Increments since `other` (never negative: a reset slot reads 0)."""
    return Counters(*[(u - v if u > v else 0) if type(u) is not tuple else
                      ((0,) * len(u) if u == v else
                       tuple(x - y if x > y else 0 for x, y in zip_longest(u, v, fillvalue=0)))
                      for u, v in zip(_ALL(self), _ALL(other))])


def _add(self, other):
    return Counters(*[tuple(x + y for x, y in zip_longest(u, v, fillvalue=0))
                      if type(u) is tuple else u + v
                      for u, v in zip(_ALL(self), _ALL(other))])


def _from_values(cls, values) -> "Counters":
    """From a recording's positional list; older recordings have fewer."""
    vals = list(values)[:len(COUNTERS)]
    return cls(*(tuple(v) if d.length else int(v) for d, v in zip(COUNTERS, vals)))


def _values(self) -> list:
    return [list(getattr(self, f)) if isinstance(getattr(self, f), tuple) else getattr(self, f)
            for f in COUNTER_FIELDS]


Counters = make_dataclass(
    "Counters", [(d.name, tuple if d.length else int, _zero(d)) for d in COUNTERS],
    slots=True, frozen=False, eq=True,
    namespace={"__sub__": _sub, "__add__": _add, "from_values": classmethod(_from_values),
               "values": _values,
               "__doc__": "Cumulative per-overlay counters, one field per COUNTERS entry."})
Counters.__module__ = __name__


def bpf_members() -> list[tuple[str, int]]:
    """(member of struct ovl_stats, array length or 0) the schema reads."""
    out: list[tuple[str, int]] = []
    for d in COUNTERS:
        n = d.length or (d.index + 1 if d.index is not None else 0)
        if out and out[-1][0] == d.member:
            out[-1] = (d.member, max(out[-1][1], n))
        else:
            out.append((d.member, n))
    return out
