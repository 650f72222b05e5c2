"""Every node's figures over a window, read back from the Prometheus that
scrapes the exporters (the fleet report's source; report/fleet.py turns
them into the audit's shapes and findings).

Window deltas.  increase() extrapolates at the window's edges and drops
the first value of a series born inside the window (every ovltrace series
is born at its first event), so a counter's change is taken per series as
its last value in the window minus its value at the window's start (0 for
a series born inside it), then summed.  A series that reset inside the
window (its exporter restarted) falls back to increase(), and the nodes
where that happened are named in the report's caveats.  Exact to the
scrape: what happened after a node's last scrape is not in Prometheus yet.

Cost: a fixed plan of instant queries (QUERIES, plus one with a stall gate),
each aggregated by node and party in the server, so a report on N nodes
moves O(N x parties) samples however long the range.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import OvltraceError
from .prometheus import Prometheus

# the labels a party is told by (the exporter's pair families carry these)
PARTY = ("container", "pod", "namespace")

CALLER = PARTY + ("comm", "kind")
PAIR = (tuple(f"caller_{l}" for l in PARTY) + ("caller_comm",)
        + tuple(f"victim_{l}" for l in PARTY) + ("kind", "runtime", "step"))

# (name in NodeFigures, metric, grouping labels besides the node's)
QUERIES = (
    ("flushes", "ovltrace_flush_duration_seconds_count", CALLER),
    ("flush_seconds", "ovltrace_flush_duration_seconds_sum", CALLER),
    ("own_bytes", "ovltrace_flush_own_written_back_bytes_total", CALLER),
    ("pair_bytes", "ovltrace_interference_written_back_bytes_total", PAIR),
    ("pair_seconds", "ovltrace_interference_stall_seconds_total", PAIR),
    ("pair_flushes", "ovltrace_interference_flushes_total", PAIR),
    ("leaks", "ovltrace_error_leaks_total",
     tuple(f"victim_{l}" for l in PARTY) + tuple(f"source_{l}" for l in PARTY) + ("errno",)),
    ("wb_errors", "ovltrace_overlay_writeback_errors_total", PARTY + ("device", "errno")),
    ("returned", "ovltrace_overlay_errors_returned_total", PARTY),
    ("dirtied", "ovltrace_overlay_dirtied_bytes_total", PARTY + ("device", "runtime")),
    ("written_back", "ovltrace_overlay_written_back_bytes_total", PARTY + ("device",)),
    ("copy_ups", "ovltrace_overlay_copy_ups_total", PARTY),
    ("copy_up_bytes", "ovltrace_overlay_copy_up_bytes_total", PARTY),
)
PRESENCE = "ovltrace_exporter_start_time_seconds"     # served by every exporter, every scrape

_SELECTOR = re.compile(r"^\s*\{(.*)\}\s*$", re.S)
_DURATION = re.compile(r"^\d+[smhdwy]$")


def selector_body(selector: str | None) -> str:
    """'{node=~"a.*"}' -> 'node=~"a.*"' (merged into every query's selector)."""
    if not selector:
        return ""
    m = _SELECTOR.match(selector)
    if not m:
        raise OvltraceError(f"--selector {selector!r}: give label matchers in braces, "
                            "e.g. '{cluster=\"prod\"}'")
    return m.group(1).strip().rstrip(",")


def party_name(labels: dict, prefix: str = "") -> str:
    """A party as the fleet report names it: namespace/pod/container for a
    pod's container, else the container label, else the host process."""
    c, pod, ns = (labels.get(prefix + l, "") for l in PARTY)
    if pod:
        return f"{ns}/{pod}/{c}" if ns else f"{pod}/{c}"
    return c or labels.get(prefix + "comm", "") or "-"


# Kubernetes names pods from their owner with this alphabet (no vowels, no
# 0, 1, 3): <deployment>-<replicaset hash>-<5>, <daemonset or job>-<5>,
# <statefulset>-<ordinal>
_K8S = "[bcdfghjklmnpqrstvwxz2456789]"
_OWNERS = (re.compile(rf"^(.+)-{_K8S}{{6,10}}-{_K8S}{{5}}$"), re.compile(r"^(.+)-\d{1,4}$"),
           re.compile(rf"^(.+)-{_K8S}{{5}}$"))


def workload_name(labels: dict, prefix: str = "") -> str:
    """What a party is across nodes: namespace/owner/container for a pod
    (the owner read from the pod's name, as Deployments, DaemonSets and
    StatefulSets name their pods), else the container name or process."""
    pod = labels.get(prefix + "pod", "")
    if not pod:
        return party_name(labels, prefix)
    owner = next((m.group(1) for r in _OWNERS if (m := r.match(pod))), pod)
    ns, c = labels.get(prefix + "namespace", ""), labels.get(prefix + "container", "")
    return f"{ns}/{owner}/{c}" if ns else f"{owner}/{c}"


@dataclass
class NodeFigures:
    """One node's window deltas, keyed by party names."""
    node: str
    rows: dict[str, list[tuple[dict, float]]] = field(default_factory=dict)  # query -> (labels, value)
    workloads: dict[str, str] = field(default_factory=dict)                   # party -> workload

    def get(self, name: str) -> list[tuple[dict, float]]:
        return self.rows.get(name, [])


@dataclass
class FleetFigures:
    url: str
    range_seconds: float
    end: float
    selector: str
    node_label: str
    nodes: dict[str, NodeFigures]
    reset_nodes: list[str]               # counters reset in the window (exporter restarts)
    partial_nodes: list[tuple[str, float]]   # (node, share of the window it was scraped)
    buckets: list[tuple[str, dict, float]] = field(default_factory=list)  # (node, labels, n)
    queries: int = 0
    series: int = 0


def window_delta(metric: str, sel: str, by: tuple[str, ...], rng: str) -> str:
    """The PromQL for each group's counter change over the window (module doc)."""
    m = f"{metric}{{{sel}}}"
    per_series = (f"(last_over_time({m}[{rng}]) - ({m} offset {rng} or "
                  f"last_over_time({m}[{rng}]) * 0)) unless resets({m}[{rng}]) > 0 "
                  f"or increase({m}[{rng}])")
    return f"sum by ({', '.join(by)}) ({per_series})"


def prom_duration(seconds: float) -> str:
    return f"{int(seconds)}s"


def collect(prom: Prometheus, range_seconds: float, end: float, selector: str | None,
            node_label: str = "node", stall_buckets: bool = False) -> FleetFigures:
    sel = selector_body(selector)
    rng = prom_duration(range_seconds)
    node_by = (node_label, "instance") if node_label != "instance" else ("instance",)

    def node_of(labels: dict) -> str:
        return labels.get(node_label) or labels.get("instance") or "-"

    presence = prom.query(f"count_over_time({PRESENCE}{{{sel}}}[{rng}])", end)
    if not presence:
        raise OvltraceError(
            f"no ovltrace series in {prom.url}"
            + (f" matching {selector}" if selector else "")
            + f" in the {rng} before the report's end: is it scraping `ovltrace exporter`?")
    nodes: dict[str, NodeFigures] = {}
    samples: dict[str, float] = {}
    for r in presence:
        n = node_of(r["metric"])
        nodes.setdefault(n, NodeFigures(n))
        samples[n] = samples.get(n, 0) + r["value"]

    for name, metric, by in QUERIES:
        for r in prom.query(window_delta(metric, sel, node_by + by, rng), end):
            if r["value"] == 0:
                continue
            fig = nodes.setdefault(node_of(r["metric"]), NodeFigures(node_of(r["metric"])))
            fig.rows.setdefault(name, []).append((r["metric"], r["value"]))

    buckets = []
    if stall_buckets:
        m = "ovltrace_flush_duration_seconds_bucket"
        for r in prom.query(window_delta(m, sel, node_by + CALLER + ("le",), rng), end):
            buckets.append((node_of(r["metric"]), r["metric"], r["value"]))

    resets = prom.query(f"changes({PRESENCE}{{{sel}}}[{rng}]) > 0", end)
    reset_nodes = sorted({node_of(r["metric"]) for r in resets})
    most = max(samples.values())
    partial = sorted((n, round(c / most, 3)) for n, c in samples.items() if c < 0.9 * most)
    return FleetFigures(prom.url, range_seconds, end, selector or "", node_label, nodes,
                        reset_nodes, partial, buckets, prom.queries, prom.series)
