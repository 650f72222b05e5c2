"""`ovltrace demo`: sandbox containers doing realistic things, traced live.

N overlays ("containers") over one shared lower dir, their upper dirs on
one loop-mounted ext4, each in its own cgroup.  The mix:
  * steady small writers (app state, logs),
  * one bulk writer (a batch job writing a big file, no fsync),
  * a neighbour that calls syncfs in a loop (flushes everyone's data),
  * a copy-up of a big lower file,
  * with --inject-errors, a container whose writes fail at writeback on a
    tmpfs-backed upper fs (real EIO, no device-mapper).
Everything is torn down at the end, also on Ctrl-C.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import workloads
from .errors import OvltraceError
from .sandbox import Sandbox, SandboxOverlay

NAMES = ["webshop", "syncer", "batch", "cache", "api", "worker", "search", "queue"]
BIG_LOWER = "usr/share/dataset.bin"


@dataclass
class DemoSetup:
    sandbox: Sandbox
    roles: dict[str, str] = field(default_factory=dict)     # container name -> role
    overlays: list[SandboxOverlay] = field(default_factory=list)

    @property
    def mountpoints(self) -> list[str]:
        return [o.mountpoint for o in self.overlays]


def container_names(n: int) -> list[str]:
    return [NAMES[i] if i < len(NAMES) else f"ctr{i:04d}" for i in range(n)]


def build(n: int = 4, inject_errors: bool = False, big_lower_mb: int = 32) -> DemoSetup:
    """Mount the sandbox containers (no workload yet)."""
    try:
        if inject_errors:
            # writes past the tmpfs size fail at writeback: the loop device's
            # backing file cannot grow, so the block I/O fails with EIO.
            # The upper fs is the error-leak one (no journal, errors=continue):
            # the error writer's failed metadata sets the error the next
            # syncfs of ANY overlay returns, so the syncer is handed it every
            # time (with a journal, when and whether it aborted varied from
            # run to run).  Room for the mix (bulk 96 MiB, copy-up 32 MiB,
            # the lower file: ~170 MiB): only the error writer's 400 MiB may
            # overflow it.
            sb = Sandbox(size_mb=1024, backing_tmpfs_mb=320, errors="leak")
        else:
            sb = Sandbox(size_mb=max(1024, 64 * n))
    except Exception as e:  # mkfs/losetup/mount problems come as various errors
        raise OvltraceError(f"cannot build the demo sandbox: {e}") from None
    setup = DemoSetup(sb)
    try:
        sb.make_lower_file(BIG_LOWER, big_lower_mb << 20)
        for name in container_names(n):
            setup.overlays.append(sb.add_overlay(name))
            sb.in_cgroup(name)
    except BaseException:
        sb.close()
        raise
    return setup


def start_workload(setup: DemoSetup, inject_errors: bool = False,
                   duration: float | None = None, syncfs_interval: float = 0.5) -> None:
    """Start the mix.  Roles by position: 0 small writer, 1 syncfs
    neighbour, 2 bulk writer, 3 copy-up (then small writes), the rest small
    writers; with errors, the last one is the error writer."""
    sb = setup.sandbox
    ovs = setup.overlays
    for i, ov in enumerate(ovs):
        if inject_errors and i == len(ovs) - 1 and i >= 2:
            role = "error-writer"
            # holes: one extent per chunk, so new extent-tree blocks fail too
            workloads.error_writer(sb, ov, total_mb=400, chunk_kb=64, hole_kb=4)
        elif i == 1:
            role = "syncfs-neighbour"
            # on an upper fs made to fail, its own tiny writes would fail too
            # and blur the error it is handed: the leak shows cleanly without
            workloads.syncfs_neighbour(sb, ov, interval=syncfs_interval, duration=duration,
                                       tick=not sb.backing_tmpfs_mb)
        elif i == 2:
            role = "bulk-writer"
            workloads.bulk_writer(sb, ov, total_mb=96, duration=duration)
        elif i == 3:
            role = "copy-up"
            workloads.copy_up(sb, ov, BIG_LOWER)
            workloads.small_writer(sb, ov, files=10, interval=0.2, duration=duration)
        else:
            role = "small-writer"
            workloads.small_writer(sb, ov, files=40, interval=0.05, duration=duration)
        setup.roles[ov.name] = role
