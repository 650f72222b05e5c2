"""Live: real Docker and Podman containers are found and named from disk state.

Needs root and the Debian packages docker.io, podman, runc, busybox-static
(installed on the dev machines and by CI). Never skips: a broken runtime is a
failure with the daemon log attached.

Notes from the dev machine (Debian 12 userland, Linux 6.18, sandboxed):
- dockerd is not running on a fresh machine and there is no systemd; it starts
  fine in the background with --iptables=false --bridge=none
  --ip-forward=false (no netfilter/bridge in the sandbox), so we start it
  ourselves and stop it again afterwards.
- /usr/local/bin/docker (a 28.x client) shadows Debian's /usr/bin/docker;
  it negotiates API 1.41 with the 20.10 daemon, but we prefer the Debian client.
- crun rejects the hybrid cgroup v1/v2 layout, so podman runs with runc, and
  the --ulimit flags avoid raising limits the sandbox forbids.
- `sleep` as pid 1 ignores SIGTERM, so `podman rm -f` would wait 10 s:
  use `-t 0`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import BUSYBOX_IMAGE, busybox_rootfs_tar, running_daemon
from ovltrace.containers import Resolver, cgroup_of_pid
from ovltrace.mounts import discover

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
IMAGE = "ovt-bb:test"
PODMAN_IMAGE = BUSYBOX_IMAGE
WEB, DB = "ovt-web", "ovt-db"


def run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        pytest.fail(f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _docker_ok() -> bool:
    return run(DOCKER, "info", check=False, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def dockerd():
    """Use a running dockerd, else start one for this module and stop it after."""
    with running_daemon(["dockerd", "--iptables=false", "--bridge=none", "--ip-forward=false"],
                        _docker_ok):
        yield


@pytest.fixture(scope="module")
def rootfs_tar():
    tmp = Path(tempfile.mkdtemp(prefix="ovt-bb-"))
    yield busybox_rootfs_tar(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def containers(dockerd, rootfs_tar):
    run(DOCKER, "rm", "-f", WEB, check=False)
    run("podman", "rm", "-f", "-t", "0", DB, check=False)
    try:
        run(DOCKER, "import", str(rootfs_tar), IMAGE)
        run("podman", "import", str(rootfs_tar), PODMAN_IMAGE)
        web = run(DOCKER, "run", "-d", "--name", WEB, "--network", "none",
                  IMAGE, "sleep", "300").stdout.strip()
        db = run("podman", "--runtime", "runc", "run", "-d", "--name", DB,
                 "--network", "none", "--ulimit", "nofile=1024:1024",
                 "--ulimit", "nproc=1024:1024", PODMAN_IMAGE, "sleep", "300").stdout.strip()
        yield {"docker": web, "podman": db}
    finally:
        run(DOCKER, "rm", "-f", WEB, check=False)
        run("podman", "rm", "-f", "-t", "0", DB, check=False)


def _pid(cli: str, name: str) -> int:
    return int(run(cli, "inspect", "-f", "{{.State.Pid}}", name).stdout.strip())


@pytest.mark.live
def test_live_docker_and_podman_named(containers):
    resolver = Resolver()
    named = {}
    for ov in discover():
        c = resolver.for_overlay(ov)
        if c is not None:
            named[c.name] = (c, ov)
    assert WEB in named, f"docker container not resolved; got {sorted(named)}"
    assert DB in named, f"podman container not resolved; got {sorted(named)}"
    web, web_ov = named[WEB]
    db, db_ov = named[DB]
    assert (web.runtime, web.id) == ("docker", containers["docker"])
    assert (db.runtime, db.id) == ("podman", containers["podman"])
    for ov in (web_ov, db_ov):
        assert ov.upperdir and ov.upper_ino == os.stat(ov.upperdir).st_ino
        assert ov.upper_dev is not None
    assert web_ov.upperdir.startswith("/var/lib/docker/overlay2/")
    assert db_ov.upperdir.startswith("/var/lib/containers/storage/overlay/")
    # the same containers through their task cgroups
    assert resolver.for_cgroup(cgroup_of_pid(_pid(DOCKER, WEB))) == web
    assert resolver.for_cgroup(cgroup_of_pid(_pid("podman", DB))) == db


@pytest.mark.live
def test_live_removed_container_forgotten(containers):
    resolver = Resolver()
    before = {ov.key: ov for ov in discover()}
    web_keys = [k for k, ov in before.items()
                if (c := resolver.for_overlay(ov)) and c.name == WEB]
    assert len(web_keys) == 1
    run(DOCKER, "rm", "-f", WEB)
    resolver.refresh()
    assert web_keys[0] not in {ov.key for ov in discover()}
    assert resolver.for_overlay(before[web_keys[0]]) is None
    assert resolver.for_id(containers["docker"]) is None


@pytest.mark.live
def test_live_audit_names_real_containers(containers):
    """End to end: ovltrace audit attributes real containers' writes to
    them by name, and names the container whose sync flushed the others."""
    import json
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import audit_json

    def work():
        run(DOCKER, "exec", WEB, "dd", "if=/dev/zero", "of=/web.dat", "bs=65536", "count=16")
        run("podman", "exec", DB, "sh", "-c", "dd if=/dev/zero of=/db.dat bs=65536 count=8 && sync")

    rep = audit_json([], work)
    by_name = {o["container"]["name"]: o for o in rep["overlays"] if o["container"]}
    assert by_name[WEB]["container"]["runtime"] == "docker"
    assert by_name[WEB]["bytes_dirtied"] == 16 * 65536
    assert by_name[DB]["bytes_dirtied"] == 8 * 65536
    syncs = [f for f in rep["flushes"] if f["kind"] == "sync"]
    mine = [f for f in syncs if (f["container"] or {}).get("name") == DB]
    assert mine, json.dumps(syncs, indent=1)[:2000]
    victims = {v["overlay"] for f in mine for v in f["victims"]}
    assert by_name[WEB]["mountpoint"] in victims
