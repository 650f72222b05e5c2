"""Formatting shared by the views: sizes, durations, short names."""
from __future__ import annotations

import os

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
    if meta is None:
        return "-"
    if meta.kind == "upperfs":
        return f"[{meta.upper_dev} rest]"[:width]
    if meta.container:
        n = meta.container.name
        return n if len(n) <= width else n[: width - 1] + "~"
    return short_name(meta.mountpoint, width)


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
    import errno as _errno
    return _errno.errorcode.get(e, str(e))


def term_width(default: int = 80) -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return default
