"""A header tree that bcc can compile against without kernel headers.

bcc only needs <dir>/include/linux/kconfig.h to accept BCC_KERNEL_SOURCE,
uapi headers for its helpers (from linux-libc-dev), and a few kernel
typedefs.  Kernel struct layouts come from BTF (see layout.py), never from
headers, so this works the same whether or not headers are installed.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile

# Debian multiarch dir and kernel arch dir, by `uname -m`
_ARCH = {"x86_64": ("x86_64-linux-gnu", "x86"), "aarch64": ("aarch64-linux-gnu", "arm64")}

KCONFIG = """\
/* ovltrace: minimal kconfig.h for bcc without kernel headers */
#define CONFIG_BPF_SYSCALL 1
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
typedef _Bool bool;
#define true 1
#define false 0
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef unsigned long ino_t;
typedef unsigned int dev_t;
"""


class HeaderError(Exception):
    pass


def build_tree(uapi_root: str = "/usr/include") -> str:
    """Create the tree in a fresh temporary directory and return its path.
    The caller removes it (remove_tree) once bcc has compiled."""
    machine = platform.machine()
    if machine not in _ARCH:
        raise HeaderError(f"unsupported architecture {machine}")
    multiarch, karch = _ARCH[machine]
    linux = os.path.join(uapi_root, "linux")
    asm = os.path.join(uapi_root, multiarch, "asm")
    if not os.path.isfile(os.path.join(linux, "types.h")) or not os.path.isdir(asm):
        raise HeaderError(f"uapi headers missing under {uapi_root} (install linux-libc-dev)")

    root = tempfile.mkdtemp(prefix="ovltrace-ksrc-")
    try:
        def mk(*parts):
            path = os.path.join(root, *parts)
            os.makedirs(path, exist_ok=True)
            return path

        inc_linux = mk("include", "linux")
        with open(os.path.join(inc_linux, "kconfig.h"), "w") as f:
            f.write(KCONFIG)
        open(os.path.join(inc_linux, "log2.h"), "w").close()  # bcc's helpers include it
        with open(os.path.join(mk("arch", karch, "include", "asm"), "page.h"), "w") as f:
            f.write("#define PAGE_SHIFT 12\n#define PAGE_SIZE (1UL << PAGE_SHIFT)\n")
        mk("arch", karch, "include", "generated")
        mk("include", "generated", "uapi")

        # uapi/linux: every header but bpf.h, which bcc brings itself (a
        # second copy redefines every enum).
        uapi_linux = mk("include", "uapi", "linux")
        for name in os.listdir(linux):
            if name != "bpf.h":
                os.symlink(os.path.join(linux, name), os.path.join(uapi_linux, name))
        with open(os.path.join(uapi_linux, "bpf.h"), "w") as f:
            f.write("#include <bcc/bpf.h>\n")
        os.symlink(os.path.join(uapi_root, "asm-generic"), os.path.join(root, "include", "uapi", "asm-generic"))
        os.symlink(asm, os.path.join(mk("arch", karch, "include", "uapi"), "asm"))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def remove_tree(root: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
