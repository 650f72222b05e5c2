"""Text shared by every output: sizes, durations, errno and short names,
and the duration syntax the command line accepts."""
from __future__ import annotations

import errno as _errno
import re

from .untrusted import cut, visible

# path components that say nothing about which container it is
_GENERIC = {"merged", "rootfs", "diff", "fs", "mnt", "root", "upper", "overlay", "rootfs.mnt"}


def short_name(mountpoint: str, width: int = 20) -> str:
    """The distinctive part of a mountpoint: /srv/x/webshop/merged -> webshop;
    /var/lib/docker/overlay2/3f2a...e1/merged -> 3f2a...e1 shortened."""
    parts = [p for p in mountpoint.split("/") if p]
    while len(parts) > 1 and parts[-1] in _GENERIC:
        parts.pop()
    name = parts[-1] if parts else "/"
    if len(name) > width:
        keep = width - 1
        name = name[: (keep + 1) // 2] + "~" + name[-(keep // 2):] if keep > 1 else name[:width]
    return name


def display_name(meta, width: int = 20) -> str:
    """What people call an overlay, in `width` columns, terminal-safe (a
    container chooses its name and mountpoint: see untrusted.py)."""
    if meta is None:
        return "-"
    if meta.kind == "upperfs":
        return f"[{meta.upper_dev} rest]"[:width]
    if meta.container:
        return cut(visible(meta.label), width)
    return short_name(visible(meta.mountpoint), width)


def human_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.1f}{unit}" if abs(n) < 100 else f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.0f}T"


def human_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def errno_name(e: int) -> str:
    """5 -> 'EIO' (the sign is ignored: errors travel as -errno too)."""
    if e == 0:
        return "unknown"
    return _errno.errorcode.get(abs(e), str(abs(e)))


DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', '1h', '7d', '3' (seconds) -> seconds; ValueError
    with a one-line reason otherwise."""
    m = DURATION_RE.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 10s, 500ms, 2m, 1h)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400,
                                  None: 1}[m.group(2)]
    if value <= 0:
        raise ValueError("the duration must be more than zero")
    return value
