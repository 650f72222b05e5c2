"""Container starts and stops (analysis.lifecycle) and their findings,
on a hand-built model: every figure has an exact truth."""
from __future__ import annotations

from ovltrace import analysis
from ovltrace.containers import helper_of
from ovltrace.model import Container, Flush, Model, OverlayMeta, Victim
from ovltrace.mounts import Overlay
from ovltrace.report.build import build_report

MiB = 1 << 20
DOCKER_NEW = Container("docker", "a" * 64, "newbie")
HOG = Container("docker", "b" * 64, "hog")
CTRD = Container("containerd", "c" * 64, "web")
POD = Container("podman", "d" * 64, "job")


def model() -> Model:
    m = Model()
    m.add(OverlayMeta("fs", "upperfs", "/var/lib", "8:1", fstype="ext4"))
    m.add(OverlayMeta("init", "overlay", "/var/lib/docker/overlay2/L-init/merged", "8:1",
                      container=DOCKER_NEW, helper="init"))
    m.add(OverlayMeta("new", "overlay", "/var/lib/docker/overlay2/L/merged", "8:1",
                      container=DOCKER_NEW))
    m.add(OverlayMeta("hog", "overlay", "/var/lib/docker/overlay2/H/merged", "8:1", container=HOG))
    m.add(OverlayMeta("web", "overlay", "/run/c/web/rootfs", "8:1", container=CTRD))
    m.add(OverlayMeta("job", "overlay", "/var/lib/containers/storage/overlay/J/merged", "8:1",
                      container=POD, options=("volatile",)))
    m.add(OverlayMeta("anon", "overlay", "/mnt/x", "8:1"))
    # creating newbie: 0.4 s, 3 MiB of hog's, 1 MiB of its own init files
    m.flush(Flush("umount", 1, 1, "dockerd", 1.0, 0.4, 0, "init", "8:1",
                  [Victim("hog", 3 * MiB), Victim("init", 1 * MiB)]))
    # stopping web (containerd): 1.0 s, all hog's and 1 MiB of the rest of the fs
    m.flush(Flush("umount", 2, 2, "containerd", 2.0, 1.0, 0, "web", "8:1",
                  [Victim("hog", 3 * MiB), Victim("fs", 1 * MiB)]))
    m.flush(Flush("umount", 3, 3, "podman", 3.0, 0.001, 0, "job", "8:1", []))   # volatile
    m.flush(Flush("umount", 4, 4, "umount", 4.0, 0.2, 0, "anon", "8:1", [Victim("hog", 1)]))
    m.flush(Flush("umount", 5, 5, "dockerd", 5.0, 0.1, -22, "new", "8:1", []))  # failed
    m.flush(Flush("syncfs", 6, 6, "app", 6.0, 0.3, 0, "new", "8:1", [Victim("hog", MiB)]))
    return m


def test_lifecycle_events_and_neighbours():
    snap = model().snapshot()
    lc = analysis.lifecycle(snap.flushes, snap.metas)
    got = [(e.key, e.runtime, e.step, e.volatile, e.own_bytes, e.others_bytes,
            round(e.others_seconds, 9)) for e in lc.events]
    assert got == [("init", "docker", "create", False, MiB, 3 * MiB, 0.3),
                   ("web", "containerd", "stop", False, 0, 3 * MiB, 0.75),
                   ("job", "podman", "stop", True, 0, 0, 0.0)]
    assert round(lc.stall_seconds, 9) == 1.401 and round(lc.others_seconds, 9) == 1.05
    assert [(n.key, n.bytes, round(n.seconds, 9), n.events) for n in lc.neighbours] == \
        [("hog", 6 * MiB, 1.05, 2)]
    assert lc.counts() == {("docker", "create"): 1, ("containerd", "stop"): 1,
                           ("podman", "stop"): 1}


def test_one_finding_per_neighbour_with_each_runtimes_switch():
    rep = build_report(model().snapshot())
    assert [n["name"] for n in rep["lifecycle"]["neighbours"]] == ["hog"]
    paid = [f for f in rep["findings"] if f["id"] == "lifecycle-paid-for-neighbour"]
    assert len(paid) == 1                                    # one per cause, not per flush
    f = paid[0]
    assert f["evidence"]["events"] == 2 and f["evidence"]["bytes"] == 6 * MiB
    assert f["severity"] == "warning"                        # over a second in all
    assert "newbie/init" in f["containers"] and "web" in f["containers"] and "hog" in f["containers"]
    assert "moby/moby PR 50151" in f["advice"]
    assert 'mount_options = ["volatile"]' in f["advice"]
    assert "mountopt" not in f["advice"]                     # no podman start paid for hog
    vol = [f for f in rep["findings"] if f["id"] == "lifecycle-volatile"]
    assert len(vol) == 1 and vol[0]["containers"] == ["job"]
    # the unmount no runtime owns stays a finding of its own, once
    other = [f for f in rep["findings"] if f["id"] == "umount-flushed-others"]
    assert len(other) == 1 and other[0]["containers"] == ["x"]


def _ov(upper: str | None, mp: str) -> Overlay:
    return Overlay(mountpoint=mp, mnt_ns=0, mount_id=0, dev="0:1", upperdir=upper,
                   workdir=None, lowerdirs=(), upper_dev="8:1", upper_fstype="ext4",
                   upper_ino=1, work_ino=2, options=(), pid=1)


def test_helper_mounts_are_known_from_their_paths():
    assert helper_of(_ov("/var/lib/docker/overlay2/abc-init/diff",
                         "/var/lib/docker/overlay2/abc-init/merged")) == "init"
    assert helper_of(_ov("/data/docker/overlay2/abc-init/diff", "/x")) == "init"
    assert helper_of(_ov("/var/lib/docker/overlay2/abc/diff", "/x")) is None
    assert helper_of(_ov(None, "/var/lib/containerd/tmpmounts/containerd-mount123")) == "unpack"
    assert helper_of(_ov("/srv/init/diff", "/srv/merged")) is None
