"""Tests for ovltrace.containers against fixture runtime-state trees."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ovltrace.containers import (Container, Resolver, cgroup_of_pid,
                                 container_id_from_cgroup)
from ovltrace.mounts import Overlay

ROOTS = Path(__file__).parent / "fixtures" / "roots"
D, D2, P, C, K, S = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64, "f" * 64)
PL, CL = "1" * 64, "2" * 64


def ovl(upper: str | None, mountpoint: str = "/somewhere/merged") -> Overlay:
    return Overlay(mountpoint, 1, 1, "0:1", upper, None, (), None, None, None, None, (), 1)


@pytest.fixture
def default():
    return Resolver(str(ROOTS / "default"))


def test_docker(default):
    c = default.for_overlay(ovl(f"/var/lib/docker/overlay2/m1{'0' * 62}/diff"))
    assert c == Container("docker", D, "web")
    # by mountpoint when the upper dir is not known
    assert default.for_overlay(ovl(None, f"/var/lib/docker/overlay2/m1{'0' * 62}/merged")) == c
    # a container without config.v2.json yet is named by its short id
    c2 = default.for_overlay(ovl(f"/var/lib/docker/overlay2/m2{'0' * 62}/diff/"))
    assert c2 == Container("docker", D2, D2[:12])


def test_podman(default):
    c = default.for_overlay(ovl(f"/var/lib/containers/storage/overlay/{PL}/diff"))
    assert c == Container("podman", P, "db")
    assert c.to_json() == {"runtime": "podman", "id": P, "name": "db"}


def test_crio_pod_and_namespace(default):
    c = default.for_overlay(ovl(f"/var/lib/containers/storage/overlay/{CL}/diff"))
    assert c == Container("cri-o", C, "nginx", "web-7d9f", "shop")
    assert c.to_json() == {"runtime": "cri-o", "id": C, "name": "nginx",
                           "pod": "web-7d9f", "namespace": "shop"}
    c = default.for_overlay(ovl(f"/var/lib/containers/storage/overlay/{'3' * 64}/diff"))
    assert c == Container("cri-o", S, "redis", "cache-0", "infra")


def test_containerd_cri_by_mountpoint(default):
    mp = f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{K}/rootfs"
    c = default.for_overlay(ovl("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs", mp))
    assert c == Container("containerd", K, "api", "api-5c6b", "prod")
    plain = default.for_overlay(ovl(None, "/run/containerd/io.containerd.runtime.v2.task/default/myctr/rootfs"))
    assert plain == Container("containerd", "myctr", "myctr", None, "default")


def test_moby_namespace_not_claimed_by_containerd(default):
    assert default.for_overlay(ovl(None, "/var/lib/docker/overlay2/x/merged")) is None
    assert default.for_id(D).runtime == "docker"


def test_unknown_overlay(default):
    assert default.for_overlay(ovl("/srv/other/upper", "/mnt/x")) is None


def test_alternative_roots():
    r = Resolver(str(ROOTS / "altroots"))
    assert r.for_overlay(ovl(f"/srv/docker/overlay2/m3{'0' * 62}/diff")) == Container("docker", D, "alt-web")
    assert r.for_overlay(ovl(f"/data/containers/overlay/{PL}/diff")) == Container("podman", P, "alt-db")
    rootless = f"/root/.local/share/containers/storage/overlay/{CL}/diff"
    assert r.for_overlay(ovl(rootless)) == Container("podman", C, "rootless-tmp")


def test_refresh_picks_up_changes_and_removals(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "default", root)
    r = Resolver(str(root))
    cj = root / "var/lib/containers/storage/overlay-containers/containers.json"
    entries = json.loads(cj.read_text())
    entries[0]["names"] = ["db-renamed"]
    cj.write_text(json.dumps(entries))
    st = cj.stat()
    os.utime(cj, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # coarse-mtime filesystems
    shutil.rmtree(root / "var/lib/docker/image/overlay2/layerdb/mounts" / D)
    r.refresh()
    assert r.for_overlay(ovl(f"/var/lib/containers/storage/overlay/{PL}/diff")).name == "db-renamed"
    assert r.for_overlay(ovl(f"/var/lib/docker/overlay2/m1{'0' * 62}/diff")) is None


def test_half_written_json_is_ignored(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "default", root)
    (root / "var/lib/containers/storage/overlay-containers/containers.json").write_text('[{"id": ')
    r = Resolver(str(root))
    assert r.for_overlay(ovl(f"/var/lib/containers/storage/overlay/{PL}/diff")) is None
    assert r.for_id(D).name == "web"


@pytest.mark.parametrize("path,expected", [
    (f"/docker/{D}", ("docker", D)),
    (f"/system.slice/docker-{D}.scope", ("docker", D)),
    (f"/system.slice/docker-{D}.scope/init.scope", ("docker", D)),
    (f"/libpod_parent/libpod-{P}", ("podman", P)),
    (f"/machine.slice/libpod-{P}.scope", ("podman", P)),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{P}.scope/container", ("podman", P)),
    (f"/machine.slice/libpod-conmon-{P}.scope", None),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{K}.scope",
     ("containerd", K)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice/crio-{C}.scope", ("cri-o", C)),
    (f"/kubepods.slice/kubepods-pod12.slice/crio-conmon-{C}.scope", None),
    (f"/kubepods/besteffort/pod0c5e3c48-1b2a-4f6c-9d38-3b0f1b7a6e11/{K}", ("containerd", K)),
    (f"/kubepods/pod0c5e/{K}", ("containerd", K)),
    (f"/some/where/{S}", ("unknown", S)),
    ("/", None),
    ("/system.slice/sshd.service", None),
    (f"/docker/{D[:12]}", None),
])
def test_container_id_from_cgroup(path, expected):
    assert container_id_from_cgroup(path) == expected


def test_for_cgroup(default):
    assert default.for_cgroup(f"/system.slice/docker-{D}.scope") == Container("docker", D, "web")
    # a bare kubepods id is resolved to its real runtime from disk
    assert default.for_cgroup(f"/kubepods/besteffort/pod1/{C}").runtime == "cri-o"
    assert default.for_cgroup(f"/docker/{'9' * 64}") == Container("docker", "9" * 64, "9" * 12)
    assert default.for_cgroup("/user.slice") is None


def _fake_cgroup(tmp_path: Path, text: str) -> str:
    d = tmp_path / "proc" / "7"
    d.mkdir(parents=True)
    (d / "cgroup").write_text(text)
    return str(tmp_path / "proc")


def test_cgroup_of_pid_v2(tmp_path):
    assert cgroup_of_pid(7, _fake_cgroup(tmp_path, f"0::/system.slice/docker-{D}.scope\n")) \
        == f"/system.slice/docker-{D}.scope"


def test_cgroup_of_pid_hybrid_falls_back_to_v1(tmp_path):
    text = f"9:name=systemd:/docker/{D}\n4:memory:/docker/{D}\n1:cpu:/\n0::/\n"
    assert cgroup_of_pid(7, _fake_cgroup(tmp_path, text)) == f"/docker/{D}"


def test_cgroup_of_pid_memory_only(tmp_path):
    text = f"4:memory:/docker/{D}\n1:cpu,cpuacct:/\n"
    assert cgroup_of_pid(7, _fake_cgroup(tmp_path, text)) == f"/docker/{D}"


def test_cgroup_of_pid_self():
    assert cgroup_of_pid(os.getpid()).startswith("/")
