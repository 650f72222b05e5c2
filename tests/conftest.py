"""Shared helpers for the live tests: they run the real `ovltrace` command
against real overlays on loop-mounted filesystems, as root."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OVLTRACE = [sys.executable, "-m", "ovltrace.cli"]
BANNER = "ovltrace: tracing"
# how long a start may take before the banner; tests/vm/guest raises it (a
# start compiles for 35-60 s under QEMU TCG, longer when the host is busy)
ATTACH_TIMEOUT = float(os.environ.get("OVLTRACE_TEST_ATTACH_TIMEOUT", "60"))


@pytest.fixture(autouse=True)
def _live_needs_root(request):
    """A live test without root fails, saying why: it never passes, skips
    or xfails silently with no BPF loaded."""
    if request.node.get_closest_marker("live") and os.geteuid() != 0:
        pytest.fail("live tests need root: they load BPF and mount filesystems "
                    "(sudo make test)", pytrace=False)


def log_hooks(out: str) -> None:
    """tests/vm/guest: append the mechanism each hook used in this report
    to $OVLTRACE_TEST_HOOKS_LOG (evidence per pass, judged by tests/vm/verdict)."""
    log = os.environ.get("OVLTRACE_TEST_HOOKS_LOG")
    if not log:
        return
    try:
        rep = json.loads(out)
    except ValueError:
        return
    if not isinstance(rep, dict) or "hooks" not in rep:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    hooks = {h["name"]: {"mechanism": h.get("mechanism"), "limit": h.get("limit")}
             for h in rep["hooks"]}
    with open(log, "a") as f:
        f.write(json.dumps({"test": test, "hooks": hooks}) + "\n")


class Trace:
    """A running `ovltrace <args>` process (audit/record/exporter...)."""

    def __init__(self, args: list[str], env: dict | None = None, prefix: list[str] = ()):
        self.args = args
        # prefix: a command that execs the rest (setpriv, to run with fewer capabilities)
        self.proc = subprocess.Popen([*prefix, *OVLTRACE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.stderr_lines: list[str] = []
        self._attached = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self):
        try:
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                if line.startswith(BANNER):
                    self._attached.set()
        except ValueError:
            pass                      # finish() closed the pipe first: nothing more to read
        self._attached.set()          # exited: wake the waiter

    def wait_attached(self, timeout: float | None = None) -> None:
        timeout = max(timeout or 0, ATTACH_TIMEOUT)
        self._attached.wait(timeout)
        if not any(l.startswith(BANNER) for l in self.stderr_lines):
            self.proc.kill()
            raise AssertionError(f"no '{BANNER}' line within {timeout}s; stderr: {self.stderr_lines}")

    def signal(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        log_hooks(out)
        return self.proc.returncode, out

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


def audit_json(args: list[str], during=None, duration: str | None = None,
               settle: float = 1.0, prefix: list[str] = ()) -> dict:
    """Run `ovltrace audit --format json`, call `during()` once the probes
    are attached, end the trace with SIGINT `settle` seconds after it
    returns (or after `duration` if given), return the parsed report.
    Ending on the work, not on a clock, keeps slow machines honest."""
    t = Trace(["audit", "--format", "json", "-d", duration or "600s"] + args, prefix=prefix)
    t.wait_attached()
    try:
        if during:
            during()
        if duration is None:
            time.sleep(settle)
            t.signal(signal.SIGINT)
    except BaseException:
        t.proc.kill()
        raise
    rc, out = t.finish()
    assert rc == 0, f"ovltrace exited {rc}: {t.stderr}"
    assert "Traceback" not in t.stderr, t.stderr
    return json.loads(out)


def wb_error_counter(upper_dev: str, per_inode: bool = False) -> subprocess.Popen:
    """bpftrace counting filemap_set_wb_err on one upper fs (per inode, or
    in all): an independent count of the kernel events ovltrace sees.
    Returns once its probes are attached.  The #defines give the tracepoint
    format's types on kernels whose BTF bpftrace cannot take them from and
    that have no headers (5.10)."""
    major, minor = (int(x) for x in upper_dev.split(":"))
    key = "[args->i_ino]" if per_inode else ""
    bt = subprocess.Popen(
        ["bpftrace", "-e", "#define dev_t unsigned int\n#define errseq_t unsigned int\n"
                           'BEGIN { printf("ready\\n"); } '
                           "tracepoint:filemap:filemap_set_wb_err "
                           f"/args->s_dev == {(major << 20) | minor}/ {{ @n{key} = count(); }}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # BEGIN runs once every probe is attached ("Attaching..." comes before)
    lines = [bt.stdout.readline() for _ in range(2)]
    assert "ready" in lines[-1], "".join(lines) + bt.stderr.read()
    return bt


def report_hook(report: dict, name: str) -> dict:
    hooks = {h["name"]: h for h in report["hooks"]}
    assert name in hooks, report["hooks"]
    return hooks[name]


def skip_if_hook_off_by_limit(report: dict, name: str) -> None:
    """A forced mechanism (OVLTRACE_HOOKS=fentry|kprobes; the VM passes)
    that cannot reach a hook for a documented limit hands it to its
    tracepoint stand-in; only if that fails too is the hook off, and what
    only it counts is not counted at all: the assertions on it are then
    skipped, saying why (tests/vm/verdict checks the reason)."""
    h = report_hook(report, name)
    if h["mechanism"] is None and h.get("limit"):
        pytest.skip(f"{name} off under --hooks {os.environ.get('OVLTRACE_HOOKS')}: {h['limit']}")


def by_mountpoint(report: dict, mountpoint: str) -> dict:
    rows = [o for o in report["overlays"] if o["mountpoint"] == mountpoint]
    assert rows, f"{mountpoint} not in report: {[o['mountpoint'] for o in report['overlays']]}"
    return rows[-1]


def free_port() -> int:
    """A TCP port nobody listens on now (for an exporter or Prometheus)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def write_file(path: str, size: int, chunk: int = 65536) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(b"x" * n)
            left -= n


@pytest.fixture
def quiet_flusher():
    """For tests whose truth is "this flush wrote back exactly what the
    workload dirtied": the kernel's periodic flusher (every
    vm.dirty_writeback_centisecs) checks each device against its share of
    the background threshold, which is small for a fresh loop device when
    other disks did the recent writeout, and can start writing back the
    test's data between the write and the flush.  Off for the test, then
    restored."""
    path = "/proc/sys/vm/dirty_writeback_centisecs"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write("0")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(old)


@pytest.fixture
def sandbox():
    from ovltrace.sandbox import Sandbox
    sb = Sandbox(size_mb=512)
    try:
        yield sb
    finally:
        sb.close()


def our_bpf_programs() -> list[str]:
    """Names of loaded BPF programs that are ovltrace's (bcc names them
    after the probe functions)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"bpftool failed: {out.stderr}")
    progs = json.loads(out.stdout or "[]")
    ours = ("writeback_", "filemap_set_wb", "sys_enter_sync", "sys_exit_sync", "sys_enter_umou",
            "sys_exit_umoun", "sys_enter_fsyn", "sys_exit_fsync", "sys_enter_fdat", "sys_exit_fdata",
            "raw_tracepoint_", "tracepoint__sy", "kfunc__", "kretfunc__", "kprobe__", "kretprobe__")
    return [p.get("name", "") for p in progs if p.get("name", "").startswith(ours)]


def make_pki(directory: str) -> dict[str, str]:
    """A test CA, a server certificate for 127.0.0.1 signed by it, a client
    certificate signed by it, and a client certificate from another CA
    (openssl; EC keys, valid 2 days). Returns their paths by name."""
    d = Path(directory)
    p = {n: str(d / n) for n in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt",
                                 "client.key", "rogue-ca.crt", "rogue-ca.key", "rogue.crt",
                                 "rogue.key")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", *ec, "-keyout", p[f"{ca}.key"], "-out", p[f"{ca}.crt"],
            "-subj", f"/CN=ovltrace test {ca}", "-days", "2")
    for name, ca, ext in (("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                          ("client", "ca", "extendedKeyUsage=clientAuth"),
                          ("rogue", "rogue-ca", "extendedKeyUsage=clientAuth")):
        csr, extfile = str(d / f"{name}.csr"), str(d / f"{name}.ext")
        Path(extfile).write_text(ext + "\n")
        run("req", *ec, "-keyout", p[f"{name}.key"], "-out", csr, "-subj", f"/CN={name}")
        run("x509", "-req", "-in", csr, "-CA", p[f"{ca}.crt"], "-CAkey", p[f"{ca}.key"],
            "-CAcreateserial", "-out", p[f"{name}.crt"], "-days", "2", "-extfile", extfile)
    return p


@contextlib.contextmanager
def running_daemon(argv: list[str], is_up):
    """A container runtime's daemon for the block: the running one if
    is_up(), else argv started now and stopped after. One that does not
    come up within 60 s fails the test with the end of its log."""
    if is_up():
        yield
        return
    name = os.path.basename(argv[0])
    log_path = Path(tempfile.mkdtemp(prefix=f"ovt-{name}-")) / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not is_up():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not come up (rc={proc.poll()}); log {log_path}:\n"
                            + log_path.read_text()[-4000:])
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_exporter(cmd: list[str], timeout: float = 120,
                   **popen) -> tuple[subprocess.Popen, list[str], bool]:
    """An exporter started by `cmd` (ovltrace itself, or a container of
    it), its stderr lines (they keep arriving in that list), and whether it
    said it serves within `timeout` (the caller asserts that where its
    cleanup runs)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
    lines: list[str] = []
    serving = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "serving metrics on" in line:
                serving.set()
        serving.set()
    threading.Thread(target=read, daemon=True).start()
    return proc, lines, serving.wait(timeout)


BUSYBOX_IMAGE = "localhost/ovt-bb:test"      # the image every live container test runs


def busybox_rootfs_tar(directory: Path) -> Path:
    """directory/bb.tar: a root filesystem of busybox with the applets the
    container tests use (no registry: every image is made from it)."""
    root = directory / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "sleep", "dd", "sync", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    tar = directory / "bb.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return tar


def busybox_docker_archive(directory: Path) -> Path:
    """directory/image.tar: BUSYBOX_IMAGE (imported into root's podman
    first if missing) as a docker-archive, for `ctr images import` and a
    rootless `podman load`."""
    if subprocess.run(["podman", "image", "exists", BUSYBOX_IMAGE]).returncode:
        subprocess.run(["podman", "import", "-q", str(busybox_rootfs_tar(directory)),
                        BUSYBOX_IMAGE], check=True, capture_output=True)
    archive = directory / "image.tar"
    subprocess.run(["podman", "save", "-q", "--format", "docker-archive", "-o", str(archive),
                    BUSYBOX_IMAGE], check=True, capture_output=True)
    return archive
