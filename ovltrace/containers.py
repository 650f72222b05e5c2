"""Container identity from container runtimes' state on disk.

No daemon API is called: the tool must work when a daemon is hung (which is
exactly when syncfs stalls are being investigated) and must not need sockets.
Sources: Docker overlay2 layerdb, containers-storage (Podman, CRI-O) and
containerd task bundles. All paths are read below `root` so tests can point
the Resolver at a fixture tree; paths stored in the index are the host paths
the kernel reports in mountinfo (without the root prefix).
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Any, Callable

from .model import Container
from .mounts import Overlay, unescape


# ---------------------------------------------------------------- helper mounts

# <docker root>/overlay2/<layer>-init/diff: the layer Docker mounts, seeds
# (/etc/hosts, /etc/resolv.conf, ...) and unmounts while CREATING a container
_DOCKER_INIT = re.compile(r"^(/.*)/overlay2/([^/]+)-init/diff$")
# containerd's temporary mounts (unpacking layers, reading an image's files)
_CONTAINERD_TMP = re.compile(r"/tmpmounts/containerd-mount\d+$")


def helper_of(ov: Overlay) -> str | None:
    """Which runtime helper mount an overlay is, from its paths alone (it
    may be gone, and its container not yet on disk, when this is asked):
    "init" for Docker's init layer, "unpack" for containerd's temporary
    mounts; None for a container's own root (or anything else)."""
    if ov.upperdir and _DOCKER_INIT.match(_norm(ov.upperdir)):
        return "init"
    if any(_CONTAINERD_TMP.search(mp) for mp in (ov.mountpoint, *ov.mountpoints) if mp):
        return "unpack"
    return None


# ---------------------------------------------------------------- cgroups

_ID = r"([0-9a-f]{64})"
# (regex on one cgroup path component, runtime); first match wins per component
_CGROUP_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(rf"^docker-{_ID}\.scope$"), "docker"),
    (re.compile(rf"^libpod-{_ID}(?:\.scope)?$"), "podman"),
    (re.compile(rf"^crio-{_ID}(?:\.scope)?$"), "cri-o"),
    (re.compile(rf"^cri-containerd-{_ID}(?:\.scope)?$"), "containerd"),
]
_BARE_ID = re.compile(rf"^{_ID}$")


def container_id_from_cgroup(path: str) -> tuple[str, str] | None:
    """(runtime guess, full id) for a container's cgroup path, else None.

    The deepest matching component wins, so nested cgroups such as
    ".../libpod-<id>.scope/container" or ".../docker-<id>.scope/init.scope"
    resolve to the container. conmon's cgroups (libpod-conmon-, crio-conmon-)
    are not containers. A bare 64-hex component is "docker" under /docker,
    "containerd" under kubepods (cgroupfs driver; Resolver corrects it when
    the id is known on disk), else "unknown".
    """
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        comp = parts[i]
        for rx, runtime in _CGROUP_PATTERNS:
            m = rx.match(comp)
            if m:
                return runtime, m.group(1)
        m = _BARE_ID.match(comp)
        if m:
            parents = parts[:i]
            if "docker" in parents:
                return "docker", m.group(1)
            if any(p.startswith("kubepods") for p in parents):
                return "containerd", m.group(1)
            return "unknown", m.group(1)
    return None


def cgroup2_root() -> str | None:
    """Where cgroup2 is mounted: /sys/fs/cgroup (unified) or
    /sys/fs/cgroup/unified (hybrid); None without cgroup2."""
    try:
        with open("/proc/mounts") as f:
            found = [unescape(p[1]) for p in (ln.split() for ln in f)
                     if len(p) >= 3 and p[2] == "cgroup2"]
    except OSError:
        return None
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in found:
            return preferred
    return found[0] if found else None


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {"v2": path, <v1 controller or name=...>: path}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hier == "0" and ctrls == "":
            out["v2"] = path
        for c in ctrls.split(","):
            if c:
                out.setdefault(c, path)
    return out


def cgroup_of_pid(pid: int, proc: str = "/proc") -> str:
    """The pid's cgroup v2 ("0::") path; on hybrid hosts where that is "/"
    the name=systemd, then memory, v1 path. Raises OSError if the pid is gone."""
    with open(f"{proc}/{pid}/cgroup") as f:
        cg = parse_proc_cgroup(f.read())
    found = [cg.get(k) for k in ("v2", "name=systemd", "memory")]
    for p in found:
        if p and p != "/":
            return p
    return next((p for p in found if p), "/")


class CgroupIds:
    """cgroup v2 id (the inode number of its directory, what
    bpf_get_current_cgroup_id returns) -> cgroup path."""

    def __init__(self):
        self.root = cgroup2_root()
        self.paths: dict[int, str] = {}
        self._scanned = 0.0

    def path(self, cgroup_id: int) -> str | None:
        if self.root is None:
            return None
        if cgroup_id not in self.paths and time.monotonic() - self._scanned > 1.0:
            self._scan()
        return self.paths.get(cgroup_id)

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        paths = {}
        for dirpath, _dirnames, _files in os.walk(self.root):
            try:
                rel = os.path.relpath(dirpath, self.root)
                paths[os.stat(dirpath).st_ino] = "/" if rel == "." else "/" + rel
            except OSError:
                continue
            if len(paths) > 100000:
                break
        self.paths = paths


# ---------------------------------------------------------------- resolver

_DOCKER_ROOT = "/var/lib/docker"
_STORAGE_ROOT = "/var/lib/containers/storage"
_CONTAINERD_TASKS = ("/run/containerd/io.containerd.runtime.v2.task",
                     "/run/k3s/containerd/io.containerd.runtime.v2.task")
_CRIO_POD = ("io.kubernetes.pod.name", "pod-name")
_CRIO_NS = ("io.kubernetes.pod.namespace", "pod-namespace", "namespace")


def _norm(p: str) -> str:
    return os.path.normpath(p)


class _FileCache:
    """Parsed file contents keyed by path, re-parsed only when mtime/size change."""

    def __init__(self) -> None:
        self._d: dict[str, tuple[tuple[int, int], Any]] = {}
        self._seen: set[str] = set()

    def get(self, path: str, parse: Callable[[str], Any]) -> Any:
        self._seen.add(path)
        try:
            st = os.stat(path)
        except OSError:
            return None
        sig = (st.st_mtime_ns, st.st_size)
        hit = self._d.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                val = parse(f.read())
        except (OSError, ValueError):
            val = None                  # half-written by the runtime: retry next time
        else:
            self._d[path] = (sig, val)
        return val

    def sweep(self) -> None:
        """Drop entries not asked for since the last sweep (deleted containers)."""
        self._d = {k: v for k, v in self._d.items() if k in self._seen}
        self._seen = set()


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _strip(s: str) -> str:
    return s.strip()


class Resolver:
    """Maps overlays and cgroups to containers using runtime state on disk."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._files = _FileCache()
        self._by_upper: dict[str, Container] = {}
        self._by_mount: dict[str, Container] = {}
        self._by_id: dict[str, Container] = {}
        self.version = 0                 # changes when a refresh found other containers
        self.refresh()

    def _p(self, path: str) -> str:
        """Host path -> path below our root."""
        return os.path.join(self.root, path.lstrip("/"))

    def _add(self, c: Container, upper: str | None, mountpoint: str | None) -> None:
        self._by_id[c.id] = c
        if upper:
            self._by_upper[_norm(upper)] = c
        if mountpoint:
            self._by_mount[_norm(mountpoint)] = c

    def refresh(self) -> None:
        """Re-read runtime state; files whose mtime did not change are not re-parsed."""
        before = (self._by_upper, self._by_mount, self._by_id)
        self._by_upper, self._by_mount, self._by_id = {}, {}, {}
        for dr in self._docker_roots():
            self._load_docker(dr)
        for gr in self._storage_roots():
            self._load_storage(gr)
        for tasks in _CONTAINERD_TASKS:
            self._load_containerd(tasks)
        self._files.sweep()
        if (self._by_upper, self._by_mount, self._by_id) != before:
            self.version += 1

    # -- lookups

    def for_overlay(self, ov: Overlay) -> Container | None:
        """Match by upperdir first, then by mountpoint; None if unknown.  A
        Docker init layer belongs to the container whose layer it seeds."""
        if ov.upperdir:
            up = _norm(ov.upperdir)
            c = self._by_upper.get(up)
            if c is not None:
                return c
            m = _DOCKER_INIT.match(up)
            if m and m.group(1) in self._docker_roots():
                c = self._by_upper.get(f"{m.group(1)}/overlay2/{m.group(2)}/diff")
                if c is not None:
                    return c
        for mp in (ov.mountpoint, *ov.mountpoints):
            c = self._by_mount.get(_norm(mp))
            if c is not None:
                return c
        return None

    def for_id(self, cid: str) -> Container | None:
        return self._by_id.get(cid)

    def for_cgroup(self, cgroup_path: str) -> Container | None:
        """Container owning a cgroup. An id found in the path but not on disk
        still yields a Container (guessed runtime, name = short id)."""
        hit = container_id_from_cgroup(cgroup_path)
        if hit is None:
            return None
        runtime, cid = hit
        return self._by_id.get(cid) or Container(runtime, cid, cid[:12])

    # -- Docker overlay2

    def _docker_roots(self) -> list[str]:
        cfg = self._files.get(self._p("/etc/docker/daemon.json"), json.loads)
        roots = [_DOCKER_ROOT]
        if isinstance(cfg, dict):
            alt = cfg.get("data-root") or cfg.get("graph")   # "graph": pre-17.05 name
            if isinstance(alt, str) and alt:
                roots.insert(0, _norm(alt))
        return list(dict.fromkeys(roots))

    def _load_docker(self, dr: str) -> None:
        mounts = self._p(f"{dr}/image/overlay2/layerdb/mounts")
        for cid in _listdir(mounts):
            mid = self._files.get(f"{mounts}/{cid}/mount-id", _strip)
            if not mid:
                continue
            cfg = self._files.get(self._p(f"{dr}/containers/{cid}/config.v2.json"), json.loads)
            name = cfg.get("Name") if isinstance(cfg, dict) else None
            c = Container("docker", cid, (name or cid[:12]).lstrip("/"))
            self._add(c, f"{dr}/overlay2/{mid}/diff", f"{dr}/overlay2/{mid}/merged")

    # -- containers-storage (Podman, CRI-O)

    def _storage_roots(self) -> list[str]:
        roots = []
        conf = self._files.get(self._p("/etc/containers/storage.conf"), _graphroot)
        if conf:
            roots.append(_norm(conf))
        roots.append(_STORAGE_ROOT)
        # rootless podman keeps its store in each user's home
        for home in [self._p("/root")] + glob.glob(self._p("/home/*")):
            store = os.path.join(home, ".local/share/containers/storage")
            if os.path.isdir(store):
                roots.append("/" + os.path.relpath(store, self.root))
        return list(dict.fromkeys(roots))

    def _load_storage(self, gr: str) -> None:
        base = self._p(f"{gr}/overlay-containers")
        # podman keeps --rm containers in volatile-containers.json
        for fn in ("containers.json", "volatile-containers.json"):
            entries = self._files.get(f"{base}/{fn}", json.loads)
            if not isinstance(entries, list):
                continue
            for e in entries:
                c = _storage_container(e)
                if c is None:
                    continue
                layer = e.get("layer")
                up = f"{gr}/overlay/{layer}/diff" if layer else None
                mp = f"{gr}/overlay/{layer}/merged" if layer else None
                self._add(c, up, mp)

    # -- containerd task bundles

    def _load_containerd(self, tasks: str) -> None:
        base = self._p(tasks)
        for ns in _listdir(base):
            if ns == "moby":
                continue                # Docker's own containerd; named via layerdb
            for cid in _listdir(f"{base}/{ns}"):
                bundle = f"{tasks}/{ns}/{cid}"
                cfg = self._files.get(self._p(f"{bundle}/config.json"), json.loads)
                ann = {}
                if isinstance(cfg, dict):
                    ann = cfg.get("annotations") or {}
                if ann.get("io.kubernetes.cri.container-type") == "sandbox":
                    name = ann.get("io.kubernetes.cri.sandbox-name") or cid
                    name = f"{name}/pause"
                else:
                    # CRI's container name, nerdctl's --name, else the ID
                    name = (ann.get("io.kubernetes.cri.container-name")
                            or ann.get("nerdctl/name") or cid)
                # outside Kubernetes, the containerd namespace (ctr -n,
                # nerdctl --namespace) is the one a user knows it by
                c = Container("containerd", cid, name,
                              ann.get("io.kubernetes.cri.sandbox-name"),
                              ann.get("io.kubernetes.cri.sandbox-namespace")
                              or (ns if "io.kubernetes.cri.container-type" not in ann else None))
                self._add(c, None, f"{bundle}/rootfs")
                # an absolute root.path (not "rootfs") is where the overlay is mounted
                rp = (cfg.get("root") or {}).get("path") if isinstance(cfg, dict) else None
                if isinstance(rp, str) and rp.startswith("/"):
                    self._by_mount.setdefault(_norm(rp), c)


def _graphroot(text: str) -> str | None:
    """graphroot from storage.conf's [storage] table (TOML subset, stdlib only)."""
    section = ""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        m = re.match(r'graphroot\s*=\s*["\']([^"\']+)["\']', line)
        if m and section in ("", "storage"):
            return m.group(1)
    return None


def _storage_container(e: Any) -> Container | None:
    if not isinstance(e, dict) or not isinstance(e.get("id"), str):
        return None
    cid = e["id"]
    names = e.get("names") or []
    meta: dict = {}
    if isinstance(e.get("metadata"), str):
        try:
            meta = json.loads(e["metadata"])
        except ValueError:
            meta = {}
    if not isinstance(meta, dict):
        meta = {}
    pod = next((meta[k] for k in _CRIO_POD if meta.get(k)), None)
    if pod is not None or "pod-id" in meta:
        ns = next((meta[k] for k in _CRIO_NS if meta.get(k)), None)
        # CRI-O: "metadata-name" is the container's name in the pod spec;
        # names[0] is the long "k8s_<ctr>_<pod>_<ns>_<uid>_<n>" form
        name = meta.get("metadata-name") or meta.get("name") or (names[0] if names else cid[:12])
        return Container("cri-o", cid, name, pod, ns)
    name = names[0] if names else meta.get("name") or cid[:12]
    return Container("podman", cid, name)
