"""The image (deploy/Containerfile, built by `make image`'s script) run the
way deploy/daemonset.yaml runs it: the same hostPID, capabilities (drop
ALL, add the few), read-only root, seccomp, and hostPath volumes, read
from the manifest itself, under podman. Its exporter must report exactly
what sandbox overlays and a real Podman container on the host wrote, by
container name; with one capability fewer it must say which is missing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import (BUSYBOX_IMAGE, ROOT, busybox_docker_archive, free_port, our_bpf_programs,
                      start_exporter, write_file)

pytestmark = pytest.mark.live

MiB = 1 << 20
TAG = "localhost/ovltrace:latest"
WRITER = "ovt-img-writer"
# this machine's podman: crun rejects its cgroup layout, and raising
# rlimits is forbidden in the sandbox (tests/test_containers_live.py)
PODMAN = ["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024",
          "--ulimit", "nproc=1024:1024"]


def run(*cmd: str, timeout: float = 300) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def image():
    # always from this tree (the apt layer is cached: seconds after the first)
    run(str(ROOT / "deploy" / "build-image"), timeout=900)
    return TAG


def daemonset_container() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def podman_args(drop: str | None = None) -> tuple[list[str], list[str]]:
    """podman run's options for the DaemonSet's pod (minus capability
    `drop`), and the container's args."""
    pod, c = daemonset_container()
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    opts = ["--cap-drop", "ALL"]
    for cap in sc["capabilities"]["add"]:
        if cap != drop:
            opts += ["--cap-add", cap]
    if pod.get("hostPID"):
        opts += ["--pid", "host"]
    if sc.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    if sc.get("seccompProfile", {}).get("type") == "Unconfined":
        opts += ["--security-opt", "seccomp=unconfined"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        if "emptyDir" in v:
            opts += ["--tmpfs", m["mountPath"]]
            continue
        host = v["hostPath"]["path"]
        if v["hostPath"].get("type") == "DirectoryOrCreate":
            os.makedirs(host, exist_ok=True)
        opts += ["-v", f"{host}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    # the pod's network is the node's here, to be reached from the test
    return opts + ["--network", "host"], list(c["args"])


@pytest.fixture
def writer():
    """A real Podman container on the host, kept for the workload."""
    subprocess.run(["podman", "rm", "-f", "-t", "0", WRITER], capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="ovt-bb-"))
    try:
        busybox_docker_archive(tmp)         # the image in root's podman
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run(*PODMAN[:2], "-d", *PODMAN[3:], "--name", WRITER, "--network", "none",
        BUSYBOX_IMAGE, "sleep", "600")
    try:
        yield WRITER
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", WRITER], capture_output=True)


def metrics(port: int) -> dict[tuple[str, str], float]:
    """ovltrace_overlay_dirtied_bytes_total by (mountpoint, container)."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "ovltrace_overlay_dirtied_bytes_total":
                out[(s.labels["mountpoint"], s.labels["container"], s.labels["runtime"])] = s.value
    return out


def test_the_daemonset_pod_reports_exact_bytes_by_name(image, sandbox, writer):
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    opts, args = podman_args()
    port = free_port()
    args = [x if not x.startswith("--web.listen-address") else
            f"--web.listen-address=127.0.0.1:{port}" for x in args]
    name = f"ovltrace-exporter-{port}"
    proc, lines, serving = start_exporter([*PODMAN, "--name", name, *opts, image, *args])
    try:
        assert serving and proc.poll() is None, "\n".join(lines)
        write_file(f"{a.mountpoint}/big", 4 * MiB)
        for i in range(10):
            write_file(f"{b.mountpoint}/small{i}", 4096)
        run("podman", "exec", writer, "dd", "if=/dev/zero", "of=/w.dat", "bs=65536", "count=16")
        want_sandbox = {a.mountpoint: 4 * MiB, b.mountpoint: 40960}
        deadline, got = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            got = metrics(port)
            mine = {mp: v for (mp, _c, _r), v in got.items() if mp in want_sandbox}
            named = [(c, r, v) for (_mp, c, r), v in got.items() if c == writer]
            if mine == want_sandbox and named == [(writer, "podman", 16 * 65536)]:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the pod's exporter: {json.dumps({str(k): v for k, v in got.items()})}"
                        f"\n{chr(10).join(lines)}")
    finally:
        subprocess.run(["podman", "stop", "-t", "30", name], capture_output=True, timeout=60)
        proc.wait(60)
    # SIGTERM from podman: a clean exit, nothing left in the kernel
    assert proc.returncode == 0, "\n".join(lines)
    assert not any("Traceback" in l for l in lines), "\n".join(lines)
    assert our_bpf_programs() == []


@pytest.mark.parametrize("cap", ["BPF", "PERFMON"])
def test_one_capability_fewer_is_named(image, cap):
    opts, _ = podman_args(drop=cap)
    r = subprocess.run([*PODMAN, *opts, image, "audit", "-d", "1s"],
                       capture_output=True, text=True, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert err[0].startswith(f"ovltrace: error: tracing needs CAP_{cap} (missing;"), err


def test_without_sys_ptrace_the_host_is_unseen_and_doctor_says_why(image, sandbox):
    a = sandbox.add_overlay("a")
    opts, _ = podman_args(drop="SYS_PTRACE")
    r = subprocess.run([*PODMAN, *opts, image, "audit", "-d", "1s", "--format", "json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the host's mount namespace is behind /proc/1/root: not ours to read
    assert a.mountpoint not in {o["mountpoint"] for o in json.loads(r.stdout)["overlays"]}
    d = subprocess.run([*PODMAN, *opts, image, "doctor"], capture_output=True, text=True,
                       timeout=120)
    assert "caps: processes    MISSING CAP_SYS_PTRACE: other mount namespaces unseen" \
        in d.stdout, d.stdout
