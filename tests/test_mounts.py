"""Tests for ovltrace.mounts: pure parsers, a fake /proc tree, and real mounts (live)."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ovltrace import mounts
from ovltrace.mounts import (MountInfoError, MountWatcher, UnknownOverlayError, discover,
                             escape, parse_mountinfo, parse_overlay_options,
                             split_lowerdirs, unescape)

FIX = Path(__file__).parent / "fixtures" / "mountinfo"


# ------------------------------------------------------------ pure parsers

def _host():
    return {m.mount_id: m for m in parse_mountinfo((FIX / "host.txt").read_text())}


def test_parse_basic_fields_and_optional_fields():
    m = _host()[47]
    assert (m.mount_id, m.parent_id, m.dev, m.root) == (47, 43, "0:39", "/")
    assert m.mountpoint == "/var/lib/docker/overlay2/abc/merged"
    assert m.optional == ("shared:2", "master:7", "propagate_from:3")
    assert (m.fstype, m.source) == ("overlay", "overlay")
    assert m.mount_options == "rw,relatime"
    o = parse_overlay_options(m.super_options)
    assert o["upperdir"] == "/var/lib/docker/overlay2/abc/diff"
    assert o["lowerdirs"] == ("/var/lib/docker/overlay2/l/C2UE", "/var/lib/docker/overlay2/l/S5FI")


def test_escaped_space_tab_newline_backslash_in_mountpoint():
    m = _host()[97]
    assert m.mountpoint == "/mnt/up fs/m\\nt\ttab\nnl"
    assert _host()[60].mountpoint == "/mnt/up fs"


def test_legacy_options_escaped_colon_and_comma():
    # as 6.18 shows `mount -o 'lowerdir=/tmp/esc/lo\:w\,er:/tmp/esc/lo w2,upperdir=.../u p\,x'`
    o = parse_overlay_options(_host()[97].super_options)
    assert o["lowerdirs"] == ("/tmp/esc/lo:w,er", "/tmp/esc/lo w2")
    assert o["upperdir"] == "/mnt/up fs/u p,x"
    assert o["workdir"] == "/mnt/up fs/w k"
    assert o["flags"] == ()
    assert o["raw"]["uuid"] == "on"


def test_fsconfig_lowerdir_plus_datadir_and_fsync_volatile():
    o = parse_overlay_options(_host()[102].super_options)
    # raw paths: ':' is not a separator in lowerdir+=
    assert o["lowerdirs"] == ("/tmp/esc/lo:w,er", "/tmp/esc/lo w2", "/tmp/esc/d:a,t")
    assert o["upperdir"] == "/tmp/esc/u p,x"
    assert o["flags"] == ("volatile", "metacopy", "redirect_dir")


def test_readonly_overlay_without_upper_and_data_only_layers():
    m = _host()[110]
    o = parse_overlay_options(m.super_options)
    assert o["upperdir"] is None and o["workdir"] is None
    assert o["lowerdirs"] == ("/l1", "/l2", "/data1")
    assert "ro" in o["flags"]


def test_flag_normalization():
    o = parse_overlay_options(_host()[111].super_options)
    # xino=off and redirect_dir=follow are not "on"
    assert o["flags"] == ("volatile", "index", "userxattr", "nfs_export")


def test_backslash_escaped_comma_split():
    # some kernels/tools leave `\,` unconverted in the option string
    o = parse_overlay_options(r"rw,lowerdir=/a\,b:/c\:d,upperdir=/u\,1,workdir=/w,index=on")
    assert o["lowerdirs"] == ("/a,b", "/c:d")
    assert o["upperdir"] == "/u,1"
    assert o["flags"] == ("index",)


def test_split_lowerdirs_escaped_backslash_before_colon():
    assert split_lowerdirs(r"/a\\:/b") == ["/a\\", "/b"]
    assert split_lowerdirs("/x::/y") == ["/x", "/y"]


def test_very_long_paths():
    long = "/" + "/".join(["d" * 250] * 16)            # ~4 KiB, PATH_MAX scale
    line = (f"5 1 0:99 / {escape(long + ' m')} rw - overlay overlay "
            f"rw,lowerdir={escape(long)}/l,upperdir={escape(long)}/u,workdir={escape(long)}/w")
    [m] = parse_mountinfo(line)
    assert m.mountpoint == long + " m"
    assert parse_overlay_options(m.super_options)["upperdir"] == long + "/u"


@pytest.mark.parametrize("line", [
    "27 1 254:0 / / rw,relatime ext4 /dev/vda rw",         # no separator
    "x 1 254:0 / / rw - ext4 /dev/vda rw",                 # bad id
    "27 1 254 / / rw - ext4 /dev/vda rw",                  # bad dev
    "27 1 254:0 / / rw -",                                 # nothing after separator
    "27 1 254:0 / -",                                      # too short
])
def test_malformed_line_raises(line):
    with pytest.raises(MountInfoError) as e:
        parse_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n" + line + "\n")
    assert "\n" not in str(e.value) and "line 2" in str(e.value)


def test_blank_lines_ignored():
    assert len(parse_mountinfo("\n22 27 0:21 / /proc rw - proc proc rw\n\n")) == 1


# database=None: do not leave a .hypothesis/ directory in the work tree
NODB = settings(database=None)


@NODB
@given(st.text())
def test_escape_unescape_round_trip(s):
    assert unescape(escape(s)) == s
    assert " " not in escape(s) and "\n" not in escape(s)


@NODB
@given(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=60))
def test_mountpoint_round_trip_through_mountinfo(mp):
    line = f"5 1 0:9 / {escape(mp)} rw - overlay overlay rw,upperdir={escape(mp)}"
    [m] = parse_mountinfo(line)
    assert m.mountpoint == mp


@settings(max_examples=300, database=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789: -/\\,=\nabc")), max_size=200))
def test_parse_never_raises_other_errors(text):
    try:
        for m in parse_mountinfo(text):
            parse_overlay_options(m.super_options)
    except MountInfoError:
        pass


@NODB
@given(st.text())
def test_parse_arbitrary_text(text):
    try:
        parse_mountinfo(text)
    except MountInfoError:
        pass


# ------------------------------------------------------------ fake /proc tree

def _fake_proc(tmp: Path, nss: dict[int, tuple[str, str]]) -> Path:
    """nss: pid -> (namespace name, mountinfo text). ns/mnt is a regular file
    shared by pids of one namespace, so its st_ino identifies the namespace."""
    proc = tmp / "proc"
    nsdir = tmp / "ns"
    nsdir.mkdir()
    for pid, (ns, text) in nss.items():
        d = proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (nsdir / ns).touch()
        os.link(nsdir / ns, d / "ns" / "mnt")
        (d / "mountinfo").write_text(text)
        (d / "root").mkdir()
    return proc


def _ovl_line(mid: int, dev: str, mp: str, up: str, root: str = "/") -> str:
    return (f"{mid} 1 {dev} {root} {mp} rw,relatime - overlay overlay "
            f"rw,lowerdir=/l,upperdir={up},workdir={up}.work")


def test_fake_proc_dedupe_prefers_host_and_skips_bad(tmp_path):
    base = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
    proc = _fake_proc(tmp_path, {
        1: ("host", base + _ovl_line(10, "0:50", "/run/c1/merged", "/var/u1") + "\n"),
        2: ("host", "garbage"),                   # same ns as pid 1: not read again
        30: ("ctr", "1 0 0:50 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/var/u1,workdir=/w\n"
             + _ovl_line(11, "0:60", "/only/here", "/var/u2") + "\n"),
        40: ("broken", "this is not mountinfo\n"),
    })
    (proc / "self").symlink_to("1")
    # stat reaches the ctr namespace through /proc/30/root
    (proc / "30" / "root" / "var").mkdir()
    (proc / "30" / "root" / "var" / "u2").mkdir()
    ovs = {o.dev: o for o in discover(str(proc))}
    assert set(ovs) == {"0:50", "0:60"}
    host_ns = os.stat(proc / "1" / "ns" / "mnt").st_ino
    assert ovs["0:50"].mnt_ns == host_ns and ovs["0:50"].mountpoint == "/run/c1/merged"
    assert ovs["0:50"].upper_dev == "8:1" and ovs["0:50"].upper_fstype == "ext4"
    assert ovs["0:50"].upper_ino is None      # deleted upperdir: still listed
    assert ovs["0:60"].pid == 30
    assert ovs["0:60"].upper_ino == os.stat(proc / "30" / "root" / "var" / "u2").st_ino
    # --overlay matching works with any namespace's mountpoint
    assert [o.dev for o in discover(str(proc), only=["/"])] == ["0:50"]
    assert [o.dev for o in discover(str(proc), only=["/only/here/"])] == ["0:60"]
    with pytest.raises(UnknownOverlayError, match="/nope: not an overlay mount"):
        discover(str(proc), only=["/only/here", "/nope"])


def test_fake_proc_1000_overlays_fast(tmp_path):
    n = 1000
    base = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /var/lib rw - xfs /dev/sda2 rw\n"
    text = base + "".join(_ovl_line(100 + i, f"0:{1000 + i}", f"/var/lib/o/{i}/merged",
                                    f"/var/lib/o/{i}/diff") + "\n" for i in range(n))
    # 20 namespaces that each see all of them (e.g. a runtime's helper processes)
    nss = {1: ("host", text)}
    for k in range(20):
        nss[100 + k] = (f"ns{k}", text)
    proc = _fake_proc(tmp_path, nss)
    (proc / "self").symlink_to("1")
    t0 = time.perf_counter()
    ovs = discover(str(proc))
    dt = time.perf_counter() - t0
    assert len(ovs) == n and all(o.upper_dev == "8:2" and o.upper_fstype == "xfs" for o in ovs)
    assert dt < 0.5, f"discover took {dt:.3f}s for {n} overlays x 21 namespaces"
    w = MountWatcher(str(proc))
    added, removed = w.refresh()
    assert len(added) == n and not removed
    t0 = time.perf_counter()
    assert w.refresh() == ([], [])
    assert time.perf_counter() - t0 < 0.5


def test_overlay_json_and_key():
    ov = mounts.Overlay("/m", 1, 2, "0:5", "/u", "/w", ("/l",), "7:0", "ext4", 3, 4,
                        ("volatile",), 99)
    assert ov.key == "0:5"
    j = ov.to_json()
    assert j == {"mountpoint": "/m", "mnt_ns": 1, "upperdir": "/u", "workdir": "/w",
                 "lowerdirs": ["/l"], "upper_dev": "7:0", "upper_fstype": "ext4",
                 "options": ["volatile"], "dev": "0:5"}


# ------------------------------------------------------------ live: real mounts

def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _mount_ovl(lower: Path, base: Path, mnt: Path, extra: str = "") -> None:
    (base / "upper").mkdir(parents=True)
    (base / "work").mkdir()
    mnt.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={base}/upper,workdir={base}/work" + extra
    _run("mount", "-t", "overlay", "overlay", "-o", opts, str(mnt))


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _mountinfo_dev(path: Path) -> str:
    for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        if m.mountpoint == str(path):
            dev = m.dev
    return dev


@pytest.fixture
def loopfs():
    """A 64 MiB ext4 on a loop device: the shared upper filesystem."""
    tmp = Path(tempfile.mkdtemp(prefix="ovt-mounts-"))
    img, fs = tmp / "upper.img", tmp / "fs"
    fs.mkdir()
    loop = None
    try:
        _run("truncate", "-s", "64M", str(img))
        _run("mkfs.ext4", "-q", str(img))
        loop = _run("losetup", "-f", "--show", str(img)).strip()
        _run("mount", loop, str(fs))
        (fs / "lower").mkdir()
        (fs / "lower" / "hello").write_text("hi\n")
        yield tmp, fs
    finally:
        # children may have mounted below tmp: unmount deepest first
        for m in sorted((m.mountpoint for m in parse_mountinfo(
                Path("/proc/self/mountinfo").read_text())
                if m.mountpoint.startswith(str(tmp) + "/")), key=len, reverse=True):
            _umount(Path(m))
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)


@pytest.mark.live
def test_live_discover_three_overlays(loopfs):
    tmp, fs = loopfs
    specs = {"a": "", "b": ",volatile", "c d": ""}
    mnts = {}
    for name, extra in specs.items():
        mnts[name] = tmp / "mnt" / name
        _mount_ovl(fs / "lower", fs / name, mnts[name], extra)
    loop_dev = _mountinfo_dev(fs)
    found = {o.mountpoint: o for o in discover()}
    for name, extra in specs.items():
        ov = found[str(mnts[name])]
        upper = fs / name / "upper"
        assert ov.upperdir == str(upper)
        assert ov.workdir == str(fs / name / "work")
        assert ov.lowerdirs == (str(fs / "lower"),)
        assert ov.upper_dev == loop_dev and ov.upper_fstype == "ext4"
        assert ov.upper_ino == os.stat(upper).st_ino
        assert ov.work_ino == os.stat(fs / name / "work").st_ino
        assert ov.mnt_ns == os.stat("/proc/self/ns/mnt").st_ino
        assert ov.dev == _mountinfo_dev(mnts[name])
        assert ("volatile" in ov.options) == bool(extra)
    # --overlay matching, including a path spelled differently
    sel = discover(only=[str(tmp / "mnt" / "x" / ".." / "c d")])
    assert [o.mountpoint for o in sel] == [str(mnts["c d"])]
    with pytest.raises(UnknownOverlayError, match="/not/an/overlay: not an overlay mount"):
        discover(only=["/not/an/overlay"])


@pytest.mark.live
def test_live_overlay_in_other_mount_namespace(loopfs):
    tmp, fs = loopfs
    base, mnt = fs / "ns", tmp / "nsmnt"
    (base / "upper").mkdir(parents=True)
    (base / "work").mkdir()
    mnt.mkdir()
    opts = f"lowerdir={fs}/lower,upperdir={base}/upper,workdir={base}/work"
    p = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o '{opts}' '{mnt}' && echo ready && exec sleep 30"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        ns = os.stat(f"/proc/{p.pid}/ns/mnt").st_ino
        assert ns != os.stat("/proc/self/ns/mnt").st_ino
        [ov] = [o for o in discover() if o.upperdir == str(base / "upper")]
        assert ov.mnt_ns == ns and ov.mountpoint == str(mnt)
        assert ov.upper_dev == _mountinfo_dev(fs)
        assert ov.upper_ino == os.stat(base / "upper").st_ino
        # not visible in our namespace, but --overlay still finds it by its path there
        assert all(m.mountpoint != str(mnt) or m.fstype != "overlay"
                   for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()))
        assert [o.dev for o in discover(only=[str(mnt)])] == [ov.dev]
    finally:
        p.kill()
        p.wait()


@pytest.mark.live
def test_live_watcher_add_remove(loopfs):
    tmp, fs = loopfs
    w = MountWatcher()
    w.refresh()
    mnt = tmp / "mnt" / "w"
    _mount_ovl(fs / "lower", fs / "w", mnt)
    added, removed = w.refresh()
    assert [o.mountpoint for o in added] == [str(mnt)] and removed == []
    assert any(o.mountpoint == str(mnt) for o in w.current.values())
    assert w.refresh() == ([], [])
    _umount(mnt)
    added, removed = w.refresh()
    assert added == [] and [o.mountpoint for o in removed] == [str(mnt)]


@pytest.mark.live
def test_live_deleted_upperdir_still_listed(loopfs):
    tmp, fs = loopfs
    mnt = tmp / "mnt" / "del"
    _mount_ovl(fs / "lower", fs / "del", mnt)
    _run("rm", "-rf", str(fs / "del"))
    [ov] = [o for o in discover() if o.mountpoint == str(mnt)]
    assert ov.upper_ino is None and ov.upperdir == str(fs / "del" / "upper")
