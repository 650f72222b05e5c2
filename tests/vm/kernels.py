"""Debian kernels for the VM matrix, fetched into a cache, never installed.

    kernels.py fetch SERIES...     # e.g. 5.10 6.1 6.12; prints one line each:
                                   #   SERIES KVER VMLINUZ VERSION

Each series is a Debian release's kernel (5.10: bullseye, 6.1: bookworm,
6.12: trixie).  The newest `linux-image-<kver>-amd64` in that release (its
security suite first) is downloaded, its SHA256 checked against the
archive's index, and unpacked with `dpkg-deb -x` into
$OVLTRACE_KERNEL_CACHE/<kver> (default ~/.cache/ovltrace/kernels): the
image and its modules, which virtme-ng links into the guest.  Nothing goes
to /boot or /lib/modules.  Indexes are re-read once a day; without the
network, the newest kernel already unpacked for a series is used.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

# not under /var/cache: virtme-ng hides that behind a tmpfs in the guest,
# which must see the modules here
CACHE = os.environ.get("OVLTRACE_KERNEL_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ovltrace", "kernels")
INDEX_MAX_AGE = 24 * 3600
MIRRORS = {"security": "http://security.debian.org/debian-security",
           "main": "http://deb.debian.org/debian"}
# series -> (release, package-name pattern of its kernel versions)
SERIES = {
    "5.10": ("bullseye", r"5\.10\.0-\d+"),
    "6.1": ("bookworm", r"6\.1\.0-\d+"),
    "6.12": ("trixie", r"6\.12\.\d+\+deb13"),
}


class FetchError(Exception):
    pass


def suites(release: str) -> list[tuple[str, str]]:
    """(mirror, suite) to look in, the security suite first."""
    return [(MIRRORS["security"], f"{release}-security"), (MIRRORS["main"], release)]


def _get(url: str, dest: str, timeout: float = 600) -> None:
    tmp = dest + ".part"
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    os.replace(tmp, dest)


def index(mirror: str, suite: str) -> str:
    """The suite's amd64 Packages index, text (cached for a day)."""
    path = os.path.join(CACHE, "index", f"{suite}.Packages.xz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fresh = os.path.exists(path) and time.time() - os.path.getmtime(path) < INDEX_MAX_AGE
    if not fresh:
        try:
            _get(f"{mirror}/dists/{suite}/main/binary-amd64/Packages.xz", path, 120)
        except OSError as e:
            if not os.path.exists(path):
                raise FetchError(f"{suite}: index unavailable: {e}") from e
    with lzma.open(path, "rt", errors="replace") as f:
        return f.read()


def version_key(v: str) -> tuple:
    """Debian versions of one kernel series compare by their numbers."""
    return tuple(int(n) for n in re.findall(r"\d+", v))


def newest(text: str, pattern: str) -> dict | None:
    """The stanza of the newest `linux-image-<pattern>-amd64` in an index."""
    name = re.compile(rf"linux-image-({pattern})-amd64")
    best = None
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
        m = name.fullmatch(fields.get("Package", ""))
        if m and "Filename" in fields:
            fields["kver"] = m.group(1) + "-amd64"
            if best is None or version_key(fields["Version"]) > version_key(best["Version"]):
                best = fields
    return best


def cached(series: str) -> tuple[str, str] | None:
    """(kver, version) of the newest kernel of `series` already unpacked."""
    found = []
    for d in os.listdir(CACHE) if os.path.isdir(CACHE) else []:
        done = os.path.join(CACHE, d, ".done")
        if re.fullmatch(rf"({SERIES[series][1]})-amd64", d) and os.path.exists(done):
            with open(done) as f:
                version = f.read().split()[0]
            found.append((version_key(version), d, version))
    return max(found)[1:] if found else None


def unpack(mirror: str, pkg: dict) -> str:
    """Download, check and unpack one kernel package; its directory."""
    kver = pkg["kver"]
    root = os.path.join(CACHE, kver)
    done = os.path.join(root, ".done")
    if os.path.exists(done):
        return root
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        deb = os.path.join(tmp, "k.deb")
        t = time.monotonic()
        _get(f"{mirror}/{pkg['Filename']}", deb)
        h = hashlib.sha256()
        with open(deb, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != pkg["SHA256"]:
            raise FetchError(f"{pkg['Filename']}: SHA256 mismatch")
        tree = os.path.join(tmp, "tree")
        subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        # the package leaves modules.dep to its postinst
        base = tree if os.path.isdir(os.path.join(tree, "lib", "modules")) else \
            os.path.join(tree, "usr")
        subprocess.run(["depmod", "-b", base, kver], check=True)
        with open(os.path.join(tree, ".done"), "w") as f:
            f.write(f"{pkg['Version']} {pkg['SHA256']}\n")
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tree, root)
        print(f"kernels: {kver} ({pkg['Version']}, {int(pkg['Size']) >> 20} MiB) fetched and "
              f"unpacked in {time.monotonic() - t:.0f}s", file=sys.stderr)
    return root


def vmlinuz(kver: str) -> str:
    for rel in ("boot", "usr/boot"):
        p = os.path.join(CACHE, kver, rel, f"vmlinuz-{kver}")
        if os.path.exists(p):
            return p
    raise FetchError(f"{kver}: no vmlinuz in {os.path.join(CACHE, kver)}")


def fetch(series: str) -> tuple[str, str]:
    """(kver, Debian version) of the newest kernel of `series`, unpacked."""
    if series not in SERIES:
        raise FetchError(f"unknown kernel series {series!r} (known: {' '.join(SERIES)})")
    release, pattern = SERIES[series]
    best = None
    errors = []
    for mirror, suite in suites(release):
        try:
            pkg = newest(index(mirror, suite), pattern)
        except (FetchError, OSError, lzma.LZMAError) as e:
            errors.append(str(e))
            continue
        if pkg and (best is None or version_key(pkg["Version"]) > version_key(best[1]["Version"])):
            best = (mirror, pkg)
    if best is not None:
        try:
            unpack(*best)
            return best[1]["kver"], best[1]["Version"]
        except (OSError, subprocess.CalledProcessError, FetchError) as e:
            errors.append(str(e))
    have = cached(series)
    if have is not None:
        print(f"kernels: {series}: using the cached {have[0]} ({'; '.join(errors)})",
              file=sys.stderr)
        return have
    raise FetchError(f"{series}: no kernel found ({'; '.join(errors) or 'not in the index'})")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "fetch":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        for series in argv[1:]:
            kver, version = fetch(series)
            print(series, kver, vmlinuz(kver), version)
    except FetchError as e:
        print(f"kernels: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
