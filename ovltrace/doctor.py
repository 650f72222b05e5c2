"""`ovltrace doctor`: what this kernel allows and which hooks will be used."""
from __future__ import annotations

import os
import platform

from .errors import OvltraceError
from .probes import DEFAULT_BTF, TRACEFS, Probes, ensure_tracefs


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def facts() -> list[tuple[str, str, bool]]:
    """(what, state, ok) lines about the kernel."""
    out = []
    rel = platform.release()
    out.append(("kernel", f"{rel} {platform.machine()}", True))
    out.append(("root", "yes" if os.geteuid() == 0 else "no: tracing needs root "
                "(CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)", os.geteuid() == 0))
    btf = os.environ.get("OVLTRACE_BTF") or DEFAULT_BTF
    out.append(("BTF", btf if os.path.exists(btf) else f"missing ({btf})", os.path.exists(btf)))
    mod = "/sys/kernel/btf/overlay"
    out.append(("overlayfs", "module (BTF in /sys/kernel/btf/overlay)" if os.path.exists(mod)
                else "built in" if os.path.exists("/sys/module/overlay") else "not loaded yet", True))
    hdrs = f"/lib/modules/{rel}/build"
    out.append(("kernel headers", "installed (not needed)" if os.path.isdir(hdrs)
                else "absent (not needed: ovltrace builds its own tree from BTF)", True))
    has_tracefs = os.path.isdir(os.path.join(TRACEFS, "events"))
    out.append(("tracefs", TRACEFS if has_tracefs else "not mounted (ovltrace mounts it)", True))
    kprobes = os.path.exists(os.path.join(TRACEFS, "kprobe_events")) or \
        os.path.isdir("/sys/bus/event_source/devices/kprobe")
    out.append(("kprobes", "available" if kprobes else "not available (CONFIG_KPROBES off)", True))
    stats = _read("/proc/sys/kernel/bpf_stats_enabled")
    out.append(("bpf_stats_enabled", stats if stats is not None else "unknown", True))
    lock = _read("/sys/kernel/security/lockdown")
    if lock:
        active = lock[lock.find("[") + 1:lock.find("]")] if "[" in lock else lock
        out.append(("lockdown", active, active != "confidentiality"))
    return out


def run_doctor(btf: str | None) -> int:
    print("ovltrace doctor")
    ok = True
    for what, state, good in facts():
        ok &= good
        print(f"  {what:<18} {state}")
    if os.geteuid() == 0:
        try:
            ensure_tracefs()
        except OvltraceError as e:
            print(f"  {'tracefs':<18} {e}")
            ok = False
    try:
        probes = Probes(btf)
    except OvltraceError as e:
        print(f"  cannot read kernel types: {e}")
        return 1
    print()
    print("hooks (what each measures, the mechanism chosen, or why none)")
    usable = 0
    for h in probes.hooks():
        mech = h.mechanism or "unavailable"
        usable += bool(h.mechanism)
        print(f"  {h.name:<12} {mech:<11} {h.what}")
        if h.reason:
            print(f"  {'':<12} {'':<11} why: {h.reason}")
    for n in probes.layout.notes:
        print(f"  note: {n}")
    print("  errseq_set   never      notrace in every kernel we know (lib/ is built without "
          "ftrace);")
    print("                          covered by the filemap_set_wb_err hook")
    print()
    if usable == 0:
        print("verdict: nothing can be traced on this kernel")
        return 1
    print(f"verdict: {'ready' if ok else 'tracing possible, see above'}: {usable} hooks usable")
    return 0 if ok else 1
