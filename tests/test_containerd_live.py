"""Live: real containerd containers (Debian's containerd and ctr, an image
imported from a local tarball) named from their task bundles: a plain one
by its containerd namespace and ID, one with nerdctl's name annotation,
and one carrying the annotations and cgroup layout Kubernetes' CRI plugin
gives a pod's container, named as that pod's container. Bytes exact.

A real kubelet is not run here (no cluster tooling on these machines):
what CRI writes is reproduced with ctr on a real container, not a fixture.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BUSYBOX_IMAGE, audit_json, busybox_docker_archive, running_daemon
from ovltrace.containers import Resolver, cgroup_of_pid

pytestmark = pytest.mark.live

NS = "ovltrace-test"
IMAGE = BUSYBOX_IMAGE
CRI_ID = "c0ffee" + "0" * 52 + "123456"          # CRI ids are 64 hex digits
POD_UID = "5d1e2f3a-0000-4000-8000-00000000abcd"


def ctr(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(["ctr", "-n", NS, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        pytest.fail(f"ctr {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _up() -> bool:
    return subprocess.run(["ctr", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def containerd():
    """A running containerd, else one started for this module."""
    with running_daemon(["containerd"], _up):
        yield


@pytest.fixture(scope="module")
def image(containerd):
    """busybox as an image, imported from a local docker-archive tarball."""
    tmp = Path(tempfile.mkdtemp(prefix="ovt-ctr-img-"))
    try:
        # podman writes the docker-archive; ctr imports it (no registry)
        ctr("images", "import", str(busybox_docker_archive(tmp)))
        yield IMAGE
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(cid: str) -> None:
    ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    for _ in range(50):
        if ctr("task", "delete", cid, check=False).returncode != 0 and \
                cid not in ctr("task", "ls", "-q", check=False).stdout.split():
            break
        time.sleep(0.1)
    ctr("containers", "delete", cid, check=False)
    ctr("snapshots", "rm", cid, check=False)


@pytest.fixture
def containers(image):
    made = {"plain": "ovt-plain", "nerdctl": "ovt-nerd", "cri": CRI_ID}
    for cid in made.values():
        _remove(cid)
    try:
        ctr("run", "-d", image, made["plain"], "sleep", "600")
        ctr("run", "-d", "--annotation", "nerdctl/name=web-1", image, made["nerdctl"],
            "sleep", "600")
        # what the CRI plugin writes into a pod container's spec, and the
        # cgroup the kubelet's cgroupfs driver gives it
        ctr("run", "-d",
            "--annotation", "io.kubernetes.cri.container-type=container",
            "--annotation", "io.kubernetes.cri.container-name=db",
            "--annotation", "io.kubernetes.cri.sandbox-name=shop-7d9f",
            "--annotation", "io.kubernetes.cri.sandbox-namespace=prod",
            "--cgroup", f"/kubepods/besteffort/pod{POD_UID}/{CRI_ID}",
            image, made["cri"], "sleep", "600")
        yield made
    finally:
        for cid in made.values():
            _remove(cid)


def _pid(cid: str) -> int:
    for line in ctr("task", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return int(f[1])
    raise AssertionError(f"no task {cid}")


def test_containerd_containers_named(containers):
    def work():
        for i, cid in enumerate(containers.values(), 1):
            ctr("task", "exec", "--exec-id", f"w{i}", cid, "dd", "if=/dev/zero",
                f"of=/f{i}.dat", "bs=65536", f"count={4 * i}")

    rep = audit_json([], work)
    rows = {o["container"]["id"]: o for o in rep["overlays"]
            if o["container"] and o["container"]["runtime"] == "containerd"}
    assert {cid: rows[cid]["container"] for cid in containers.values()} == {
        "ovt-plain": {"runtime": "containerd", "id": "ovt-plain", "name": "ovt-plain",
                      "namespace": NS},
        "ovt-nerd": {"runtime": "containerd", "id": "ovt-nerd", "name": "web-1", "namespace": NS},
        CRI_ID: {"runtime": "containerd", "id": CRI_ID, "name": "db", "pod": "shop-7d9f",
                 "namespace": "prod"}}
    for i, cid in enumerate(containers.values(), 1):
        assert rows[cid]["bytes_dirtied"] == 4 * i * 65536, (cid, rows[cid])
        assert rows[cid]["upperdir"].startswith(
            "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/")
    # and through the task's cgroup (Kubernetes' layout for the CRI one)
    resolver = Resolver()
    cg = cgroup_of_pid(_pid(CRI_ID))
    assert f"pod{POD_UID}/{CRI_ID}" in cg, cg
    assert resolver.for_cgroup(cg).name == "db"
    assert os.path.exists(f"/run/containerd/io.containerd.runtime.v2.task/{NS}/{CRI_ID}/config.json")
