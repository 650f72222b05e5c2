"""A synthetic fleet for Prometheus, as OpenMetrics text for `promtool tsdb
create-blocks-from openmetrics`: what N nodes' exporters would have served
at each scrape, with the truth of each window delta beside it.

Each node runs K containers of one Deployment-like workload: pod
"app-<j>-<rs hash>-<pod suffix>" in namespace "prod"; container 0 (the
"syncer") calls syncfs once a scrape, which writes back every other
container j's data: j MiB and j ms of its time per scrape.  Every node
has the same series the real exporter serves for that (flush histogram
count and sum, own/others bytes, the interference pairs, per-overlay
dirtied/written bytes, the exporter's start time); `leak_nodes` add an
error leak from container 1 to the syncer, `reset_nodes` restart their
exporter half way (every counter back to 0, a new start time), and
`gap_nodes` are not scraped for the middle third.  Container K-1 on node
0 is born in the middle of the window with its first increment already
counted (what increase() misses).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20
DEVICE = "8:1"
LE = tuple(2.0 ** i for i in range(-16, 6))


@dataclass
class Truth:
    """Window deltas per node, as the fleet report must find them."""
    pair_bytes: dict[tuple[str, str, str], int] = field(default_factory=dict)   # (node, caller, victim)
    pair_flushes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    syncfs_calls: dict[str, int] = field(default_factory=dict)
    leaks: dict[tuple[str, str, str], int] = field(default_factory=dict)
    series: int = 0
    samples: int = 0


K8S = "bcdfghjklmnpqrstvwxz2456789"       # the alphabet Kubernetes names pods with


def pod(node: int, j: int) -> str:
    """A Deployment's pod: app-<j>-<ReplicaSet hash>-<5 characters>."""
    suffix, x = "", node * 7 + j
    for _ in range(5):
        x, r = divmod(x, len(K8S))
        suffix += K8S[r]
    return f"app-{j}-7d9f8c6b4-{suffix}"


def party(node: int, j: int) -> str:
    """The fleet report's party name for container j of a node."""
    return f"prod/{pod(node, j)}/c{j}"


def _ls(d: dict) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def generate(out, nodes: int, containers: int, times: list[float], window_start: int,
             leak_nodes=(), reset_nodes=(), gap_nodes=()) -> Truth:
    """Write OpenMetrics to `out` (a text file); return the truth for the
    window [times[window_start], times[-1]].  times: scrape times, ascending."""
    truth = Truth()
    n_t = len(times)
    half, third = n_t // 2, n_t // 3
    fams: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}

    def series(name: str, labels: dict, values: list[float | None]) -> None:
        pts = [(t, v) for t, v in zip(times, values) if v is not None]
        if pts:
            fams.setdefault(name, []).append((_ls(labels), pts))
            truth.series += 1
            truth.samples += len(pts)

    def flush_out() -> None:
        for name, rows in fams.items():
            out.write(f"# TYPE {name} unknown\n")
            for ls, pts in rows:
                for t, v in pts:
                    out.write(f"{name}{ls} {v:.9g} {t:.3f}\n")
        fams.clear()

    for n in range(nodes):
        node = f"node-{n:04d}"
        target = {"job": "ovltrace", "instance": f"10.0.{n // 250}.{n % 250}:19435", "node": node}
        reset = node in reset_nodes
        scraped = [not (node in gap_nodes and third <= i < 2 * third) for i in range(n_t)]

        def counter(per_step, born: int = 0) -> list[float | None]:
            """Cumulative counter values (None: not scraped / not born)."""
            vals, acc = [], 0.0
            for i in range(n_t):
                if reset and i == half:
                    acc = 0.0
                if i >= born:
                    acc += per_step(i)
                vals.append(acc if scraped[i] and i >= born else None)
            return vals

        start = [times[half] if reset and i >= half else times[0] for i in range(n_t)]
        series("ovltrace_exporter_start_time_seconds", target,
               [v if scraped[i] else None for i, v in enumerate(start)])
        series("ovltrace_exporter_series_dropped_total", target,
               [0.0 if scraped[i] else None for i in range(n_t)])
        born = {j: (half + 1 if n == 0 and j == containers - 1 else 0) for j in range(containers)}
        for j in range(containers):
            c = {"container": f"c{j}", "container_id": f"{n:08x}{j:056x}", "pod": pod(n, j),
                 "namespace": "prod", "runtime": "containerd",
                 "mountpoint": f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{n}-{j}/rootfs",
                 "device": DEVICE}
            mib = j * MiB
            series("ovltrace_overlay_dirtied_bytes_total", {**target, **c},
                   counter(lambda i: mib, born[j]))
            series("ovltrace_overlay_written_back_bytes_total", {**target, **c},
                   counter(lambda i: mib, born[j]))
        caller = {"container": "c0", "container_id": f"{n:08x}{0:056x}", "pod": pod(n, 0),
                  "namespace": "prod", "runtime": "containerd",
                  "mountpoint": f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{n}-0/rootfs",
                  "device": DEVICE, "comm": "", "kind": "syncfs"}
        others = sum(j for j in range(1, containers))
        series("ovltrace_flush_duration_seconds_count", {**target, **caller}, counter(lambda i: 1))
        series("ovltrace_flush_duration_seconds_sum", {**target, **caller},
               counter(lambda i: others * 1e-3))
        for le in LE + (float("inf"),):
            series("ovltrace_flush_duration_seconds_bucket",
                   {**target, **caller, "le": "+Inf" if le == float("inf") else f"{le:g}"},
                   counter(lambda i, le=le: 1 if others * 1e-3 <= le else 0))
        series("ovltrace_flush_others_written_back_bytes_total", {**target, **caller},
               counter(lambda i: others * MiB))
        series("ovltrace_flush_others_stall_seconds_total", {**target, **caller},
               counter(lambda i: others * 1e-3))
        for j in range(1, containers):
            pair = {**target, **{f"caller_{k}": caller[k] for k in ("container", "pod",
                                                                   "namespace", "mountpoint")},
                    "caller_comm": "",
                    "victim_container": f"c{j}", "victim_pod": pod(n, j), "victim_namespace": "prod",
                    "victim_mountpoint": f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{n}-{j}/rootfs",
                    "device": DEVICE, "kind": "syncfs", "runtime": "", "step": ""}
            series("ovltrace_interference_written_back_bytes_total", pair,
                   counter(lambda i, j=j: j * MiB, born[j]))
            series("ovltrace_interference_stall_seconds_total", pair,
                   counter(lambda i, j=j: j * 1e-3, born[j]))
            series("ovltrace_interference_flushes_total", pair, counter(lambda i: 1, born[j]))
            if not reset:
                # the steps in (window_start, end]: a series born inside the
                # window counts its first value too
                steps = sum(1 for i in range(window_start + 1, n_t) if i >= born[j])
                truth.pair_bytes[(node, party(n, 0), party(n, j))] = steps * j * MiB
                truth.pair_flushes[(node, party(n, 0), party(n, j))] = steps
        if not reset:
            truth.syncfs_calls[node] = n_t - 1 - window_start
        if node in leak_nodes:
            leak = {**target, "victim_container": "c0", "victim_pod": pod(n, 0),
                    "victim_namespace": "prod", "victim_mountpoint": caller["mountpoint"],
                    "source_container": "c1", "source_pod": pod(n, 1), "source_namespace": "prod",
                    "source_mountpoint": "x", "device": DEVICE, "errno": "EIO"}
            at = n_t - 2            # one leak, late in the window
            series("ovltrace_error_leaks_total", leak, counter(lambda i: 1 if i == at else 0, at))
            truth.leaks[(node, party(n, 0), party(n, 1))] = 1
        flush_out()
    out.write("# EOF\n")
    return truth
