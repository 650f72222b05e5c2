"""Which kernel mechanism serves each hook, and attaching it.

Per hook: fentry/fexit, else kprobe/kretprobe, else its tracepoint
stand-in (or one mechanism forced by --hooks); each attached on its own,
so one failure never takes the others down.  The choice is pure
(`select_hooks` with an attach function), so the tests drive it with fakes;
`Attacher` does the real attaching on a bcc object for probes.py.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field

from . import bpfdefs
from .errors import OvltraceError
from .kernel.layout import FUNCTIONS, HOOKS, Layout, programs

TRACEFS = "/sys/kernel/tracing"


# How hooks are chosen (--hooks, or OVLTRACE_HOOKS in the environment):
#   auto         per hook: fentry/fexit, else kprobe/kretprobe, else tracepoint
#   functions    the same, but fail unless every function hook got a function
#   fentry       every function hook on fentry/fexit only, kprobes: on
#   kprobes      kprobe/kretprobe only; fail otherwise, except for a documented
#                limit of that mechanism here: its tracepoint stand-in then
#                serves the hook (Hook.limit says why)
#   tracepoints  the tracepoint path only (for comparison)
HOOK_MODES = ("auto", "functions", "fentry", "kprobes", "tracepoints")
MECHANISMS = ("fentry", "kprobe", "tracepoint")
FUNCTION_MECHANISMS = ("fentry", "kprobe")
FORCED = {"fentry": "fentry", "kprobes": "kprobe"}     # mode -> its one mechanism
MODE_TEXT = {"auto": "preference fentry > kprobe > tracepoint",
             "functions": "function hooks on fentry > kprobe, required",
             "fentry": "function hooks on fentry only",
             "kprobes": "function hooks on kprobe only",
             "tracepoints": "tracepoints only"}


def hook_mode(mode: str | None = None) -> str:
    mode = (mode or "auto").strip().lower()
    if mode not in HOOK_MODES:
        raise OvltraceError(f"unknown hook mode {mode!r} (--hooks: {', '.join(HOOK_MODES)})")
    return mode


@dataclass
class Hook:
    name: str
    what: str
    mechanism: str | None          # "fentry", "kprobe", "tracepoint", or None when unavailable
    reason: str | None = None      # why not available
    function: str | None = None    # the kernel function it can hook
    tried: dict = field(default_factory=dict)   # mechanism -> why it was not used
    limit: str | None = None       # no function hook for a documented limit (known_limit):
    #                                the tracepoint stand-in serves it, else it is off


class AttachError(Exception):
    """One mechanism could not serve one hook (the message says why)."""


class Unreachable(AttachError):
    """The mechanism cannot reach this function on this kernel for a known,
    documented reason (known_limit): under a forced mechanism the hook's
    tracepoint stand-in serves it, and that is not an error."""


def known_limit(mech: str, function: str, module: str | None,
                module_btf: bool = True) -> str | None:
    """Why `mech` cannot reach `function` here, if that is a documented
    limit (docs/kernels.md); None otherwise.  `module_btf`: the function's
    module has BTF, so the hook can read that module's structs.  Pure."""
    if module and not module_btf:
        return (f"{function} is in module {module}, which has no BTF here (module BTF "
                f"came in 5.11): the hook cannot read {module}'s own structs")
    if mech == "fentry" and module:
        return (f"{function} is in module {module}, and bcc 0.26 finds fentry targets "
                "only in vmlinux BTF")
    return None


def candidates(hook: str, mode: str) -> tuple[list[str], dict[str, str]]:
    """Mechanisms to try for `hook`, best first, and those skipped (why)."""
    if hook not in FUNCTIONS:
        return ["tracepoint"], {}
    if mode == "tracepoints":
        return ["tracepoint"], {m: "not tried (--hooks tracepoints)" for m in FUNCTION_MECHANISMS}
    if mode == "functions":
        return list(FUNCTION_MECHANISMS), {}
    if mode in FORCED:
        only = FORCED[mode]
        return [only], {m: f"not tried (--hooks {mode})" for m in FUNCTION_MECHANISMS if m != only}
    return list(MECHANISMS), {}


def choose(mechanisms: list[str], attach) -> tuple[str | None, dict[str, str]]:
    """Try `attach(mechanism)` in order; the first that does not raise
    AttachError wins.  Returns it (or None) and why each before it failed.
    Pure: the unit tests drive it with fake attach functions."""
    tried: dict[str, str] = {}
    for mech in mechanisms:
        try:
            attach(mech)
            return mech, tried
        except AttachError as e:
            tried[mech] = str(e)
    return None, tried


def select_hooks(hooks: list[str], mode: str, attach) -> dict[str, Hook]:
    """Choose a mechanism for every hook, in order, each on its own: one
    that fails never takes another down.  `attach(hook, mechanism)` raises
    AttachError (Unreachable for a documented limit).  In the modes that
    require function hooks, require_functions() then checks."""
    out: dict[str, Hook] = {}
    for name in hooks:
        mechs, skipped = candidates(name, mode)
        limits: dict[str, str] = {}

        def attempt(m, name=name, limits=limits):
            try:
                attach(name, m)
            except Unreachable as e:
                limits[m] = str(e)
                raise

        mech, tried = choose(mechs, attempt)
        # a documented limit: every mechanism tried hit one
        limit = ("; ".join(f"{m}: {why}" for m, why in tried.items())
                 if mech is None and tried and set(tried) == set(limits) else None)
        if limit and "tracepoint" not in mechs and name in HOOKS:
            # the forced mechanism cannot reach it here: the stand-in serves it
            mech, more = choose(["tracepoint"], lambda m: attach(name, m))
            tried.update(more)
        reason = None if mech else "; ".join(f"{m}: {why}" for m, why in tried.items())
        why_not = {**skipped, **tried}
        why_not = {m: why_not[m] for m in MECHANISMS if m in why_not}    # preference order
        out[name] = Hook(name, HOOKS[name]["what"], mech, reason,
                         FUNCTIONS.get(name, {}).get("function"), why_not, limit)
    return out


def require_functions(chosen: dict[str, Hook], mode: str = "functions") -> None:
    """--hooks functions: every function hook must have got a function;
    --hooks fentry/kprobes: exactly that mechanism, or its stand-in (or
    nothing) for a documented limit (Hook.limit)."""
    allowed = (FORCED[mode],) if mode in FORCED else FUNCTION_MECHANISMS
    bad = [h for h in chosen.values() if h.function and h.mechanism not in allowed
           and h.reason != "not requested" and not h.limit]
    if bad:
        what = f"{FORCED[mode]} hooks" if mode in FORCED else "function hooks"
        raise OvltraceError(f"{what} required (--hooks {mode}) but unavailable: " +
                            " | ".join(f"{h.name} ({h.function}): {h.reason}" for h in bad))


@contextlib.contextmanager
def _stderr_to(buf: list):
    """libbpf and bcc print attach failures on fd 2: keep them for the
    reason instead of the terminal."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as err:
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            err.seek(0)
            buf.extend(l.strip() for l in err.read().decode(errors="replace").splitlines()
                       if l.strip())


def symbol_modules(names, kallsyms: str = "/proc/kallsyms") -> dict[str, str | None]:
    """name -> its module ("" for vmlinux), or None when the kernel has no
    such symbol. Read by name from /proc/kallsyms, never by address: without
    CAP_SYSLOG (a least-privilege DaemonSet) the kernel shows every address
    as 0, and bcc's symbol cache then finds nothing."""
    wanted = set(names)
    out: dict[str, str | None] = dict.fromkeys(wanted)
    try:
        with open(kallsyms) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in wanted and out[parts[2]] is None:
                    out[parts[2]] = parts[3].strip("[]") if len(parts) > 3 else ""
    except OSError:
        pass
    return out


def kprobes_available(tracefs: str = TRACEFS) -> str | None:
    """None if this kernel can attach kprobes, else why not."""
    if os.path.exists(os.path.join(tracefs, "kprobe_events")) or \
            os.path.exists("/sys/bus/event_source/devices/kprobe/type"):
        return None
    return "CONFIG_KPROBES is off (no kprobe_events, no kprobe PMU)"


TRAMPOLINE_SYMBOL = "bpf_trampoline_link_prog"     # present where fentry is


def fentry_available(btf: str = "/sys/kernel/btf/vmlinux",
                     syms: dict[str, str | None] | None = None) -> str | None:
    """None if bcc can attach fentry/fexit here (loading may still be
    refused). bcc's own support_kfunc() asks its address-based symbol
    cache, which finds nothing without CAP_SYSLOG: ask by name instead.
    `syms`: symbol_modules() already read with TRAMPOLINE_SYMBOL in it
    (/proc/kallsyms takes ~0.1 s to read)."""
    import platform
    if platform.machine() != "x86_64":
        return f"no BPF trampolines on {platform.machine()} in bcc 0.26 (x86_64 only)"
    if not os.path.exists(btf):
        return "no kernel BTF"
    if syms is None:
        syms = symbol_modules([TRAMPOLINE_SYMBOL])
    if syms[TRAMPOLINE_SYMBOL] is None:
        return "no BPF trampolines (no bpf_trampoline_link_prog in the kernel)"
    return None


class Attacher:
    """Attaches one hook with one mechanism, or raises AttachError; on a
    failure, what it attached for that hook is detached again."""

    def __init__(self, bpf, layout: Layout, probes: "object | None" = None):
        self.bpf = bpf
        self.layout = layout
        self.probes = probes
        # one read of /proc/kallsyms for the functions and fentry's check
        self.syms = symbol_modules([f["function"] for f in FUNCTIONS.values()]
                                   + [TRAMPOLINE_SYMBOL])
        self._kprobes = kprobes_available()
        self._fentry = fentry_available(syms=self.syms)
        self.mechanism: dict[str, str] = {}

    def attach(self, hook: str, mech: str) -> None:
        if mech == "tracepoint":
            self._tracepoint(hook)
        elif mech in FUNCTION_MECHANISMS:
            self._function(hook, mech)
        else:
            raise AttachError(f"unknown mechanism {mech}")
        self.mechanism[hook] = mech

    # -- tracepoint path -----------------------------------------------------
    def _tracepoint(self, hook: str) -> None:
        why = self.layout.hooks.get(hook)
        if why:
            raise AttachError(why)
        # stand-ins that live in other hooks' programs
        need = {"copy_up": ["inode_dirty", "folio_dirty"], "sync_fs": ["syncfs"]}.get(hook, [])
        off = [n for n in need if n not in self.mechanism]
        if off:
            raise AttachError(f"its stand-in needs the {', '.join(off)} hook")
        done = []
        try:
            for tp in programs(hook, self.layout.variants.get(hook)):
                cat, name = tp.split("/")
                if cat == "syscalls":
                    fn = f"tracepoint__{cat}__{name}".encode()
                    self.bpf.attach_tracepoint(tp=f"{cat}:{name}".encode(), fn_name=fn)
                    done.append(("tp", f"{cat}:{name}"))
                else:
                    fn = f"raw_tracepoint__{name}".encode()
                    self.bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=fn)
                    done.append(("raw", name))
        except Exception as e:
            for kind, tp in done:
                with contextlib.suppress(Exception):
                    if kind == "tp":
                        self.bpf.detach_tracepoint(tp=tp.encode())
                    else:
                        self.bpf.detach_raw_tracepoint(tp=tp.encode())
            raise AttachError(f"attaching {tp} failed: {str(e).splitlines()[0]}") from None
        if hook == "copy_up" and self.probes is not None:
            self.probes.set_config(bpfdefs.CFG_FN_COPY_UP, 0)    # the workdir estimate is on
        if hook == "renames" and self.probes is not None:
            self.probes.set_config(bpfdefs.CFG_DIR_CACHE, 1)     # renames seen: cache directories

    # -- function hooks ------------------------------------------------------
    def _function(self, hook: str, mech: str) -> None:
        spec = FUNCTIONS[hook]
        fn = spec["function"]
        why = self.layout.functions.get(hook)
        module = self.syms.get(fn)
        if why:
            mod = self.layout.module_structs.get(hook)
            limit = mod and known_limit(mech, fn, mod, module_btf=False)
            if limit and not os.path.exists(f"/sys/kernel/btf/{mod}"):
                raise Unreachable(f"{why}; {limit}")
            raise AttachError(why)
        if self.probes is not None and self.probes.mode == "tracepoints":
            raise AttachError("not tried (--hooks tracepoints)")
        if module is None:
            raise AttachError(f"{fn} is not a kernel symbol (kallsyms: inlined, renamed or absent)")
        if mech == "fentry":
            self._fentry_attach(fn, spec["exit"], module)
        else:
            self._kprobe_attach(fn, spec["exit"])

    def _fentry_attach(self, fn: str, exit: bool, module: str) -> None:
        if self._fentry:
            raise AttachError(self._fentry)
        names = [f"kfunc__{fn}"] + ([f"kretfunc__{fn}"] if exit else [])
        done = []
        chatter: list[str] = []
        try:
            with _stderr_to(chatter):
                for name in names:
                    if name.startswith("kfunc__"):
                        self.bpf.attach_kfunc(fn_name=name.encode())
                    else:
                        self.bpf.attach_kretfunc(fn_name=name.encode())
                    done.append(name)
        except Exception as e:
            for name in done:
                with contextlib.suppress(Exception):
                    (self.bpf.detach_kfunc if name.startswith("kfunc__")
                     else self.bpf.detach_kretfunc)(fn_name=name.encode())
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "super-user" in msg:      # bcc's words for EPERM
                msg = "the kernel refused to load a tracing program (EPERM)"
            detail = [l for l in chatter if "libbpf" in l or "error" in l.lower()]
            if detail:
                msg += f" [{detail[0][:120]}]"
            limit = known_limit("fentry", fn, module)
            if limit:
                raise Unreachable(f"{msg}; {limit}") from None
            raise AttachError(msg) from None

    def _kprobe_attach(self, fn: str, exit: bool) -> None:
        if self._kprobes:
            raise AttachError(self._kprobes)
        done = []
        chatter: list[str] = []
        try:
            with _stderr_to(chatter):
                self.bpf.attach_kprobe(event=fn.encode(), fn_name=f"kprobe__{fn}".encode())
                done.append("entry")
                if exit:
                    self.bpf.attach_kretprobe(event=fn.encode(),
                                              fn_name=f"kretprobe__{fn}".encode())
        except Exception as e:
            if done:
                with contextlib.suppress(Exception):
                    self.bpf.detach_kprobe(event=fn.encode(), fn_name=f"kprobe__{fn}".encode())
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            detail = [l for l in chatter if l and "Traceback" not in l]
            if detail:
                msg += f" [{detail[-1][:120]}]"
            raise AttachError(msg) from None
