"""Choosing a mechanism per hook (fentry > kprobe > tracepoint), with the
attach calls mocked: this machine can attach neither kprobes nor fentry,
so the choice logic is tested here and the hooks themselves in the VM."""
from __future__ import annotations

import pytest

from ovltrace import bpfdefs
from ovltrace.errors import OvltraceError
from ovltrace.kernel.layout import FUNCTIONS, HOOKS, generate, pt_regs
from ovltrace.hooks import (FORCED, HOOK_MODES, MODE_TEXT, AttachError, Attacher, Unreachable,
                            candidates, choose, known_limit, require_functions, select_hooks)
from ovltrace.probes import load_btf


def fake_attach(allowed: dict[str, set[str]], calls: list, unreachable=()):
    """attach(hook, mech) that works only for the mechanisms in allowed[hook];
    (hook, mech) pairs in `unreachable` fail for a documented limit."""
    def attach(hook, mech):
        calls.append((hook, mech))
        if (hook, mech) in unreachable:
            raise Unreachable(f"{mech} cannot reach {hook} here")
        if mech not in allowed.get(hook, set()):
            raise AttachError(f"{mech} refused for {hook}")
    return attach


def test_choose_takes_the_first_that_attaches():
    calls = []

    def attach(m):
        calls.append(m)
        if m == "fentry":
            raise AttachError("no")

    mech, tried = choose(["fentry", "kprobe", "tracepoint"], attach)
    assert mech == "kprobe" and calls == ["fentry", "kprobe"]
    assert tried == {"fentry": "no"}


def test_choose_none_left():
    mech, tried = choose(["fentry", "kprobe"], lambda m: (_ for _ in ()).throw(AttachError(m + "!")))
    assert mech is None and tried == {"fentry": "fentry!", "kprobe": "kprobe!"}


def test_preference_per_hook_and_failures_stay_local():
    calls = []
    allowed = {"inode_dirty": {"fentry", "kprobe", "tracepoint"},
               "copy_up": {"kprobe", "tracepoint"},     # overlay is a module: no fentry
               "sync_fs": {"tracepoint"},
               "wb_error": set(),                       # nothing at all
               "syncfs": {"tracepoint"}}
    out = select_hooks(list(allowed), "auto", fake_attach(allowed, calls))
    assert out["inode_dirty"].mechanism == "fentry"
    assert out["copy_up"].mechanism == "kprobe"
    assert out["copy_up"].tried == {"fentry": "fentry refused for copy_up"}
    assert out["sync_fs"].mechanism == "tracepoint"
    assert set(out["sync_fs"].tried) == {"fentry", "kprobe"}
    assert out["wb_error"].mechanism is None and "kprobe refused" in out["wb_error"].reason
    assert out["syncfs"].mechanism == "tracepoint"
    assert ("syncfs", "fentry") not in calls          # tracepoint-only hooks
    assert ("inode_dirty", "kprobe") not in calls     # stops at the first success
    assert out["copy_up"].function == "ovl_copy_up_flags"


def test_tracepoints_mode_never_tries_functions():
    calls = []
    allowed = {h: {"fentry", "kprobe", "tracepoint"} for h in HOOKS}
    out = select_hooks(list(HOOKS), "tracepoints", fake_attach(allowed, calls))
    assert {m for _, m in calls} == {"tracepoint"}
    assert all(h.mechanism == "tracepoint" for h in out.values())
    assert out["copy_up"].tried["fentry"].startswith("not tried")


def test_functions_mode_requires_every_function_hook():
    calls = []
    allowed = {h: {"tracepoint", "kprobe"} for h in HOOKS}
    allowed["sync_fs"] = {"tracepoint"}
    out = select_hooks(list(HOOKS), "functions", fake_attach(allowed, calls))
    assert ("sync_fs", "tracepoint") not in calls     # never falls back
    assert out["syncfs"].mechanism == "tracepoint"    # no function to require there
    with pytest.raises(OvltraceError, match=r"sync_fs \(sync_filesystem\): fentry: .*kprobe"):
        require_functions(out)
    allowed["sync_fs"] = {"fentry"}
    require_functions(select_hooks(list(HOOKS), "functions", fake_attach(allowed, [])))


def test_candidates():
    assert candidates("inode_dirty", "auto")[0] == ["fentry", "kprobe", "tracepoint"]
    assert candidates("umount", "functions")[0] == ["tracepoint"]
    assert candidates("copy_up", "functions")[0] == ["fentry", "kprobe"]
    assert candidates("copy_up", "fentry") == (["fentry"], {"kprobe": "not tried (--hooks fentry)"})
    assert candidates("sync_fs", "kprobes") == (["kprobe"], {"fentry": "not tried (--hooks kprobes)"})
    assert candidates("syncfs", "fentry") == (["tracepoint"], {})


def test_cli_offers_every_mode():
    from ovltrace.cli import cli
    opt = next(p for p in cli.params if p.name == "hooks")
    assert tuple(opt.type.choices) == HOOK_MODES and opt.envvar == "OVLTRACE_HOOKS"
    assert set(MODE_TEXT) == set(HOOK_MODES)


@pytest.mark.parametrize("mode", sorted(FORCED))
def test_forced_mode_uses_exactly_one_mechanism(mode):
    mech = FORCED[mode]
    calls = []
    allowed = {h: {"fentry", "kprobe", "tracepoint"} for h in HOOKS}
    out = select_hooks(list(HOOKS), mode, fake_attach(allowed, calls))
    for name, h in out.items():
        assert h.mechanism == (mech if name in FUNCTIONS else "tracepoint"), h
        assert h.limit is None
    assert {(h, m) for h, m in calls if h in FUNCTIONS} == {(h, mech) for h in FUNCTIONS}
    require_functions(out, mode)


@pytest.mark.parametrize("mode", sorted(FORCED))
def test_forced_mode_fails_naming_the_hook_never_falls_back(mode):
    mech = FORCED[mode]
    calls = []
    allowed = {h: {"fentry", "kprobe", "tracepoint"} for h in HOOKS}
    allowed["wb_error"] = {"fentry", "kprobe", "tracepoint"} - {mech}
    out = select_hooks(list(HOOKS), mode, fake_attach(allowed, calls))
    assert out["wb_error"].mechanism is None and out["wb_error"].limit is None
    assert [m for h, m in calls if h == "wb_error"] == [mech]       # no other mechanism
    with pytest.raises(OvltraceError) as e:
        require_functions(out, mode)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"{mech} hooks required (--hooks {mode}) but unavailable: "
                   f"wb_error (__filemap_set_wb_err): {mech}: {mech} refused for wb_error")


def test_forced_mode_documented_limit_takes_the_stand_in_not_fatal():
    calls = []
    allowed = {h: {"fentry", "kprobe", "tracepoint"} for h in HOOKS}
    out = select_hooks(list(HOOKS), "fentry",
                       fake_attach(allowed, calls, unreachable={("copy_up", "fentry")}))
    cu = out["copy_up"]
    assert cu.mechanism == "tracepoint" and cu.reason is None
    assert cu.limit == "fentry: fentry cannot reach copy_up here"
    assert cu.tried == {"kprobe": "not tried (--hooks fentry)",
                        "fentry": "fentry cannot reach copy_up here"}
    assert [m for h, m in calls if h == "copy_up"] == ["fentry", "tracepoint"]   # never kprobe
    require_functions(out, "fentry")                                # the others are fentry
    # the same limit with the other mechanism still works: no limit, no hole
    out = select_hooks(list(HOOKS), "kprobes",
                       fake_attach(allowed, [], unreachable={("copy_up", "fentry")}))
    assert out["copy_up"].mechanism == "kprobe" and out["copy_up"].limit is None


def test_forced_mode_documented_limit_and_no_stand_in_is_off():
    allowed = {h: {"fentry", "kprobe", "tracepoint"} for h in HOOKS}
    allowed["copy_up"] = {"kprobe"}
    out = select_hooks(list(HOOKS), "fentry",
                       fake_attach(allowed, [], unreachable={("copy_up", "fentry")}))
    cu = out["copy_up"]
    assert cu.mechanism is None and cu.limit == "fentry: fentry cannot reach copy_up here"
    assert cu.reason.startswith("fentry: fentry cannot reach copy_up here; tracepoint: ")
    require_functions(out, "fentry")                                # off, documented


def test_limit_excuses_only_when_every_try_hit_one():
    allowed = {h: {"tracepoint"} for h in HOOKS}     # kprobes refused
    out = select_hooks(list(HOOKS), "functions",
                       fake_attach(allowed, [], unreachable={("copy_up", "fentry")}))
    assert out["copy_up"].mechanism is None and out["copy_up"].limit is None
    with pytest.raises(OvltraceError, match=r"copy_up \(ovl_copy_up_flags\): fentry: fentry "
                                            r"cannot reach copy_up here; kprobe: kprobe refused"):
        require_functions(out, "functions")
    # auto: the limit is just a reason to take the next mechanism
    out = select_hooks(list(HOOKS), "auto",
                       fake_attach(allowed, [], unreachable={("copy_up", "fentry")}))
    assert out["copy_up"].mechanism == "tracepoint" and out["copy_up"].limit is None


def test_known_limits():
    why = known_limit("fentry", "ovl_copy_up_flags", "overlay")
    assert "module overlay" in why and "vmlinux BTF" in why
    assert known_limit("fentry", "__mark_inode_dirty", "") is None      # in vmlinux
    assert known_limit("kprobe", "ovl_copy_up_flags", "overlay") is None
    # 5.10: a module without BTF, whatever the mechanism
    for mech in ("fentry", "kprobe"):
        why = known_limit(mech, "ovl_copy_up_flags", "overlay", module_btf=False)
        assert "module overlay, which has no BTF here" in why and "5.11" in why
    assert known_limit("kprobe", "__mark_inode_dirty", "", module_btf=False) is None


class FakeBPF:
    """What Attacher calls on a bcc BPF object, recording it."""

    def __init__(self, fail: set[str]):
        self.fail, self.log = fail, []

    def _do(self, what, name):
        self.log.append((what, name.decode()))
        if name.decode() in self.fail:
            if "func__" in name.decode():
                raise Exception("Need super-user privileges to run")
            raise Exception(f"Failed to attach BPF program {name!r}")

    def attach_kfunc(self, fn_name):
        self._do("attach_kfunc", fn_name)

    def attach_kretfunc(self, fn_name):
        self._do("attach_kretfunc", fn_name)

    def detach_kfunc(self, fn_name):
        self.log.append(("detach_kfunc", fn_name.decode()))

    def detach_kretfunc(self, fn_name):
        self.log.append(("detach_kretfunc", fn_name.decode()))

    def attach_kprobe(self, event, fn_name):
        self._do("attach_kprobe", fn_name)

    def attach_kretprobe(self, event, fn_name):
        self._do("attach_kretprobe", fn_name)

    def detach_kprobe(self, event, fn_name):
        self.log.append(("detach_kprobe", fn_name.decode()))


class FakeProbes:
    mode = "auto"

    def __init__(self):
        self.config = []

    def set_config(self, idx, v):
        self.config.append((idx, v))


@pytest.fixture(scope="module")
def layout():
    return generate(load_btf())


def attacher(layout, fail, fentry=None, kprobes=None):
    a = Attacher.__new__(Attacher)
    a.bpf, a.layout, a.probes = FakeBPF(fail), layout, FakeProbes()
    a.syms = {f["function"]: ("overlay" if f["function"].startswith("ovl_") else "")
              for f in FUNCTIONS.values()}
    a._fentry, a._kprobes, a.mechanism = fentry, kprobes, {}
    return a


def test_partial_fentry_is_undone_and_eperm_explained(layout):
    a = attacher(layout, fail={"kretfunc__ovl_copy_up_flags"})
    with pytest.raises(Unreachable) as e:         # a module target: the documented limit
        a.attach("copy_up", "fentry")
    assert "EPERM" in str(e.value) and "module overlay" in str(e.value)
    assert ("detach_kfunc", "kfunc__ovl_copy_up_flags") in a.bpf.log
    a.attach("copy_up", "kprobe")
    assert a.bpf.log[-1] == ("attach_kretprobe", "kretprobe__ovl_copy_up_flags")
    # function hooks leave the workdir estimate off (Probes.attach turned it off)
    assert a.probes.config == []


def test_a_module_without_btf_is_a_documented_limit_for_both_mechanisms(layout, monkeypatch):
    """5.10: overlay is a module with no BTF, so ovl_inode is unknown; the
    copy-up function hook cannot work with fentry or kprobes, and says why."""
    import dataclasses
    a = attacher(layout, fail=set())
    a.layout = dataclasses.replace(
        layout, functions={**layout.functions, "copy_up": "kernel lacks ovl_inode.flags (x)"},
        module_structs={"copy_up": "overlay"})
    monkeypatch.setattr("os.path.exists", lambda p: p != "/sys/kernel/btf/overlay")
    for mech in ("fentry", "kprobe"):
        with pytest.raises(Unreachable, match=r"^kernel lacks ovl_inode.flags \(x\); "
                                              r"ovl_copy_up_flags is in module overlay, which "
                                              r"has no BTF here"):
            a.attach("copy_up", mech)
    assert a.bpf.log == []
    # the module's BTF is there, so something else is missing: an error
    monkeypatch.setattr("os.path.exists", lambda p: True)
    with pytest.raises(AttachError) as e:
        a.attach("copy_up", "kprobe")
    assert not isinstance(e.value, Unreachable)


def test_fentry_failure_in_vmlinux_is_an_error(layout):
    a = attacher(layout, fail={"kfunc__sync_filesystem"})
    with pytest.raises(AttachError) as e:
        a.attach("sync_fs", "fentry")
    assert not isinstance(e.value, Unreachable) and "module" not in str(e.value)


def test_estimate_on_only_with_the_copy_up_stand_in(layout):
    import dataclasses
    a = attacher(layout, fail=set())
    a.layout = dataclasses.replace(layout, hooks={**layout.hooks, "copy_up": None})
    with pytest.raises(AttachError, match="stand-in needs"):
        a.attach("copy_up", "tracepoint")
    assert a.probes.config == []
    a.mechanism.update(inode_dirty="fentry", folio_dirty="tracepoint")
    a.attach("copy_up", "tracepoint")
    assert a.probes.config == [(bpfdefs.CFG_FN_COPY_UP, 0)]


def test_partial_kprobe_is_undone(layout):
    a = attacher(layout, fail={"kretprobe__sync_filesystem"})
    with pytest.raises(AttachError):
        a.attach("sync_fs", "kprobe")
    assert ("detach_kprobe", "kprobe__sync_filesystem") in a.bpf.log


def test_unavailable_mechanisms_say_why(layout):
    a = attacher(layout, fail=set(), fentry="kernel has no BPF trampolines",
                 kprobes="CONFIG_KPROBES is off")
    for mech, why in (("fentry", "trampolines"), ("kprobe", "CONFIG_KPROBES")):
        with pytest.raises(AttachError, match=why):
            a.attach("inode_dirty", mech)
    assert a.bpf.log == []
    a.syms["sync_filesystem"] = None
    with pytest.raises(AttachError, match="kallsyms"):
        a.attach("sync_fs", "kprobe")


def test_layout_has_what_function_hooks_need(layout):
    # this kernel's BTF has every member the function hooks read
    assert layout.functions == {h: None for h in FUNCTIONS}
    regs = pt_regs(load_btf())
    assert regs and "unsigned long di;" in regs and "unsigned long si;" in regs
    assert "K_OVL_UPPERDATA" in layout.header and "K_O_TRUNC 01000" in layout.header


# ---- live: the CLI on this kernel --------------------------------------------
import json
import subprocess

from conftest import OVLTRACE, ROOT


def run_cli(args, env=None):
    import os
    return subprocess.run(OVLTRACE + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.live
def test_doctor_lists_every_hook_and_why_not():
    r = run_cli(["doctor"], env={"OVLTRACE_HOOKS": "auto"})
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert any("as attached just now" in l for l in lines), r.stdout
    for name in HOOKS:
        row = [l for l in lines if l.split()[:1] == [name]]
        assert row, f"{name} missing:\n{r.stdout}"
        mech = row[0].split()[1]
        assert mech in ("fentry", "kprobe", "tracepoint"), row
        if name in FUNCTIONS:
            i = lines.index(row[0])
            why = [l.split()[1].rstrip(":") for l in lines[i + 1:i + 3] if l.split()[:1] == ["not"]]
            # every better mechanism than the one chosen says why not
            better = ["fentry", "kprobe", "tracepoint"][:["fentry", "kprobe", "tracepoint"].index(mech)]
            assert why == better, (name, lines[i:i + 3])
    assert any(l.split()[:2] == ["errseq_set", "never"] for l in lines), r.stdout
    assert max(map(len, lines)) <= 100


@pytest.mark.live
def test_forced_tracepoint_path():
    r = run_cli(["--hooks", "tracepoints", "audit", "-d", "1s", "--format", "json"])
    assert r.returncode == 0, r.stderr
    hooks = {h["name"]: h for h in json.loads(r.stdout)["hooks"]}
    assert {h["mechanism"] for h in hooks.values()} == {"tracepoint"}
    assert hooks["copy_up"]["tried"]["fentry"].startswith("not tried")


@pytest.mark.live
@pytest.mark.parametrize("mode", ["functions", "fentry", "kprobes"])
def test_required_function_hooks(mode):
    """Works where the kernel allows function hooks (a forced mechanism may
    leave a hook off for a documented limit); elsewhere (this machine)
    fails in one line that says why, per hook."""
    r = run_cli(["audit", "-d", "1s", "--format", "json"], env={"OVLTRACE_HOOKS": mode})
    assert "Traceback" not in r.stderr, r.stderr
    allowed = (FORCED[mode],) if mode in FORCED else ("fentry", "kprobe")
    if r.returncode == 0:
        hooks = {h["name"]: h for h in json.loads(r.stdout)["hooks"]}
        for name in FUNCTIONS:
            h = hooks[name]
            assert h["mechanism"] in allowed or (h["mechanism"] is None and h["limit"]), h
        assert {h["mechanism"] for n, h in hooks.items() if n not in FUNCTIONS} <= {"tracepoint", None}
    else:
        print(f"\n{mode}: function hooks unavailable here: {r.stderr.strip()}")
        assert r.returncode == 1
        err = [l for l in r.stderr.splitlines() if l.startswith("ovltrace: error:")]
        assert len(err) == 1 and f"required (--hooks {mode})" in err[0], r.stderr
        named = [n for n, spec in FUNCTIONS.items() if f"{n} ({spec['function']}): {allowed[0]}: " in err[0]]
        assert named, err[0]


def test_doctor_tells_how_overlayfs_is_here(tmp_path):
    from ovltrace.commands.doctor import overlay_state
    assert overlay_state(str(tmp_path)) == "not loaded yet"
    (tmp_path / "module" / "overlay").mkdir(parents=True)
    assert overlay_state(str(tmp_path)) == "built in"
    (tmp_path / "module" / "overlay" / "initstate").write_text("live\n")
    assert overlay_state(str(tmp_path)).startswith("module without BTF (before 5.11)")
    (tmp_path / "kernel" / "btf").mkdir(parents=True)
    (tmp_path / "kernel" / "btf" / "overlay").write_bytes(b"")
    assert overlay_state(str(tmp_path)) == "module (BTF in /sys/kernel/btf/overlay)"


def test_doctor_tells_whether_syncfs_hears_errors():
    from ovltrace.commands.doctor import syncfs_errors
    assert syncfs_errors((6, 1)).startswith("possible: ")
    assert syncfs_errors((5, 17)) == syncfs_errors((6, 18))
    assert syncfs_errors((5, 16)).startswith("before 5.17 only if ")
    assert syncfs_errors((5, 10)) == syncfs_errors((5, 16))


def test_symbols_by_name_even_when_addresses_are_hidden(tmp_path):
    """Without CAP_SYSLOG every address in /proc/kallsyms reads 0: the
    names and modules still tell what can be hooked."""
    from ovltrace.hooks import symbol_modules
    k = tmp_path / "kallsyms"
    k.write_text("0000000000000000 T __mark_inode_dirty\n"
                 "0000000000000000 t ovl_copy_up_flags\t[overlay]\n"
                 "0000000000000000 T bpf_trampoline_link_prog\n")
    assert symbol_modules(["__mark_inode_dirty", "ovl_copy_up_flags", "sync_filesystem"],
                          str(k)) == {"__mark_inode_dirty": "", "ovl_copy_up_flags": "overlay",
                                      "sync_filesystem": None}
