"""`ovltrace doctor`: what this kernel allows and which hooks will be used."""
from __future__ import annotations

import os
import platform
import textwrap

from ..errors import OvltraceError
from ..kernel.layout import UNHOOKABLE
from ..hooks import MODE_TEXT, TRACEFS, fentry_available, kprobes_available
from ..privileges import Host, effective, missing, needs, tracing_refusal
from ..probes import DEFAULT_BTF, Probes, ensure_tracefs, kernel_release
from .runtime import TraceOptions


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def overlay_state(sys: str = "/sys") -> str:
    """How overlayfs is here: a loaded module has an initstate, built-in
    code has not; module BTF came in 5.11."""
    if not os.path.exists(f"{sys}/module/overlay"):
        return "not loaded yet"
    if not os.path.exists(f"{sys}/module/overlay/initstate"):
        return "built in"
    if os.path.exists(f"{sys}/kernel/btf/overlay"):
        return "module (BTF in /sys/kernel/btf/overlay)"
    return "module without BTF (before 5.11): copy-ups come from the workdir estimate"


def syncfs_errors(release: tuple[int, int]) -> str:
    """Whether syncfs(2) on an overlay returns the upper fs's writeback
    errors: since 5.17 (commit 5679897eb104: sync_filesystem returns what
    ->sync_fs says, and overlayfs' sync_fs passes the upper's on); before,
    only where the stable kernel carries that change (Debian's 5.10.262
    does, its earlier 5.10 builds did not), which the version cannot tell."""
    if release >= (5, 17):
        return "possible: an overlay's syncfs returns any container's errors"
    return ("before 5.17 only if this stable kernel carries commit 5679897eb104: "
            "else an overlay's syncfs returns no errors (losses are silent)")


def facts(btf: str | None = None) -> list[tuple[str, str, bool]]:
    """(what, state, ok) lines about the kernel."""
    out = []
    rel = platform.release()
    out.append(("kernel", f"{rel} {platform.machine()}", True))
    have = effective()
    for need in needs(Host.here()):
        lack = missing(need, have)
        if not lack:
            state = "yes: " + (" + ".join(need.caps) if all(c in have for c in need.caps)
                               else need.instead)
        else:
            state = f"MISSING {' + '.join(lack)}: " + (need.without or "tracing cannot start")
            if need.fix:
                state += f" ({need.fix})"
        # only what tracing cannot start without is a failure
        out.append((need.label, state, bool(not lack or need.without)))
    btf = btf or DEFAULT_BTF
    out.append(("BTF", btf if os.path.exists(btf) else f"missing ({btf})", os.path.exists(btf)))
    out.append(("overlayfs", overlay_state(), True))
    out.append(("error leaks", syncfs_errors(kernel_release()), True))
    hdrs = f"/lib/modules/{rel}/build"
    out.append(("kernel headers", "installed (not needed)" if os.path.isdir(hdrs)
                else "absent (not needed: ovltrace builds its own tree from BTF)", True))
    if os.path.isdir(TRACEFS) and not os.access(TRACEFS, os.R_OK | os.X_OK):
        out.append(("tracefs", f"{TRACEFS}: not readable by this user (root reads it)", True))
    else:
        has_tracefs = os.path.isdir(os.path.join(TRACEFS, "events"))
        out.append(("tracefs", TRACEFS if has_tracefs else "not mounted (ovltrace mounts it)",
                    True))
    why = kprobes_available()
    out.append(("kprobes", f"not available: {why}" if why else "available", True))
    why = fentry_available()
    out.append(("fentry", f"not available: {why}" if why else
                "BPF trampolines present (loading allowed? see hooks)", True))
    stats = _read("/proc/sys/kernel/bpf_stats_enabled")
    out.append(("bpf_stats_enabled", stats if stats is not None else "unknown", True))
    lock = _read("/sys/kernel/security/lockdown")
    if lock:
        active = lock[lock.find("[") + 1:lock.find("]")] if "[" in lock else lock
        out.append(("lockdown", active, active != "confidentiality"))
    return out


def run_doctor(opts: TraceOptions) -> int:
    print("ovltrace doctor")
    ok = True
    for what, state, good in facts(opts.btf):
        ok &= good
        print(f"  {what:<18} {state}")
    refusal = tracing_refusal()
    can_trace = refusal is None
    if not can_trace:
        # privileges first: without them this user cannot read tracefs or
        # load a program, so nothing below could judge the kernel
        print()
        print(f"verdict: run as root first: {refusal}")
        return 1
    if can_trace:
        try:
            ensure_tracefs()
        except OvltraceError as e:
            print(f"  {'tracefs':<18} {e}")
            ok = False
    try:
        mode = opts.hooks
        probes = Probes(opts.btf, mode=mode)
    except OvltraceError as e:
        print(f"  cannot read kernel types: {e}")
        return 1
    # Allowed to, really attach (then detach): the only way to know what the
    # kernel allows (fentry loads can be refused, kprobes can be missing).
    attached, failure = False, None
    if can_trace:
        try:
            probes.attach()
            attached = True
        except OvltraceError as e:
            failure = str(e)
        finally:
            probes.close()
    print()
    print(f"hooks (mode {mode}; {MODE_TEXT[probes.mode]}; "
          f"{'as attached just now' if attached else 'predicted, not attached'})")
    usable = 0
    for h in probes.hooks():
        mech = h.mechanism or "unavailable"
        usable += bool(h.mechanism)
        print(f"  {h.name:<12} {mech:<11} {h.what}")
        for m, why in (h.tried or {}).items():
            print(f"  {'':<12} {'':<11} not {m}: {why}")
        if h.reason and not h.tried:
            print(f"  {'':<12} {'':<11} why: {h.reason}")
        if h.limit:
            print(f"  {'':<12} {'':<11} " + (
                "a documented limit, not an error: the stand-in serves it" if h.mechanism
                else "off: a documented limit here, not an error"))
    for n in probes.layout.notes:
        print(f"  note: {n}")
    for fn, why in UNHOOKABLE.items():
        lines = textwrap.wrap(why, 80 - 27)
        print(f"  {fn:<12} {'never':<11} {lines[0]}")
        for l in lines[1:]:
            print(f"  {'':<12} {'':<11} {l}")
    if failure:
        print(f"  attach failed: {failure}")
        ok = False
    print()
    if usable == 0:
        print("verdict: nothing can be traced on this kernel")
        return 1
    print(f"verdict: {'ready' if ok else 'tracing possible, see above'}: {usable} hooks usable")
    return 0 if ok else 1
