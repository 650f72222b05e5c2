"""Overlay mount discovery across all mount namespaces.

Everything comes from /proc/<pid>/mountinfo; no daemon is asked. The parsers
are pure so they can be tested on fixture text, `discover()` does the I/O.

Two escaping layers apply to overlay paths in mountinfo:
  1. the kernel's seq_file octal escapes (\\040 space, \\011 tab, \\012 newline,
     \\134 backslash, and \\054 comma inside super options);
  2. overlay's own backslash escapes (``\\:``, ``\\,``, ``\\\\``) which the kernel
     keeps verbatim when the overlay was mounted with the legacy mount(2)
     option string. Options set one by one through fsconfig
     (``lowerdir+=``, ``datadir+=``) are raw paths and carry no such escapes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator


class MountInfoError(ValueError):
    """A mountinfo line that does not have the documented shape."""


class UnknownOverlayError(LookupError):
    """A path the user named is not the mountpoint of any overlay."""


@dataclass(frozen=True)
class MountInfoLine:
    mount_id: int
    parent_id: int
    dev: str             # "major:minor"
    root: str
    mountpoint: str
    mount_options: str
    fstype: str
    source: str
    super_options: str   # raw (still escaped) so option values can be split safely
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class Overlay:
    mountpoint: str
    mnt_ns: int
    mount_id: int
    dev: str
    upperdir: str | None
    workdir: str | None
    lowerdirs: tuple[str, ...]
    upper_dev: str | None
    upper_fstype: str | None
    upper_ino: int | None      # None if upperdir is gone or cannot be stat'ed
    work_ino: int | None
    options: tuple[str, ...]
    pid: int
    # every mountpoint this superblock has in any namespace, for --overlay matching
    mountpoints: tuple[str, ...] = field(default=(), compare=False, repr=False)
    upper_mountpoint: str | None = None   # where the upper fs is mounted (same namespace)
    upper_source: str | None = None       # its mount source ("/dev/loop1"): node_exporter's device

    @property
    def key(self) -> str:
        # one superblock = one overlay, whichever namespaces it shows up in
        return self.dev

    def to_json(self) -> dict:
        return {
            "mountpoint": self.mountpoint,
            "mnt_ns": self.mnt_ns,
            "upperdir": self.upperdir,
            "workdir": self.workdir,
            "lowerdirs": list(self.lowerdirs),
            "upper_dev": self.upper_dev,
            "upper_fstype": self.upper_fstype,
            "options": list(self.options),
            "dev": self.dev,
        }


# ---------------------------------------------------------------- escaping

_OCTAL = re.compile(r"\\([0-7]{3})")
_MANGLE = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


def escape(s: str) -> str:
    """Kernel-style mangling of a mountinfo path field (inverse of unescape)."""
    return "".join(_MANGLE.get(c, c) for c in s)


def _octal(m: re.Match) -> str:
    n = int(m.group(1), 8)
    if n > 0xFF:
        return m.group(0)
    # bytes >= 0x80 map to surrogates so os.fsencode() gives back the raw byte
    return chr(n) if n < 0x80 else chr(0xDC00 + n)


def unescape(s: str) -> str:
    """Undo the kernel's octal escapes (\\040, \\011, \\012, \\134, \\054, ...)."""
    return _OCTAL.sub(_octal, s) if "\\" in s else s


def _split_unescaped(s: str, sep: str) -> list[str]:
    """Split on `sep` not preceded by an escaping backslash; keep escapes."""
    parts, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _ovl_unescape(s: str) -> str:
    """Drop overlay's backslash escapes: '\\:' -> ':', '\\,' -> ',', '\\\\' -> '\\'."""
    return re.sub(r"\\(.)", r"\1", s, flags=re.S) if "\\" in s else s


def split_lowerdirs(s: str) -> list[str]:
    """Split a (kernel-unescaped) lowerdir value on unescaped ':'.

    Empty elements (the '::' separator of data-only layers) are dropped.
    """
    return [_ovl_unescape(p) for p in _split_unescaped(s, ":") if p]


# ---------------------------------------------------------------- parsing

_DEV = re.compile(r"^\d+:\d+$")


def _parse_line(line: str, lineno: int) -> MountInfoLine:
    f = line.split(" ")
    try:
        sep = f.index("-", 6)
    except ValueError:
        raise MountInfoError(f"mountinfo line {lineno}: no ' - ' separator: {line[:120]!r}") from None
    if sep < 6 or len(f) < sep + 3:
        raise MountInfoError(f"mountinfo line {lineno}: too few fields: {line[:120]!r}")
    try:
        mount_id, parent_id = int(f[0]), int(f[1])
    except ValueError:
        raise MountInfoError(f"mountinfo line {lineno}: bad mount id: {line[:120]!r}") from None
    if not _DEV.match(f[2]):
        raise MountInfoError(f"mountinfo line {lineno}: bad major:minor {f[2][:40]!r}")
    return MountInfoLine(
        mount_id=mount_id,
        parent_id=parent_id,
        dev=f[2],
        root=unescape(f[3]),
        mountpoint=unescape(f[4]),
        mount_options=f[5],
        optional=tuple(f[6:sep]),
        fstype=unescape(f[sep + 1]),
        source=unescape(f[sep + 2]),
        # super options never contain a raw space (the kernel escapes it)
        super_options=" ".join(f[sep + 3:]),
    )


def parse_mountinfo(text: str, known: dict | None = None,
                    keep: dict | None = None) -> list[MountInfoLine]:
    """Parse /proc/<pid>/mountinfo text. Raises MountInfoError on a bad line.
    known: line -> its parse from an earlier read (a mount table mostly
    stays the same between reads: only new lines are parsed); keep gets
    every line of this read, to be the next read's `known`."""
    known = known or {}
    keep = {} if keep is None else keep
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        m = known.get(line)
        if m is None:
            if not line.strip():
                continue
            m = _parse_line(line, n)
        keep[line] = m
        out.append(m)
    return out


# overlay option -> normalized flag name, for the flags we report
_FLAG_VALUES = {
    "metacopy": ("on",), "index": ("on",), "redirect_dir": ("on",),
    "nfs_export": ("on",), "xino": ("on",),
}
_FLAG_ORDER = ("volatile", "metacopy", "index", "userxattr", "redirect_dir",
               "nfs_export", "xino", "ro")


def parse_overlay_options(super_options: str, octal: bool = True) -> dict:
    """Split overlay super options (raw mountinfo text) into paths and flags.

    Returns {"upperdir": str|None, "workdir": str|None, "lowerdirs": tuple,
    "flags": tuple (normalized, only those on), "raw": {key: value}}.
    Values of raw are kernel-unescaped but keep overlay escapes.  octal=False
    for mount(2)'s data, which only has overlay's own backslash escapes.
    """
    unescape_ = unescape if octal else (lambda v: v)
    upper = work = None
    lowers: list[str] = []
    datas: list[str] = []
    flags: set[str] = set()
    raw: dict[str, str] = {}
    for opt in _split_unescaped(super_options, ","):
        if not opt:
            continue
        key, eq, val = opt.partition("=")
        val = unescape_(val)
        if key == "lowerdir+":
            lowers.append(val)          # fsconfig form: one raw path per option
        elif key == "datadir+":
            datas.append(val)
        elif key == "lowerdir":
            lowers.extend(split_lowerdirs(val))
        elif key == "upperdir":
            upper = _ovl_unescape(val)
        elif key == "workdir":
            work = _ovl_unescape(val)
        raw[key] = val if eq else ""
        if key == "volatile" or (key == "fsync" and val == "volatile"):
            flags.add("volatile")       # 6.x+ shows "fsync=volatile"
        elif key in ("userxattr", "ro"):
            flags.add(key)
        elif key in _FLAG_VALUES and val in _FLAG_VALUES[key]:
            flags.add(key)
    return {
        "upperdir": upper,
        "workdir": work,
        "lowerdirs": tuple(lowers + datas),
        "flags": tuple(f for f in _FLAG_ORDER if f in flags),
        "raw": raw,
    }


# ---------------------------------------------------------------- discovery

def mount_of_dev(dev: str, proc: str = "/proc") -> MountInfoLine | None:
    """The first mount of filesystem `dev` ("major:minor") in our namespace."""
    try:
        with open(f"{proc}/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = parse_mountinfo(f.read())
    except (OSError, MountInfoError):
        return None
    return next((m for m in lines if m.dev == dev), None)


def _containing_mount(path: str, by_mp: dict[str, MountInfoLine]) -> MountInfoLine | None:
    """The mount holding `path`: longest mountpoint prefix, walking up O(depth)."""
    p = os.path.normpath(path)
    while True:
        m = by_mp.get(p)
        if m is not None:
            return m
        if p == "/":
            return None
        p = os.path.dirname(p)


def _namespaces(proc: str) -> Iterator[tuple[int, int]]:
    """(ns inode, pid) for one pid per readable mount namespace, lowest pid first."""
    seen: set[int] = set()
    try:
        pids = sorted(int(d) for d in os.listdir(proc) if d.isdigit())
    except OSError:
        return
    for pid in pids:
        try:
            ino = os.stat(f"{proc}/{pid}/ns/mnt").st_ino
        except OSError:
            continue                    # gone, or a process we may not inspect
        if ino not in seen:
            seen.add(ino)
            yield ino, pid


def _self_ns(proc: str) -> int | None:
    try:
        return os.stat(f"{proc}/self/ns/mnt").st_ino
    except OSError:
        return None


def _host_ns(proc: str) -> int | None:
    # pid 1's namespace is the host's; in sandboxes pid 1 may be unreadable, then ours
    for who in ("1", "self"):
        try:
            return os.stat(f"{proc}/{who}/ns/mnt").st_ino
        except OSError:
            pass
    return None


def _ino(path: str | None, prefix: str) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(prefix + path).st_ino
    except OSError:
        return None


@dataclass
class _Candidate:
    line: MountInfoLine
    ns: int
    pid: int
    by_mp: dict[str, MountInfoLine]


def _build(c: _Candidate, mountpoints: tuple[str, ...], proc: str,
           self_ns: int | None, cache: dict | None) -> Overlay:
    line = c.line
    ck = (line.dev, c.ns, line.mount_id, line.super_options)
    if cache is not None and ck in cache:
        ov = cache[ck]
        return ov if ov.mountpoints == mountpoints else _replace_mps(ov, mountpoints)
    opts = parse_overlay_options(line.super_options)
    upper, work = opts["upperdir"], opts["workdir"]
    host = _containing_mount(upper, c.by_mp) if upper else None
    # our own namespace: stat directly; otherwise go through a member process's root
    prefix = "" if c.ns == self_ns else f"{proc}/{c.pid}/root"
    flags = set(opts["flags"])
    if "ro" in line.mount_options.split(","):
        flags.add("ro")
    ov = Overlay(
        mountpoint=line.mountpoint, mnt_ns=c.ns, mount_id=line.mount_id,
        dev=line.dev, upperdir=upper, workdir=work, lowerdirs=opts["lowerdirs"],
        upper_dev=host.dev if host else None,
        upper_fstype=host.fstype if host else None,
        upper_mountpoint=host.mountpoint if host else None,
        upper_source=host.source if host else None,
        upper_ino=_ino(upper, prefix), work_ino=_ino(work, prefix),
        options=tuple(f for f in _FLAG_ORDER if f in flags),
        pid=c.pid, mountpoints=mountpoints,
    )
    if cache is not None:
        cache[ck] = ov
    return ov


def _replace_mps(ov: Overlay, mps: tuple[str, ...]) -> Overlay:
    return replace(ov, mountpoints=mps)


def _discover(proc: str, cache: dict | None, known: dict | None = None,
              keep: dict | None = None) -> list[Overlay]:
    host_ns, self_ns = _host_ns(proc), _self_ns(proc)
    best: dict[str, _Candidate] = {}
    mps: dict[str, list[str]] = {}
    for ns, pid in _namespaces(proc):
        try:
            with open(f"{proc}/{pid}/mountinfo", encoding="utf-8",
                      errors="surrogateescape") as f:
                text = f.read()
            lines = parse_mountinfo(text, known, keep)
        except (OSError, MountInfoError):
            continue                    # vanished mid-scan or unreadable
        by_mp = {m.mountpoint: m for m in lines}   # later mounts shadow earlier
        for m in lines:
            if m.fstype != "overlay":
                continue
            mps.setdefault(m.dev, []).append(m.mountpoint)
            cur = best.get(m.dev)
            cand = _Candidate(m, ns, pid, by_mp)
            if cur is None or _better(cand, cur, host_ns):
                best[m.dev] = cand
    out = []
    for dev, cand in best.items():
        out.append(_build(cand, tuple(dict.fromkeys(mps[dev])), proc, self_ns, cache))
    return out


def _better(new: _Candidate, cur: _Candidate, host_ns: int | None) -> bool:
    """Prefer the host namespace, then a mount of the overlay's root over a bind of a subdir."""
    if (new.ns == host_ns) != (cur.ns == host_ns):
        return new.ns == host_ns
    if new.ns != cur.ns:
        return False                    # first namespace seen (lowest pid) wins
    return new.line.root == "/" and cur.line.root != "/"


def _norm(p: str) -> set[str]:
    return {os.path.normpath(os.path.abspath(p)), os.path.realpath(p)}


def filter_only(overlays: list[Overlay], only: Iterable[str],
                strict: bool = True) -> list[Overlay]:
    """Keep overlays mounted (in any namespace) at one of `only`.

    With strict, a path matching no overlay raises UnknownOverlayError.
    """
    keep: dict[str, Overlay] = {}
    index: dict[str, list[Overlay]] = {}
    for ov in overlays:
        for mp in ov.mountpoints or (ov.mountpoint,):
            index.setdefault(os.path.normpath(mp), []).append(ov)
    for path in only:
        hits = [ov for n in _norm(path) for ov in index.get(n, [])]
        if not hits and strict:
            raise UnknownOverlayError(f"{path}: not an overlay mount")
        for ov in hits:
            keep[ov.key] = ov
    return [ov for ov in overlays if ov.key in keep]


def discover(proc: str = "/proc", only: Iterable[str] | None = None) -> list[Overlay]:
    """All overlay mounts in all mount namespaces, one per superblock.

    The entry seen from the host's namespace (pid 1, or ours if pid 1 is not
    readable) is preferred. An overlay whose upperdir/workdir was deleted or
    cannot be stat'ed is still returned, with upper_ino/work_ino None.
    `only` restricts to overlays mounted at those paths (in any namespace);
    an argument matching none raises UnknownOverlayError.
    """
    ovs = _discover(proc, None)
    return filter_only(ovs, only) if only is not None else ovs


class MountWatcher:
    """Tracks overlays across refreshes; unchanged mounts are not re-stat'ed.

    With `only`, the first refresh validates the paths (UnknownOverlayError);
    later ones just report a watched overlay as removed once it is unmounted.
    An overlay whose details changed (e.g. now seen from the host namespace)
    is reported as removed (old) and added (new).
    """

    def __init__(self, proc: str = "/proc", only: Iterable[str] | None = None) -> None:
        self._proc = proc
        self._only = list(only) if only is not None else None
        self._current: dict[str, Overlay] = {}
        self._cache: dict = {}
        self._lines: dict = {}          # mountinfo line -> its parse, from the last refresh
        self._validated = False

    @property
    def current(self) -> dict[str, Overlay]:
        return dict(self._current)

    def refresh(self) -> tuple[list[Overlay], list[Overlay]]:
        keep: dict = {}
        ovs = _discover(self._proc, self._cache, self._lines, keep)
        self._lines = keep              # the lines still there, parsed
        if self._only is not None:
            ovs = filter_only(ovs, self._only, strict=not self._validated)
            self._validated = True
        new = {ov.key: ov for ov in ovs}
        # forget cached entries for mounts that are gone, so the cache stays bounded
        live = {(ov.dev, ov.mnt_ns, ov.mount_id) for ov in ovs}
        self._cache = {k: v for k, v in self._cache.items() if k[:3] in live}
        added = [ov for k, ov in new.items() if self._current.get(k) != ov]
        removed = [ov for k, ov in self._current.items() if new.get(k) != ov]
        self._current = new
        return added, removed
