"""Metric names, help texts and the bucket layout the exporter serves.

Kept apart from the collector so the tests can check the dashboards and
the alert rules against the list of what is served, without a session.
All names follow Prometheus conventions: base units (bytes, seconds),
`_total` on counters, histograms with power-of-two buckets.
"""
from __future__ import annotations

from ..counters import COPY_UP_LATENCY_BUCKETS, COUNTERS

PREFIX = "ovltrace_"
DEFAULT_PORT = 19435         # 9435 is ebpf_exporter's

# Labels that identify an overlay ("a container's root filesystem").  The
# names are the ones cAdvisor / kube-state-metrics / node_exporter users
# already join on.  `--labels` picks a subset, in this order.
OVERLAY_LABELS = ("container", "container_id", "pod", "namespace", "runtime",
                  "mountpoint", "device")
DEFAULT_LABELS = OVERLAY_LABELS
# The subset carried by the caller/victim (and victim/source) pair families:
# enough to tell who is who without doubling every label.
PAIR_LABELS = ("container", "pod", "namespace", "mountpoint")

OTHER = "other"              # the `container` value of the folded bucket

# exp2 buckets for flush durations: 2^-16 s (15 us) .. 2^5 s (32 s), then +Inf
DURATION_BUCKETS = tuple(2.0 ** i for i in range(-16, 6))

# copy-up latency: the BPF log2(microseconds) buckets, upper bounds in seconds
COPY_UP_BUCKETS = tuple(2.0 ** (i + 1) / 1e6 for i in range(COPY_UP_LATENCY_BUCKETS))

# name -> (type, help).  Types: counter, gauge, histogram.  The per-overlay
# counter families come from the counter schema (ovltrace/counters.py).
FAMILIES: dict[str, tuple[str, str]] = {
    **{d.metric: ("counter", d.help) for d in COUNTERS if d.metric},
    "ovltrace_overlay_copy_up_duration_seconds": (
        "histogram", "Copy-ups by duration (log2 microsecond buckets); needs the "
                     "ovl_copy_up_flags hook."),
    "ovltrace_overlay_dirty_inodes": (
        "gauge", "Upper inodes of this overlay dirty now (not yet written back)."),
    "ovltrace_overlay_writeback_errors_total": (
        "counter", "Writeback errors on this overlay's inodes, by errno."),
    "ovltrace_overlay_errors_returned_total": (
        "counter", "Errors returned to callers on this overlay (syncfs, fsync, fdatasync)."),
    "ovltrace_overlay_unreported_writeback_errors": (
        "gauge", "Writeback errors on this overlay since an error was last returned to it: "
                 "data lost that nobody was told about (silent loss)."),
    "ovltrace_flush_duration_seconds": (
        "histogram", "Duration of syncfs/sync/umount flushes, per caller."),
    "ovltrace_flush_errors_total": (
        "counter", "Flushes (syncfs, sync, umount) that returned an error, per caller."),
    "ovltrace_flush_others_written_back_bytes_total": (
        "counter", "Bytes of other overlays' data a caller's flushes wrote back."),
    "ovltrace_flush_others_stall_seconds_total": (
        "counter", "The share of a caller's flush time that other overlays' data explains "
                   "(a flush's duration split by the bytes it wrote back): what ovltrace "
                   "audit calls waited_on_others_seconds."),
    "ovltrace_flush_own_written_back_bytes_total": (
        "counter", "Bytes of the caller's own overlay's data its flushes wrote back."),
    "ovltrace_lifecycle_flush_duration_seconds": (
        "histogram", "Duration of the flushes container starts and stops caused (the unmount "
                     "of a container's root, or of a runtime's helper mount while creating "
                     "one), by runtime and step (create, unpack, stop)."),
    "ovltrace_lifecycle_others_written_back_bytes_total": (
        "counter", "Bytes of other containers' data those flushes wrote back."),
    "ovltrace_lifecycle_others_stall_seconds_total": (
        "counter", "The share of those flushes' time that other containers' data explains."),
    "ovltrace_interference_written_back_bytes_total": (
        "counter", "Bytes of the victim's data written back by the caller's flushes "
                   "(runtime and step are set when the flush was a container start or stop)."),
    "ovltrace_interference_stall_seconds_total": (
        "counter", "The share of the caller's flush time that the victim's data explains "
                   "(duration x victim's bytes / all bytes the flush wrote back); the "
                   "shares of one flush add up to its duration."),
    "ovltrace_interference_flushes_total": (
        "counter", "Caller's flushes that wrote back the victim's data."),
    "ovltrace_error_leaks_total": (
        "counter", "Errors returned to a victim overlay that were caused by another "
                   "overlay's (the source's) failed writeback on the same upper filesystem."),
    "ovltrace_upperfs_dirtied_bytes_total": (
        "counter", "Bytes dirtied on an upper filesystem (scope: overlays or outside them)."),
    "ovltrace_upperfs_written_back_bytes_total": (
        "counter", "Bytes written back on an upper filesystem (scope: overlays or outside)."),
    "ovltrace_upperfs_writeback_errors_total": (
        "counter", "Writeback errors on an upper filesystem (scope: overlays or outside)."),
    "ovltrace_upperfs_overlays": (
        "gauge", "Overlays mounted on this upper filesystem."),
    # -- the exporter itself
    "ovltrace_exporter_start_time_seconds": (
        "gauge", "When the exporter started (Unix seconds): every counter starts from 0 then."),
    "ovltrace_exporter_hook_info": (
        "gauge", "Which kernel mechanism each hook uses (mechanism=\"none\": unavailable)."),
    "ovltrace_exporter_dropped_events_total": (
        "counter", "Events the BPF programs could not hand to userspace (ring buffer full), "
        "by channel (flushes; writeback_errors, whose counts stay exact)."),
    "ovltrace_exporter_inode_cache_lookups_total": (
        "counter", "BPF inode->overlay cache lookups that missed (a dentry walk followed)."),
    "ovltrace_exporter_directory_cache_hits_total": (
        "counter", "Inode-cache misses answered by the cached owner of a directory on the way "
        "up (the dentry walk stopped there)."),
    "ovltrace_exporter_attribution_failures_total": (
        "counter", "Upper inodes the BPF programs could not attribute, by reason."),
    "ovltrace_exporter_map_full_total": (
        "counter", "BPF map updates refused because a map was full."),
    "ovltrace_exporter_bpf_map_entries": (
        "gauge", "Entries in a BPF map now."),
    "ovltrace_exporter_bpf_map_max_entries": (
        "gauge", "Capacity of a BPF map."),
    "ovltrace_exporter_slots_exhausted_total": (
        "counter", "Overlays that could not be watched: no free slot."),
    "ovltrace_exporter_overlays": (
        "gauge", "Overlays known to the exporter, by how they are exported "
                 "(own series, or folded into the \"other\" bucket)."),
    "ovltrace_exporter_series_dropped_total": (
        "counter", "Series left out of a scrape because of the hard series limit."),
    "ovltrace_exporter_refresh_duration_seconds": (
        "gauge", "Time the last mount/container refresh took."),
    "ovltrace_exporter_collect_duration_seconds": (
        "gauge", "Time the previous scrape took to collect."),
    "ovltrace_exporter_bpf_stats_enabled": (
        "gauge", "1 when kernel.bpf_stats_enabled is on (the run-time figures are live)."),
    "ovltrace_exporter_bpf_program_run_seconds_total": (
        "counter", "Time spent in ovltrace's BPF programs (needs kernel.bpf_stats_enabled)."),
    "ovltrace_exporter_bpf_program_recursion_misses_total": (
        "counter", "Events the kernel did not run an ovltrace program for, because it was "
                   "already running on that CPU (an interrupt inside it): not counted anywhere "
                   "else."),
    "ovltrace_exporter_bpf_program_runs_total": (
        "counter", "Runs of ovltrace's BPF programs (needs kernel.bpf_stats_enabled)."),
}


# Each family's label names, in the order the exporter fills them.
# "{overlay}" stands for the overlay labels --labels selects (all of
# OVERLAY_LABELS by default); "{caller}", "{victim}" and "{source}" for the
# selected PAIR_LABELS with that prefix.  The collector builds its families
# from this table and docs/metrics.md is generated from it.
_FLUSH = ("{overlay}", "comm", "kind")
_LIFECYCLE = ("runtime", "step")
_PAIR = ("{caller}", "caller_comm", "{victim}", "device", "kind", "runtime", "step")
_UPPERFS = ("device", "mountpoint", "fstype", "scope")
LABELS: dict[str, tuple[str, ...]] = {
    **{d.metric: ("{overlay}",) for d in COUNTERS if d.metric},
    "ovltrace_overlay_copy_up_duration_seconds": ("{overlay}",),
    "ovltrace_overlay_dirty_inodes": ("{overlay}",),
    "ovltrace_overlay_writeback_errors_total": ("{overlay}", "errno"),
    "ovltrace_overlay_errors_returned_total": ("{overlay}", "call", "errno"),
    "ovltrace_overlay_unreported_writeback_errors": ("{overlay}",),
    "ovltrace_flush_duration_seconds": _FLUSH,
    "ovltrace_flush_errors_total": _FLUSH + ("errno",),
    "ovltrace_flush_others_written_back_bytes_total": _FLUSH,
    "ovltrace_flush_others_stall_seconds_total": _FLUSH,
    "ovltrace_flush_own_written_back_bytes_total": _FLUSH,
    "ovltrace_lifecycle_flush_duration_seconds": _LIFECYCLE,
    "ovltrace_lifecycle_others_written_back_bytes_total": _LIFECYCLE,
    "ovltrace_lifecycle_others_stall_seconds_total": _LIFECYCLE,
    "ovltrace_interference_written_back_bytes_total": _PAIR,
    "ovltrace_interference_stall_seconds_total": _PAIR,
    "ovltrace_interference_flushes_total": _PAIR,
    "ovltrace_error_leaks_total": ("{victim}", "{source}", "device", "errno"),
    "ovltrace_upperfs_dirtied_bytes_total": _UPPERFS,
    "ovltrace_upperfs_written_back_bytes_total": _UPPERFS,
    "ovltrace_upperfs_writeback_errors_total": _UPPERFS,
    "ovltrace_upperfs_overlays": ("device", "mountpoint", "fstype"),
    "ovltrace_exporter_start_time_seconds": (),
    "ovltrace_exporter_hook_info": ("hook", "mechanism"),
    "ovltrace_exporter_dropped_events_total": ("channel",),
    "ovltrace_exporter_inode_cache_lookups_total": ("result",),
    "ovltrace_exporter_directory_cache_hits_total": (),
    "ovltrace_exporter_attribution_failures_total": ("reason",),
    "ovltrace_exporter_map_full_total": (),
    "ovltrace_exporter_bpf_map_entries": ("map",),
    "ovltrace_exporter_bpf_map_max_entries": ("map",),
    "ovltrace_exporter_slots_exhausted_total": (),
    "ovltrace_exporter_overlays": ("export",),
    "ovltrace_exporter_series_dropped_total": (),
    "ovltrace_exporter_refresh_duration_seconds": (),
    "ovltrace_exporter_collect_duration_seconds": (),
    "ovltrace_exporter_bpf_stats_enabled": (),
    "ovltrace_exporter_bpf_program_run_seconds_total": ("program",),
    "ovltrace_exporter_bpf_program_recursion_misses_total": ("program",),
    "ovltrace_exporter_bpf_program_runs_total": ("program",),
}


def label_names(name: str, overlay: tuple[str, ...] = OVERLAY_LABELS) -> list[str]:
    """The label names of family `name` when --labels selects `overlay`."""
    pair = [l for l in PAIR_LABELS if l in overlay]
    out: list[str] = []
    for item in LABELS[name]:
        if item == "{overlay}":
            out += overlay
        elif item.startswith("{"):
            out += [f"{item[1:-1]}_{l}" for l in pair]
        else:
            out.append(item)
    return out


def served_names() -> set[str]:
    """Every sample name the exporter can produce (histograms expand)."""
    out = set()
    for name, (kind, _help) in FAMILIES.items():
        if kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            out.add(name)
    return out


# ---- the metric reference (docs/metrics.md is this function's output) -----

LABEL_HELP = {
    "container": "the runtime's container name; for an overlay no runtime claims, the "
                 "distinctive part of its mountpoint; `other` for the folded overlays",
    "container_id": "the runtime's container ID",
    "pod": "Kubernetes pod (CRI labels), else empty",
    "namespace": "Kubernetes namespace, else empty",
    "runtime": "docker, containerd, podman, cri-o, ... (empty: no runtime claims it)",
    "mountpoint": "where the overlay (or the upper filesystem) is mounted",
    "device": "the upper filesystem's mount source, as node_exporter's `device`",
    "comm": "the calling process's name, for a flush no container is blamed for",
    "kind": "syncfs, sync or umount",
    "step": "create, unpack or stop: the container lifecycle step a flush belonged to",
    "errno": "EIO, ENOSPC, ...",
    "call": "syncfs, fsync or fdatasync",
    "scope": "overlays or outside (data on the upper filesystem no overlay owns)",
    "fstype": "the upper filesystem's type",
    "hook": "an ovltrace hook (`ovltrace doctor` lists them)",
    "mechanism": "fentry, kprobe, tracepoint, or none (unavailable on this kernel)",
    "channel": "the ring buffer that dropped events: flushes or writeback_errors",
    "result": "an inode-cache lookup's result (miss: a dentry walk followed)",
    "reason": "why an upper inode could not be attributed",
    "map": "a BPF map's name",
    "export": "own (its own series) or other (folded into `container=\"other\"`)",
    "program": "an ovltrace BPF program's name",
}

_SECTIONS = (
    ("ovltrace_overlay_", "Per overlay (a container's root filesystem)"),
    ("ovltrace_flush_", "Per flush caller"),
    ("ovltrace_lifecycle_", "Container starts and stops"),
    ("ovltrace_interference_", "Who flushes whose data (caller, victim pairs)"),
    ("ovltrace_error_", "Errors handed to the wrong container"),
    ("ovltrace_upperfs_", "Per upper filesystem (complete totals)"),
    ("ovltrace_exporter_", "The exporter itself"),
)


def _shown_labels(name: str) -> str:
    out = []
    for item in LABELS[name]:
        if item == "{overlay}":
            out.append("*overlay labels*")
        elif item.startswith("{"):
            out.append(f"`{item[1:-1]}_*`")
        else:
            out.append(f"`{item}`")
    return ", ".join(out)


def reference() -> str:
    """The metric reference in Markdown, from FAMILIES and LABELS."""
    cell = lambda t: t.replace("|", "\\|")  # noqa: E731
    lines = [
        "# Metric reference",
        "",
        "Generated from `ovltrace/views/metrics.py` (`make docs`); a test fails",
        "when this file and the exporter differ.",
        "",
        "*Overlay labels* are " + ", ".join(f"`{l}`" for l in OVERLAY_LABELS)
        + " (`--labels` keeps a subset; `container` and `device` always stay).",
        "Pair families carry the " + ", ".join(f"`{l}`" for l in PAIR_LABELS)
        + " of both sides, prefixed `caller_`/`victim_` or `victim_`/`source_`.",
        "",
        "| label | meaning |",
        "|---|---|",
        *(f"| `{l}` | {cell(h)} |" for l, h in LABEL_HELP.items()),
    ]
    for prefix, title in _SECTIONS:
        lines += ["", f"## {title}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for name, (kind, help_) in FAMILIES.items():
            if name.startswith(prefix):
                lines.append(f"| `{name}` | {kind} | {_shown_labels(name)} | {cell(help_)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
