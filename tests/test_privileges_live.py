"""Least privilege on this kernel, without an image: ovltrace run as uid 0
with exactly the systemd unit's capability set (setpriv drops the rest)
sees a real Podman container's bytes, its name, its sync, and its cgroup;
without CAP_SYS_PTRACE the cgroup accounting is what goes. The image run
as the DaemonSet runs it is tests/test_image_live.py."""
from __future__ import annotations

import subprocess

import pytest

from conftest import audit_json
from test_deploy import unit_caps
from test_image_live import writer  # noqa: F401  (the fixture)

pytestmark = pytest.mark.live


def setpriv(caps: set[str]) -> list[str]:
    keep = ",".join("+" + c.removeprefix("CAP_").lower() for c in sorted(caps))
    return ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{keep}", "--"]


def work(name):
    def during():
        subprocess.run(["podman", "exec", name, "sh", "-c",
                        "dd if=/dev/zero of=/p.dat bs=65536 count=8 2>/dev/null && sync"],
                       check=True, timeout=60)
    return during


def named_row(rep: dict, name: str) -> dict:
    rows = [o for o in rep["overlays"] if (o["container"] or {}).get("name") == name]
    assert len(rows) == 1, [o["container"] for o in rep["overlays"]]
    return rows[0]


def test_the_unit_capabilities_are_enough(writer):  # noqa: F811
    caps = unit_caps("CapabilityBoundingSet")
    rep = audit_json([], work(writer), prefix=setpriv(caps))
    row = named_row(rep, writer)
    assert row["bytes_dirtied"] == 8 * 65536 and row["container"]["runtime"] == "podman"
    syncs = [f for f in rep["flushes"] if f["kind"] == "sync"
             and (f["container"] or {}).get("name") == writer]
    assert len(syncs) == 1, rep["flushes"]
    acct = rep["cgroup_accounting"]
    assert acct["available"] and writer in {c["name"] for c in acct["containers"]}, acct


def test_without_sys_ptrace_no_cgroup_accounting(writer):  # noqa: F811
    caps = unit_caps("CapabilityBoundingSet") - {"CAP_SYS_PTRACE"}
    rep = audit_json([], work(writer), prefix=setpriv(caps))
    # still the host's own namespace: bytes and name stay ...
    assert named_row(rep, writer)["bytes_dirtied"] == 8 * 65536
    # ... but a container's processes' roots are not ours to read
    assert rep["cgroup_accounting"]["available"] is False
