"""Live: rootless Podman. A non-root user runs a container whose kernel
overlay is mounted inside that user's user and mount namespaces, with
its upper directory in the user's home (storage driver "overlay", no
fuse-overlayfs). ovltrace, as root, sees it, names it and counts its
bytes exactly; with the deployment's least capabilities it does too, and
without CAP_DAC_READ_SEARCH (the user's storage is 0700) it can neither
name it nor count it."""
from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import BUSYBOX_IMAGE, audit_json, busybox_docker_archive
from test_privileges_live import setpriv
from test_deploy import unit_caps

pytestmark = pytest.mark.live

USER = "ovtrootless"
NAME = "ovt-rootless"
IMAGE = BUSYBOX_IMAGE


def as_user(cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(["su", "-", USER, "-c", cmd], capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode:
        pytest.fail(f"as {USER}: {cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def rootless():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    # the kernel's overlay in the user namespace, not fuse-overlayfs or vfs
    as_user("mkdir -p ~/.config/containers && "
            "printf '[storage]\\ndriver = \"overlay\"\\n' > ~/.config/containers/storage.conf")
    if as_user(f"podman image exists {IMAGE}", check=False).returncode:
        # a directory the user can read (pytest's own are root's, 0700)
        shared = Path(tempfile.mkdtemp(prefix="ovt-rootless-"))
        shared.chmod(0o755)
        tar = busybox_docker_archive(shared)
        tar.chmod(0o644)
        as_user(f"podman load -q -i {tar}")
        shutil.rmtree(shared)
    as_user(f"podman rm -f -t 0 {NAME}", check=False)
    as_user(f"podman run -d --name {NAME} --network none {IMAGE} sleep 600")
    try:
        driver = as_user("podman info --format '{{.Store.GraphDriverName}}'").stdout.split()
        assert driver[-1] == "overlay", driver
        yield NAME
    finally:
        as_user(f"podman rm -f -t 0 {NAME}", check=False)


def write(count: int):
    def during():
        as_user(f"podman exec {NAME} dd if=/dev/zero of=/r.dat bs=65536 count={count}")
    return during


def row(rep: dict) -> list[dict]:
    home = pwd.getpwnam(USER).pw_dir
    return [o for o in rep["overlays"] if (o.get("upperdir") or "").startswith(home + "/")]


def test_rootless_podman_named_with_exact_bytes(rootless):
    rows = row(audit_json([], write(8)))
    assert len(rows) == 1, rows
    assert rows[0]["container"] == {"runtime": "podman", "id": rows[0]["container"]["id"],
                                    "name": NAME}
    assert rows[0]["bytes_dirtied"] == 8 * 65536
    assert rows[0]["upperdir"].startswith(pwd.getpwnam(USER).pw_dir
                                          + "/.local/share/containers/storage/overlay/")


def test_least_capabilities_name_it_and_dac_read_search_is_why(rootless):
    caps = unit_caps("CapabilityBoundingSet")
    rows = row(audit_json([], write(4), prefix=setpriv(caps)))
    assert [(r["container"] or {}).get("name") for r in rows] == [NAME]
    assert rows[0]["bytes_dirtied"] == 4 * 65536
    rows = row(audit_json([], write(2), prefix=setpriv(caps - {"CAP_DAC_READ_SEARCH"})))
    # still listed (the mount table is the kernel's), but neither named nor
    # counted: its upperdir cannot be looked up, and the upperdir's inode is
    # what the kernel side attributes by (docs/deploy.md, Privileges)
    assert len(rows) == 1 and rows[0]["container"] is None, rows
    assert rows[0]["bytes_dirtied"] == 0
