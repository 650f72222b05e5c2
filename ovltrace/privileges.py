"""The capabilities ovltrace needs, per thing it does, read from the
process itself (/proc/self/status), so it runs with the least set a
DaemonSet or a systemd unit grants (deploy/), and says which one is
missing instead of failing somewhere inside bcc.

Measured (docs/deploy.md: Privileges): uid 0 with CAP_BPF, CAP_PERFMON,
CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH runs every hook mechanism on 5.10
to 6.18, given two things of the host: kernel.perf_event_paranoid at most
2 (Debian and Ubuntu default to 3, where their kernels ask CAP_SYS_ADMIN
for any perf event: syscall tracepoints, kprobes) and, before 5.11 (BPF
memory counted against RLIMIT_MEMLOCK), an unlimited memlock limit or
CAP_SYS_RESOURCE to raise it. Before 5.8 (no CAP_BPF, CAP_PERFMON) the
kernel asks CAP_SYS_ADMIN."""
from __future__ import annotations

import resource
from dataclasses import dataclass

# include/uapi/linux/capability.h
CAP_NUMBERS = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19,
               "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}
PARANOID = "/proc/sys/kernel/perf_event_paranoid"


@dataclass(frozen=True)
class Need:
    label: str              # doctor's short name for it
    what: str               # what ovltrace does with it
    caps: tuple[str, ...]   # all of these ...
    instead: str = "CAP_SYS_ADMIN"    # ... or this one (the kernel's older catch-all)
    without: str = ""       # what a user gets when it is missing ("" = cannot trace)
    fix: str = ""           # what the host can change instead of granting it


@dataclass(frozen=True)
class Host:
    """What of the host decides the list: its kernel release, its
    perf_event_paranoid, and whether RLIMIT_MEMLOCK is already unlimited."""
    release: tuple[int, int]
    paranoid: int = 2
    memlock_unlimited: bool = True

    @staticmethod
    def here() -> "Host":
        from .kernel.layout import kernel_release
        try:
            with open(PARANOID) as f:
                paranoid = int(f.read().strip())
        except (OSError, ValueError):
            paranoid = 2
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        return Host(kernel_release(), paranoid, hard == resource.RLIM_INFINITY)


def needs(host: Host) -> list[Need]:
    """What each capability is for on this host, in the order a user
    meets them."""
    if host.release < (5, 8):
        out = [Need("caps: BPF", "load and attach BPF programs", ("CAP_SYS_ADMIN",), "")]
    else:
        out = [Need("caps: BPF", "load and attach BPF programs", ("CAP_BPF", "CAP_PERFMON"))]
        if host.paranoid >= 3:
            out.append(Need("caps: perf", "open perf events (syscall tracepoints, kprobes): "
                            "kernel.perf_event_paranoid is 3 or more, where Debian's and "
                            "Ubuntu's kernels ask CAP_SYS_ADMIN", ("CAP_SYS_ADMIN",), "",
                            fix="or sysctl kernel.perf_event_paranoid=2"))
        if host.release < (5, 11) and not host.memlock_unlimited:
            out.append(Need("caps: memlock", "raise RLIMIT_MEMLOCK for BPF maps (charged "
                            "against it before 5.11)", ("CAP_SYS_RESOURCE",), "",
                            fix="or an unlimited memlock limit (LimitMEMLOCK=infinity)"))
    out += [
        Need("caps: processes", "see other processes' mounts, roots and cgroups (mounts in "
             "other namespaces, instant containers' directories, cgroup accounting)",
             ("CAP_SYS_PTRACE",), "", "other mount namespaces unseen"),
        Need("caps: other users", "look up directories and runtime state owned by other users "
             "(rootless Podman: without it, neither named nor counted)",
             ("CAP_DAC_READ_SEARCH",), "CAP_DAC_OVERRIDE", "rootless containers lost"),
    ]
    return out


def effective(status: str = "/proc/self/status") -> set[str]:
    """The names of this process's effective capabilities that ovltrace
    knows."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    bits = int(line.split()[1], 16)
                    return {name for name, n in CAP_NUMBERS.items() if bits >> n & 1}
    except (OSError, ValueError):
        pass
    return set()


def missing(need: Need, have: set[str]) -> list[str]:
    """The capabilities of `need` this process lacks ([] = satisfied)."""
    if need.instead and need.instead in have:
        return []
    return [c for c in need.caps if c not in have]


def tracing_refusal(host: Host | None = None, have: set[str] | None = None) -> str | None:
    """One line saying why tracing cannot start here, or None."""
    host = Host.here() if host is None else host
    have = effective() if have is None else have
    listed = needs(host)
    for i, need in enumerate(listed):
        lack = missing(need, have)
        if lack and not need.without:
            if i == 0:
                return (f"tracing needs {' and '.join(lack)} (missing; run as root, or grant "
                        f"{', '.join(need.caps)}: see docs/deploy.md, Privileges)")
            return (f"tracing needs {' and '.join(lack)} here to {need.what.split(':')[0]} "
                    f"(missing; grant it, {need.fix}: see docs/deploy.md, Privileges)")
    return None


def least(host: Host) -> list[str]:
    """Every capability ovltrace can use on this host: what deploy/ grants
    (the DaemonSet, the systemd unit) on a host that needs no extras."""
    return [c for n in needs(host) for c in n.caps]
