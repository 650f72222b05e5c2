"""`ovltrace mounts`: the overlays discovery finds, with their containers."""
from __future__ import annotations

import json

import click
from tabulate import tabulate

from ..containers import Resolver
from ..errors import OvltraceError
from ..format import short_name
from ..mounts import UnknownOverlayError, discover
from ..untrusted import visible


def run_mounts(fmt: str, overlays: list[str]) -> None:
    try:
        found = discover(only=overlays or None)
    except UnknownOverlayError as e:
        raise OvltraceError(str(e)) from None
    resolver = Resolver()
    resolver.refresh()
    items = []
    for ov in found:
        d = ov.to_json()
        c = resolver.for_overlay(ov)
        d["container"] = c.to_json() if c else None
        items.append(d)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    rows = [[visible((d["container"] or {}).get("name") or short_name(d["mountpoint"], 16)),
             visible(d["mountpoint"] if len(d["mountpoint"]) <= 34
                     else "…" + d["mountpoint"][-33:]),
             f"{d['upper_dev'] or '-'} {d.get('upper_fstype') or ''}".strip(),
             ",".join(d["options"]) or "-"] for d in items]
    click.echo(tabulate(rows, headers=["NAME", "MOUNTPOINT", "UPPER FS", "OPTIONS"],
                        tablefmt="simple", disable_numparse=True) if rows else "no overlay mounts")
