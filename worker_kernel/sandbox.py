"""The sandbox of an untrusted worker: its `Permissions`, enforced by the Linux kernel before any target import.

A sandboxed worker starts as ``python -m worker_kernel -f CONNECTION --sandbox JSON`` and confines itself in
two images of the same process:

1. **The confiner** (`confine_and_exec`): reads its connection file, works out the rules, and refuses to start
   (`SandboxError`, exit code `REFUSED_EXIT_CODE`) if this machine cannot enforce them. It binds the five
   listening sockets of the connection file itself, then: no new privileges, every capability dropped (and the
   bounding set, so that root cannot regain them), the folders both readable and writable remounted ``noexec``
   in a mount namespace of its own when ``ffi`` is denied, a Landlock domain (files: read, write, execute; TCP:
   no bind, connect only where ``net`` allows; scopes: no signals to, no abstract UNIX sockets of, processes
   outside the domain; and Landlock never lets a domain trace or read the memory of a process outside it),
   resource limits, and a seccomp filter. Then it ``execve``s a fresh interpreter: the only ``execve`` the filter
   lets through when ``run`` is denied is this one (its exact path pointer).
2. **The confined worker** (`Confinement`): a new interpreter image, which never loaded ctypes (so ``ffi=False``
   means no foreign-function interface at all), inherits all of the above irrevocably. It adopts the listening
   sockets (ZeroMQ's ``ZMQ_USE_FD``), so it never needs to create a socket, and installs an audit hook that turns
   what the kernel will deny into a `PermissionError` naming the permission. The hook is for clear messages only.

Landlock does not cover everything (``listen()`` binds a port without ``bind()``; TCP Fast Open connects
without ``connect()``; UDP; pathname UNIX sockets; mode, owner and time changes; SysV IPC), hence the seccomp
filter; seccomp cannot see paths, hence Landlock. See docs/security.md for the full map.

Everything here goes through raw system calls with ctypes, imported only by the confiner.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from .loader import isolate_module_folders
from .permissions import REFUSED_EXIT_CODE, Permissions, SandboxConfig, refusal_file
from .procstatus import has_capability, read_status

# -- constants (linux/landlock.h, linux/seccomp.h, linux/capability.h, linux/prctl.h, asm/unistd_64.h) -----------

SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
SYS_seccomp = 317
SYS_capget = 125
SYS_capset = 126
SYS_unshare = 272

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # what a file can hold
READ = FS_READ_FILE | FS_READ_DIR
WRITE = (
    FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM | FS_MAKE_SOCK
    | FS_MAKE_FIFO | FS_REFER | FS_TRUNCATE
)  # fmt: skip

PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECUREBITS_LOCKED_DOWN = 0xEF  # NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, each locked; KEEP_CAPS locked off
CAPABILITY_VERSION_3 = 0x20080522
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

CLONE_NEWNS = 0x00020000
CLONE_THREAD = 0x00010000
CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF
MSG_FASTOPEN = 0x20000000
PROT_WRITE, PROT_EXEC, MAP_ANONYMOUS = 2, 4, 0x20
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
SIGXCPU = 24

# x86_64 system call numbers (the tests check them against asm/unistd_64.h where it is installed)
NR = {
    "read": 0, "write": 1, "poll": 7, "mmap": 9, "mprotect": 10, "rt_sigaction": 13, "ioctl": 16,
    "sched_yield": 24, "shmget": 29, "shmat": 30, "shmctl": 31, "getpid": 39, "socket": 41, "connect": 42,
    "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "bind": 49, "listen": 50, "socketpair": 53,
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "semget": 64, "semop": 65, "semctl": 66,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93,
    "lchown": 94, "sysinfo": 99, "ptrace": 101, "syslog": 103, "rt_sigqueueinfo": 129, "utime": 132,
    "uselib": 134, "personality": 135, "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
    "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190,
    "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199, "tkill": 200, "futex": 202,
    "sched_setaffinity": 203, "lookup_dcookie": 212, "semtimedop": 220, "clock_settime": 227, "epoll_wait": 232,
    "tgkill": 234, "utimes": 235, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
    "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "ioprio_set": 251, "migrate_pages": 256, "fchownat": 260,
    "futimesat": 261, "fchmodat": 268, "ppoll": 271, "unshare": 272, "get_robust_list": 274, "move_pages": 279,
    "utimensat": 280, "epoll_pwait": 281, "rt_tgsigqueueinfo": 297, "perf_event_open": 298,
    "fanotify_init": 300, "prlimit64": 302, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "sendmmsg": 307, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "memfd_create": 319, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "pkey_mprotect": 329, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
    "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443,
    "process_mrelease": 448, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469,
}  # fmt: skip

# Never allowed in a sandboxed worker, whatever its permissions: other processes' memory and tracing, the
# machine's configuration, mounts and namespaces, kernel modules, keyrings, io_uring (its operations bypass
# seccomp), SysV and POSIX IPC (channels to other workers and to the host that Landlock does not see).
ALWAYS_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "get_robust_list",
    "process_madvise", "process_mrelease", "migrate_pages", "move_pages", "perf_event_open", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "iopl", "ioperm", "quotactl",
    "quotactl_fd", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "vhangup", "name_to_handle_at", "open_by_handle_at", "fanotify_init", "lookup_dcookie",
    "personality", "uselib", "modify_ldt", "shmget", "shmat", "shmctl", "semget", "semop", "semctl",
    "semtimedop", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip
# A file's mode, owner, times and extended attributes: Landlock does not govern them, and the worker runs as the
# owner of files it must not change (chmod needs nothing more), so they need write=True.
METADATA_CHANGES = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "setxattr",
    "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "file_setattr", "utime", "utimes", "utimensat", "futimesat",
)  # fmt: skip
# The calls a serving worker makes most are allowed first, so that the filter costs them a handful of steps.
HOT = ("read", "write", "futex", "poll", "ppoll", "epoll_wait", "epoll_pwait", "recvfrom", "recvmsg", "getpid",
       "sched_yield")  # fmt: skip

DEVICES = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/full")  # not /dev/zero: it maps as anonymous memory
NET_FILES = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf", "/etc/services",
    "/etc/protocols", "/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates",
)  # fmt: skip
BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
# extension modules that hand Python code a foreign-function interface or raw memory: unreadable without ffi
FFI_MODULES = ("_ctypes", "_ctypes_test", "_cffi_backend", "_testcapi", "_testinternalcapi", "_testbuffer",
               "_testmultiphase", "_testsinglephase", "_xxtestfuzz", "_testimportmultiple", "_testclinic")  # fmt: skip
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class SandboxError(RuntimeError):
    """The sandbox cannot be enforced as configured: the worker refuses to start."""


# -- raw system calls (the confiner only) -----------------------------------------------------------------------

_libc: Any = None


def libc() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _libc.prctl.restype = ctypes.c_int
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(result)


def _syscall(number: int, *args: Any) -> int:
    import ctypes

    return _check(libc().syscall(ctypes.c_long(number), *args), f"system call {number}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc().prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def _buffer(data: bytes) -> Any:
    import ctypes

    return ctypes.create_string_buffer(data, len(data))


def landlock_abi() -> int:
    """The Landlock ABI version this kernel speaks, or 0 if Landlock is missing or disabled."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return 0
    import ctypes

    try:
        return _syscall(
            SYS_landlock_create_ruleset, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)
        )
    except OSError:
        return 0


def seccomp_problem() -> str | None:
    """None if this process can install our seccomp filter, else why not."""
    if not sys.platform.startswith("linux"):
        return f"seccomp is Linux's, and this is {sys.platform}"
    machine = os.uname().machine
    if machine != "x86_64":
        return f"the seccomp filter knows x86_64 system calls only, and this machine is {machine}"
    import ctypes

    action = ctypes.c_uint32(SECCOMP_RET_ERRNO)  # can the kernel filter, and return errors from a filter?
    try:
        _syscall(SYS_seccomp, ctypes.c_uint(SECCOMP_GET_ACTION_AVAIL), ctypes.c_uint(0), ctypes.byref(action))
    except OSError as exc:
        return f"seccomp filters are not available ({exc.strerror})"
    return None


def _has_capability(cap: int) -> bool:
    return has_capability(read_status(), cap)


# -- the rules --------------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """Landlock rights beneath ``path`` (a folder's rights cover everything in it)."""

    path: str
    rights: int
    is_dir: bool


def _real(path: str) -> str:
    return os.path.realpath(path)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _grant(path: str, rights: int, hide: list[str]) -> list[Rule]:
    """Rules granting ``rights`` beneath ``path`` but not beneath the ``hide`` paths. Landlock has no deny
    rules and a folder's rights cover everything beneath it, so a folder holding a hidden path gets listing at
    most (none if a hidden folder is beneath it: listing would reach into that folder too), and its entries
    are granted one by one."""
    real = _real(path)
    if not os.path.exists(real) or any(_within(real, h) for h in hide):
        return []  # a missing or hidden path is not granted: the safe side
    is_dir = os.path.isdir(real)
    inside = [h for h in hide if _within(h, real)]
    if not inside or not is_dir:
        return [Rule(real, rights if is_dir else rights & FS_FILE_RIGHTS, is_dir)]
    listable = rights & FS_READ_DIR and not any(os.path.isdir(h) for h in inside)
    rules = [Rule(real, FS_READ_DIR, True)] if listable else []
    try:
        entries = os.listdir(real)
    except OSError:
        return rules
    for entry in entries:
        rules += _grant(os.path.join(real, entry), rights, hide)
    return rules


def _granted(paths: bool | tuple[str, ...]) -> tuple[str, ...]:
    return ("/",) if paths is True else paths or ()


def _merge(rules: Iterable[Rule]) -> list[Rule]:
    merged: dict[str, Rule] = {}
    for rule in rules:
        if rule.path in merged:
            merged[rule.path].rights |= rule.rights
        else:
            merged[rule.path] = Rule(rule.path, rule.rights, rule.is_dir)
    return list(merged.values())


def allows(rules: Iterable[Rule], path: str, right: int) -> bool:
    """Whether ``rules`` give ``right`` on the resolved ``path`` (as Landlock would decide)."""
    for rule in rules:
        if rule.rights & right and (rule.path == path or (rule.is_dir and _within(path, rule.path))):
            return True
    return False


def own_files(module_file: str) -> str:
    """What a sandboxed worker may read of its own module: the file alone, or for a package (its
    ``__init__.py``) the package's folder. Never the folder around a module: the modules beside it are other
    tenants' code and secrets."""
    real = _real(module_file)
    return os.path.dirname(real) if os.path.basename(real) == "__init__.py" else real


def _elf_interpreter(path: str) -> str | None:
    """The program interpreter (PT_INTERP) of an ELF executable: ld.so, which execve opens too."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
                if p_type == 3:
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _site_dirs() -> set[str]:
    import sysconfig

    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        import site

        paths.update(site.getsitepackages())
    except Exception:
        pass
    return paths


def runtime_paths() -> tuple[list[str], list[str]]:
    """What a fresh interpreter needs to start and serve: (readable paths, executable files). The standard
    library, the environment's site-packages and its ``pyvenv.cfg``, this package and pyzmq, the shared
    libraries this process has mapped, the system's library folders (where extension modules find theirs), the
    dynamic linker's cache, the time zone and the C.UTF-8 locale."""
    read = _site_dirs()
    import importlib.util

    package = os.path.dirname(os.path.abspath(__file__))
    zmq = importlib.util.find_spec("zmq")
    read.add(package)
    read.update((zmq.submodule_search_locations or []) if zmq else [])
    if sys.prefix != sys.base_prefix:
        read.add(os.path.join(sys.prefix, "pyvenv.cfg"))
    multiarch = getattr(sys.implementation, "_multiarch", "") or ""
    for base in ("/lib", "/usr/lib", "/usr/local/lib"):
        if multiarch:
            read.add(os.path.join(base, multiarch))
        if os.path.isdir(base):  # the libraries directly in it, not the trees beneath (perl, python3, ...)
            read.update(e.path for e in os.scandir(base) if ".so" in e.name and e.is_file())
    read.update({"/lib64", "/usr/lib64", "/etc/ld.so.cache", "/etc/localtime", "/usr/lib/locale/C.utf8"})
    read.update(_mapped_files())
    executable = _real(sys.executable)
    execute = [executable]
    interpreter = _elf_interpreter(executable)
    if interpreter:
        execute.append(_real(interpreter))
    read.update(execute)
    return sorted(p for p in read if p and os.path.exists(p)), execute


def _mapped_files() -> set[str]:
    """Files mapped into this process: the interpreter, its shared libraries and extension modules."""
    found: set[str] = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    path = parts[5].strip()
                    if not path.endswith(" (deleted)") and os.path.isfile(path):
                        found.add(path)
    except OSError:
        pass
    return found


def _ffi_files() -> list[str]:
    """The files of the `FFI_MODULES`, wherever an interpreter of this machine could load them from."""
    import glob

    roots = _site_dirs() | set(glob.glob("/usr/lib/python3*")) | set(glob.glob("/usr/local/lib/python3*"))
    prefixes = tuple(name + "." for name in FFI_MODULES)
    found: set[str] = set()
    for root in roots:
        for sub in ("", "lib-dynload", "site-packages", "dist-packages"):
            try:
                entries = os.scandir(os.path.join(root, sub))
            except OSError:
                continue
            with entries:
                found.update(e.path for e in entries if e.name.startswith(prefixes) and e.name.endswith(".so"))
    return sorted(_real(f) for f in found)


class Plan:
    """The rules for one worker and what this machine can enforce of them. Side-effect free."""

    def __init__(self, config: SandboxConfig, connection: dict[str, Any], hooks_file: str | None = None) -> None:
        self.config = config
        self.permissions = config.permissions
        self.connection = connection
        self.hooks_file = hooks_file
        self.abi = 0
        self.seccomp_problem: str | None = None
        self.rules: list[Rule] = []
        self.noexec: list[str] = []
        self.runtime: list[str] = []
        self.unenforced: list[str] = []
        problems: list[tuple[str, str]] = []
        if self.permissions is not None:
            problems = self._check()
        if problems:
            if config.enforce == "strict":
                names = ", ".join(dict.fromkeys(name for name, _ in problems))
                reasons = "; ".join(dict.fromkeys(why for _, why in problems))
                raise SandboxError(
                    f"cannot enforce {names} on this machine: {reasons}. A WorkerSpec with "
                    "enforce='best-effort' would run without it"
                )
            self.unenforced = [f"{name} ({why})" for name, why in problems]

    def _check(self) -> list[tuple[str, str]]:
        p = self.permissions
        assert p is not None
        problems: list[tuple[str, str]] = []
        if not sys.platform.startswith("linux"):
            return [("every permission", f"the sandbox needs Linux, and this is {sys.platform}")]
        if self.connection.get("transport", "tcp") != "tcp":
            return [("net", "a sandboxed worker must speak TCP (its connection file says otherwise)")]
        self.abi = landlock_abi()
        self.seccomp_problem = seccomp_problem()
        denied = [name for name in ("net", "read", "write", "run", "ffi", "sys") if getattr(p, name) is not True]
        if self.abi < 1:
            why = "Landlock is not available in this kernel (or not enabled at boot)"
            problems += [(name, why) for name in ("read", "write", "ffi", "sys") if name in denied]
            problems.append(("isolation from the host's files", why))
        else:
            if self.abi < 3 and p.write is not True:
                problems.append(("write", f"Landlock ABI {self.abi} cannot deny truncation (needs 3)"))
            if self.abi < 4 and isinstance(p.net, tuple):
                problems.append(("net", f"Landlock ABI {self.abi} cannot filter TCP ports (needs 4)"))
        if self.seccomp_problem:
            why = self.seccomp_problem
            problems += [(name, why) for name in ("net", "run", "ffi", "sys") if name in denied]
            if p.write is not True:
                problems.append(("write", why + " (mode, owner and time changes)"))
            problems.append(("isolation from the host", why))
        if not p.ffi:
            problems += [
                ("ffi", f"{name} is built into this interpreter: it cannot be hidden")
                for name in FFI_MODULES
                if name in sys.builtin_module_names
            ]
        self.rules = self._rules()
        if not p.ffi:
            problems += self._plan_noexec()
        return problems

    def _rules(self) -> list[Rule]:
        p = self.permissions
        assert p is not None
        protected = [_real(path) for path in self.config.protected]
        hide = [*protected, "/dev", *(() if p.sys else ("/proc", "/sys")), *(() if p.ffi else _ffi_files())]
        write_hide = [*protected, "/dev", "/proc", "/sys"]
        execute = FS_EXECUTE if p.run else 0
        rules: list[Rule] = []
        readable, executables = runtime_paths()
        self.runtime = readable
        for path in readable:
            rules += _grant(path, READ | execute, hide)
        for path in executables:
            rules += _grant(path, FS_READ_FILE | FS_EXECUTE, hide)
        for path in DEVICES:
            rules += _grant(path, FS_READ_FILE, [])
        rules += _grant("/dev/null", FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE, [])
        for own in (self.config.module, self.hooks_file):  # its own module and its hooks, not their folders
            if own and os.path.exists(own):
                rules += _grant(own_files(own), READ | execute, hide)
        for path in _granted(p.read):
            rules += _grant(path, READ | execute, hide)
        for path in _granted(p.write):
            rules += _grant(path, WRITE, write_hide)
        if p.run:
            for path in BIN_DIRS:
                rules += _grant(path, READ | FS_EXECUTE, hide)
        if p.net is not False:
            for path in NET_FILES:
                rules += _grant(path, READ, hide)
        if p.sys:
            for path in ("/proc", "/sys"):
                rules += _grant(path, READ, protected)
        return _merge(rules)

    def _plan_noexec(self) -> list[tuple[str, str]]:
        """Without ffi, a folder both readable and writable could receive a native library and load it, so it
        is remounted noexec in the worker's own mount namespace (which takes CAP_SYS_ADMIN)."""
        writable = [r.path for r in self.rules if r.rights & FS_WRITE_FILE and r.path not in DEVICES]
        readable = [r.path for r in self.rules if r.rights & FS_READ_FILE]
        both = sorted({w for w in writable if any(_within(w, r) or _within(r, w) for r in readable)})
        folders = sorted({w if os.path.isdir(w) else os.path.dirname(w) for w in both})
        for folder in folders:
            if any(_within(path, folder) for path in self.runtime):
                return [("ffi", f"{folder} is writable and holds the worker's own libraries")]
        self.noexec = folders
        if folders and not _has_capability(CAP_SYS_ADMIN):
            return [("ffi", f"{folders[0]} is readable and writable, and only root can remount it noexec")]
        return []

    def bind_ports(self) -> list[int]:
        ports = [self.connection.get(f"{channel}_port") for channel in CHANNELS]
        return [port for port in ports if isinstance(port, int) and 0 < port < 65536]


# -- stage 1: the confiner ---------------------------------------------------------------------------------------


def confine_and_exec(config_text: str, connection_file: str, argv: list[str]) -> None:
    """Confine this process as the configuration says and ``execve`` ``argv`` (a confined worker command, to
    which ``--confined FD`` is added). Refuses to start, with the reason on stderr and in the refusal file and
    exit code `REFUSED_EXIT_CODE`, if the sandbox cannot be enforced.

    Returns (and the caller goes on unconfined) only for limits without permissions, which apply in place, or
    for a best-effort sandbox on a system that has none of the mechanisms, after a loud warning."""
    try:
        config = SandboxConfig.loads(config_text)
        with open(connection_file, encoding="utf-8") as f:
            connection = json.load(f)
        plan = Plan(config, connection, _hooks_file(argv))
        if config.permissions is None or not sys.platform.startswith("linux"):
            _limits(config)
            if plan.unenforced:
                _warn("WARNING: this wb-magic worker runs best-effort: NOT ENFORCED: " + "; ".join(plan.unenforced))
            return
        brief = _prepare(plan, connection)
        _confine(plan)
        _exec(plan, [*argv, "--confined", str(brief)])
    except Exception as exc:
        refuse(connection_file, f"the worker's sandbox: {exc}")


# The confined image loads this package from its folder, by path: found through ``sys.path`` (``-m``), a
# development install would need its parent folder listable, and with it every folder of the project beneath.
_BOOTSTRAP = """import importlib.util, sys
spec = importlib.util.spec_from_file_location("worker_kernel", sys.argv.pop(1))
sys.modules["worker_kernel"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from worker_kernel.__main__ import main
main()
"""


def confined_command(connection_file: str, hooks: str | None) -> list[str]:
    """The command of the confined image (without its ``--confined FD``)."""
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py")
    hooks_args = ["--hooks", hooks] if hooks else []
    return [sys.executable, "-s", "-B", "-c", _BOOTSTRAP, init, "-f", connection_file, *hooks_args]


def refuse(connection_file: str | None, reason: str) -> NoReturn:
    line = " ".join(reason.split())
    print(f"wb-magic worker refused to start: {line}", file=sys.__stderr__ or sys.stderr, flush=True)
    if connection_file:
        try:
            with open(refusal_file(connection_file), "w", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass
    os._exit(REFUSED_EXIT_CODE)


def _hooks_file(argv: list[str]) -> str | None:
    if "--hooks" not in argv:
        return None
    from .loader import resolve_module, source_path

    spec = argv[argv.index("--hooks") + 1].partition(":")[0]
    try:
        return source_path(resolve_module(spec))
    except (ImportError, ValueError):
        return None


def _prepare(plan: Plan, connection: dict[str, Any]) -> int:
    """Bind the listening sockets (the confined worker cannot), and write the brief for the confined worker
    into a memory file; returns its descriptor."""
    fds: dict[str, int] = {}
    ip = str(connection.get("ip", "127.0.0.1"))
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for port in plan.bind_ports():
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(100)
        fd = sock.detach()
        os.set_inheritable(fd, True)
        fds[str(port)] = fd
    brief = {
        "connection": connection,
        "fds": fds,
        "config": json.loads(plan.config.dumps()),
        "rules": [[r.path, r.rights, r.is_dir] for r in plan.rules],
        "unenforced": plan.unenforced,
    }
    fd = os.memfd_create("wb-sandbox-brief", 0)  # inheritable: the confined worker reads it
    os.write(fd, json.dumps(brief).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _confine(plan: Plan) -> None:
    p = plan.permissions
    if p is not None:
        opened = []
        for rule in plan.rules:  # opened while the process still has the host's rights to open them
            try:
                opened.append((os.open(rule.path, os.O_PATH | os.O_CLOEXEC), rule))
            except OSError:
                continue  # gone since planning: not granted
        try:
            if plan.noexec and _has_capability(CAP_SYS_ADMIN):
                _remount_noexec(plan.noexec)
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            _prctl(PR_SET_DUMPABLE, 0)
            _drop_capabilities()
            if plan.abi >= 1:
                _landlock(plan, opened)
        finally:
            for fd, _ in opened:
                os.close(fd)
    _limits(plan.config)


def _landlock(plan: Plan, opened: list[tuple[int, Rule]]) -> None:
    import ctypes

    p = plan.permissions
    assert p is not None
    handled_fs = _fs_rights(plan.abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if plan.abi >= 4 and p.net is not True else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if plan.abi >= 6 else 0
    size = 24 if plan.abi >= 6 else 16 if plan.abi >= 4 else 8
    attr = _buffer(struct.pack("=QQQ", handled_fs, handled_net, scoped)[:size])
    ruleset = _syscall(SYS_landlock_create_ruleset, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for fd, rule in opened:
            rights = rule.rights & handled_fs & (~0 if rule.is_dir else FS_FILE_RIGHTS)
            if rights:
                beneath = _buffer(struct.pack("=Qi", rights, fd))
                _syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, beneath, ctypes.c_uint32(0))
        for port in p.net if handled_net and isinstance(p.net, tuple) else ():
            net = _buffer(struct.pack("=QQ", NET_CONNECT_TCP, port))
            _syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_NET_PORT, net, ctypes.c_uint32(0))
        _syscall(SYS_landlock_restrict_self, ruleset, ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _remount_noexec(folders: Iterable[str]) -> None:
    """A private mount namespace in which ``folders`` are bind mounts without exec, suid or devices."""
    lib = libc()
    _syscall(SYS_unshare, CLONE_NEWNS)
    _check(lib.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making the mounts private")
    for folder in folders:
        target = os.fsencode(folder)
        _check(lib.mount(target, target, None, MS_BIND | MS_REC, None), f"bind-mounting {folder}")
        flags = MS_BIND | MS_REMOUNT | MS_NOEXEC | MS_NOSUID | MS_NODEV | _mount_flags(folder)
        _check(lib.mount(None, target, None, flags, None), f"remounting {folder} noexec")


def _mount_flags(path: str) -> int:
    """The flags ``path``'s mount has that a remount must keep (ST_* of statvfs to MS_*)."""
    have = os.statvfs(path).f_flag
    pairs = ((1, MS_RDONLY), (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME))
    return sum(ms for st, ms in pairs if have & st)


def _drop_capabilities() -> None:
    """No capability left and none to regain: securebits locked, bounding and ambient sets emptied."""
    if _has_capability(CAP_SETPCAP):
        _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN)
        cap = 0
        while True:
            try:
                _prctl(PR_CAPBSET_READ, cap)
            except OSError:
                break
            _prctl(PR_CAPBSET_DROP, cap)
            cap += 1
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    header = _buffer(struct.pack("=Ii", CAPABILITY_VERSION_3, 0))
    data = _buffer(bytes(24))
    _syscall(SYS_capset, header, data)
    _syscall(SYS_capget, header, data)
    if any(struct.unpack("=6I", data.raw)):
        raise SandboxError("the worker could not drop its capabilities")


def _limits(config: SandboxConfig) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.memory_limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (config.memory_limit, config.memory_limit))
    if config.cpu_seconds is not None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime + config.cpu_seconds + 0.999)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    if config.file_size_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (config.file_size_limit, config.file_size_limit))


def _exec(plan: Plan, argv: list[str]) -> NoReturn:
    """Install the seccomp filter and execve ``argv``. With run denied, the filter allows this one execve: its
    path pointer, which no later code of the worker can pass by chance."""
    import ctypes

    path = ctypes.create_string_buffer(os.fsencode(sys.executable))
    args = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    env = os.environ.copy()
    if plan.config.memory_limit is not None:
        env.setdefault("MALLOC_ARENA_MAX", "2")  # each malloc arena reserves 64 MB of address space
    envp = (ctypes.c_char_p * (len(env) + 1))(*[os.fsencode(f"{k}={v}") for k, v in env.items()], None)
    if plan.permissions is not None and not plan.seccomp_problem:
        guard = plan.config.cpu_seconds is not None
        install_seccomp(seccomp_program(plan.permissions, plan.abi, os.getpid(), ctypes.addressof(path), guard))
    libc().execve(path, args, envp)
    raise OSError(ctypes.get_errno(), f"execve {sys.executable}: {os.strerror(ctypes.get_errno())}")


# -- seccomp ------------------------------------------------------------------------------------------------------

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS
NO_EFFECT = SECCOMP_RET_ERRNO  # errno 0: the call returns success and does nothing
FULL = 0xFFFFFFFF


@dataclass(frozen=True)
class Check:
    """``(word & mask) == value``, where word is the low (or high) 32 bits of argument ``arg``."""

    arg: int
    value: int
    mask: int = FULL
    high: bool = False

    @property
    def offset(self) -> int:  # in struct seccomp_data: nr, arch, instruction_pointer, then args[6]
        return 16 + 8 * self.arg + (4 if self.high else 0)


@dataclass(frozen=True)
class SeccompRule:
    syscall: str
    action: int
    checks: tuple[Check, ...] = ()


def seccomp_rules(p: Permissions, abi: int, pid: int, exec_path: int = 0, guard_cpu: bool = False) -> list[SeccompRule]:
    """The filter's rules in order: for a system call, the first of its rules whose checks all hold decides;
    one no rule decides is allowed. The low 32 bits of an argument are all the kernel reads of the ones checked
    here (ints, clone flags, protections, message flags, ioctl commands)."""
    deny, allow = EPERM, SECCOMP_RET_ALLOW
    rules: list[SeccompRule] = []
    if p.net is not True:  # first: ZeroMQ sends with sendto, and an allowed one need not pass every rule below
        for name, arg in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
            rules.append(SeccompRule(name, deny, (Check(arg, MSG_FASTOPEN, MSG_FASTOPEN),)))
            rules.append(SeccompRule(name, allow))
    rules += [SeccompRule(name, deny) for name in ALWAYS_DENIED]
    rules.append(SeccompRule("clone3", ENOSYS))  # its flags are in memory a filter cannot read: glibc falls back
    # processes
    if p.run:
        rules.append(SeccompRule("clone", allow, (Check(0, 0, CLONE_NAMESPACES),)))
    else:
        rules.append(SeccompRule("clone", allow, (Check(0, CLONE_THREAD, CLONE_THREAD | CLONE_NAMESPACES),)))
        rules.append(SeccompRule("execve", allow, (Check(0, exec_path & FULL), Check(0, exec_path >> 32, high=True))))
        rules += [SeccompRule(name, deny) for name in ("fork", "vfork", "execve", "execveat")]
    rules.append(SeccompRule("clone", deny))
    # sockets: connected stream pairs (asyncio's self-pipe) always; socket() as net says; never listen() or
    # bind() without net=True (Landlock does not see the port listen() picks). Without net=True, no TCP Fast Open
    # (a connect inside sendto, sendmsg or sendmmsg, which Landlock does not see) on any socket: the listening
    # sockets a worker inherits and the connections ZeroMQ accepts on them can be freed for a new connection
    # (shutdown, connect(AF_UNSPEC)) without socket(); and without net, no connect() at all (where Landlock
    # cannot filter TCP, ABI < 4, nothing else would stop one)
    rules.append(SeccompRule("socketpair", allow, (Check(1, SOCK_STREAM, SOCK_TYPE_MASK),)))
    rules.append(SeccompRule("socketpair", deny))
    if p.net is True:
        if not p.sys:
            rules.append(SeccompRule("socket", deny, (Check(0, AF_UNIX),)))
    else:
        if p.net:
            for family in (AF_INET, AF_INET6):
                rules.append(SeccompRule("socket", allow, (Check(0, family), Check(1, SOCK_STREAM, SOCK_TYPE_MASK))))
        else:
            rules.append(SeccompRule("connect", deny))
        rules += [SeccompRule(name, deny) for name in ("socket", "listen", "bind")]
    # other processes: limits and priorities of this process only; scheduling of this process, and calls about
    # another thread or process succeed without effect (a filter cannot tell this process's threads from
    # others, and ZeroMQ's threads set their own scheduling, taking a refusal for a fatal error)
    rules += [SeccompRule("prlimit64", allow, (Check(0, who),)) for who in (0, pid)]
    rules.append(SeccompRule("prlimit64", deny))
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        rules += [SeccompRule(name, allow, (Check(0, who),)) for who in (0, pid)]
        rules.append(SeccompRule(name, NO_EFFECT))
    for name, which in (("setpriority", 0), ("ioprio_set", 1)):
        rules += [SeccompRule(name, allow, (Check(0, which), Check(1, who))) for who in (0, pid)]
        rules.append(SeccompRule(name, deny))
    if abi < 6:  # no Landlock signal scoping: signals to this process only (so, not to its children)
        rules.append(SeccompRule("kill", allow, (Check(0, pid),)))
        rules += [SeccompRule(n, allow, (Check(0, pid),)) for n in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")]
        rules += [SeccompRule(n, deny) for n in
                  ("kill", "tgkill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal")]  # fmt: skip
    # the terminal the worker may share with the host: no typing into its shell
    rules += [SeccompRule("ioctl", deny, (Check(1, cmd),)) for cmd in (TIOCSTI, TIOCLINUX)]
    if p.write is not True:
        rules += [SeccompRule(name, deny) for name in METADATA_CHANGES]
    if not p.ffi:  # no executable memory but files mapped as they are: not anonymous, not writable, never later
        rules.append(
            SeccompRule("mmap", deny, (Check(2, PROT_EXEC, PROT_EXEC), Check(3, MAP_ANONYMOUS, MAP_ANONYMOUS)))
        )
        rules.append(SeccompRule("mmap", deny, (Check(2, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE),)))
        rules.append(SeccompRule("mprotect", deny, (Check(2, PROT_EXEC, PROT_EXEC),)))
        rules.append(SeccompRule("pkey_mprotect", deny, (Check(2, PROT_EXEC, PROT_EXEC),)))
        rules.append(SeccompRule("memfd_create", deny))
    if not p.sys:
        rules.append(SeccompRule("sysinfo", deny))
    if guard_cpu:  # the CPU limit's SIGXCPU must end the worker: no handler for it, no ignoring it
        rules.append(SeccompRule("rt_sigaction", allow, (Check(0, SIGXCPU), Check(1, 0), Check(1, 0, high=True))))
        rules.append(SeccompRule("rt_sigaction", deny, (Check(0, SIGXCPU),)))
    return rules


def seccomp_program(p: Permissions, abi: int, pid: int, exec_path: int = 0, guard_cpu: bool = False) -> bytes:
    """The filter as classic BPF (struct sock_filter[]). Another architecture, or the x32 ABI: killed."""
    prog: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, AUDIT_ARCH_X86_64),
        (_RET, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (_LD_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE, 0, 1, X32_SYSCALL_BIT),
        (_RET, 0, 0, SECCOMP_RET_KILL_PROCESS),
    ]
    hot = [NR[name] for name in HOT]
    prog += [(_JEQ, len(hot) - i, 0, number) for i, number in enumerate(hot)]
    prog += [(_JA, 0, 0, 1), (_RET, 0, 0, SECCOMP_RET_ALLOW)]
    for rule in seccomp_rules(p, abi, pid, exec_path, guard_cpu):
        block: list[tuple[int, int, int, int]] = [(_LD_ABS, 0, 0, 0), (_JEQ, 0, -1, NR[rule.syscall])]
        for check in rule.checks:
            block.append((_LD_ABS, 0, 0, check.offset))
            if check.mask != FULL:
                block.append((_AND, 0, 0, check.mask))
            block.append((_JEQ, 0, -1, check.value))
        block.append((_RET, 0, 0, rule.action))
        # a failed test jumps past the block's end, to the next rule
        prog += [(c, jt, len(block) - i - 1 if jf == -1 else jf, k) for i, (c, jt, jf, k) in enumerate(block)]
    prog.append((_RET, 0, 0, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise SandboxError("the seccomp filter is too long")
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def install_seccomp(program: bytes) -> None:
    """Install ``program`` on this thread (and so on everything it execs and starts), after no_new_privs."""
    import ctypes

    filters = _buffer(program)
    fprog = _buffer(struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(filters)))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _syscall(SYS_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0), fprog)


# -- stage 2: the confined worker ------------------------------------------------------------------------------------


class Confinement:
    """What the confined worker knows of its sandbox: read from the brief the confiner left in a memory file."""

    def __init__(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            brief = json.loads(f.read())
        self.connection: dict[str, Any] = brief["connection"]
        self.fds: dict[int, int] = {int(port): fd for port, fd in brief["fds"].items()}
        self.config = SandboxConfig.loads(json.dumps(brief["config"]))
        self.rules = [Rule(path, rights, is_dir) for path, rights, is_dir in brief["rules"]]
        self.unenforced: list[str] = brief["unenforced"]

    def install(self) -> None:
        """The audit hook, and the warning if anything is not enforced. Before any target import."""
        sys.dont_write_bytecode = True
        isolate_module_folders()  # the modules beside its own are not its to import
        if self.config.permissions is not None:
            sys.addaudithook(AuditHook(self.config.permissions, self.rules).hook)
        if self.unenforced:
            _warn("WARNING: this wb-magic worker runs best-effort: NOT ENFORCED: " + "; ".join(self.unenforced))

    def adopt(self, kernel: Any) -> None:
        """Make the kernel's sockets take over the listening sockets the confiner bound (ZMQ_USE_FD)."""
        import zmq

        fds = self.fds

        class AdoptingSocket(zmq.Socket):
            def bind(self, addr: str) -> Any:
                port = addr.rpartition(":")[2]
                fd = fds.pop(int(port), None) if port.isdigit() else None
                if fd is not None:
                    self.setsockopt(zmq.USE_FD, fd)
                return super().bind(addr)

        kernel.context._socket_class = AdoptingSocket


# -- the audit hook: clear messages for what the kernel will deny --------------------------------------------------


class AuditHook:
    """Turns an attempt the sandbox will deny into a `PermissionError` that names the permission, before the
    kernel says a bare ``EACCES``/``EPERM``. It denies only what the kernel denies too: it is not the barrier."""

    def __init__(self, permissions: Permissions, rules: list[Rule]) -> None:
        self.p = permissions
        self.rules = rules
        self.pid = os.getpid()
        self.writable = [r.path for r in rules if r.rights & FS_WRITE_FILE and r.path != "/dev/null"]
        self.handlers: dict[str, Callable[[tuple[Any, ...]], None]] = {
            "open": self._open,
            "os.listdir": lambda a: self._path(a[0], FS_READ_DIR, "read"),
            "os.scandir": lambda a: self._path(a[0], FS_READ_DIR, "read"),
            "os.mkdir": lambda a: self._path(a[0], FS_MAKE_DIR, "write", a[2]),
            "os.rmdir": lambda a: self._path(a[0], FS_REMOVE_DIR, "write", a[1]),
            "os.remove": lambda a: self._path(a[0], FS_REMOVE_FILE, "write", a[1]),
            "os.rename": self._rename,
            "os.link": self._rename,
            "os.symlink": lambda a: self._path(a[1], FS_MAKE_SYM, "write", a[2]),
            "os.truncate": lambda a: self._path(a[0], FS_TRUNCATE, "write"),
            "os.chmod": self._metadata,
            "os.chown": self._metadata,
            "os.utime": self._metadata,
            "os.setxattr": self._metadata,
            "os.removexattr": self._metadata,
            "socket.__new__": self._socket,
            "socket.connect": self._address,
            "socket.sendto": self._address,
            "socket.sendmsg": self._address,
            "socket.bind": self._bind,
            "socket.getaddrinfo": self._lookup,
            "socket.gethostbyname": self._lookup,
            "socket.gethostbyaddr": self._lookup,
            "socket.getnameinfo": self._lookup,
            "subprocess.Popen": self._run,
            "os.exec": self._run,
            "os.posix_spawn": self._run,
            "os.spawn": self._run,
            "os.system": self._run,
            "os.fork": self._run,
            "os.forkpty": self._run,
            "os.kill": self._kill,
            "os.killpg": self._kill,
            "ctypes.dlopen": self._ffi,
            "import": self._import,
        }

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        handler = self.handlers.get(event)
        if handler is not None:
            handler(args)

    @staticmethod
    def message(permission: str, what: str) -> str:
        return f"Requires {permission} access to {what}, which this worker's Permissions do not grant"

    def deny(self, permission: str, what: str) -> PermissionError:
        return PermissionError(errno.EACCES, self.message(permission, what))

    # files
    def _open(self, args: tuple[Any, ...]) -> None:
        path, _, flags = args
        if not isinstance(flags, int) or flags & getattr(os, "O_PATH", 0):
            return
        access = flags & os.O_ACCMODE
        if access in (os.O_WRONLY, os.O_RDWR) or flags & (os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            self._path(path, FS_WRITE_FILE, "write")
        if access in (os.O_RDONLY, os.O_RDWR):
            self._path(path, FS_READ_FILE, "read")

    def _path(self, path: Any, right: int, permission: str, dir_fd: Any = None) -> None:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, (str, bytes)):
            return
        text = os.fsdecode(path)
        if not os.path.isabs(text) and dir_fd not in (None, -1):
            return  # relative to a folder descriptor we cannot see: the kernel decides
        real = _real(text)
        if right == FS_READ_FILE and os.path.isdir(real):
            right = FS_READ_DIR
        elif right == FS_WRITE_FILE and not os.path.exists(real):
            right = FS_MAKE_REG
        if allows(self.rules, real, right):
            return
        if not self.p.sys and (_within(real, "/proc") or _within(real, "/sys")):
            permission = "sys"
        raise self.deny(permission, repr(text))

    def _rename(self, args: tuple[Any, ...]) -> None:
        src, dst, src_dir_fd, dst_dir_fd = args
        self._path(src, FS_REMOVE_FILE, "write", src_dir_fd)
        self._path(dst, FS_MAKE_REG, "write", dst_dir_fd)

    def _metadata(self, args: tuple[Any, ...]) -> None:
        if self.p.write is not True:
            raise self.deny(
                "write", f"{args[0]!r}: changing a file's mode, owner, times or attributes needs write=True"
            )

    # network
    def _socket(self, args: tuple[Any, ...]) -> None:
        _, family, kind, _ = args
        if family == AF_UNIX or self.p.net is True:
            return  # socketpair() makes AF_UNIX socket objects too: the kernel tells the two apart
        if family in (AF_INET, AF_INET6) and self.p.net and kind & SOCK_TYPE_MASK == SOCK_STREAM:
            return
        what = "the network" if self.p.net is False else f"the network but TCP to ports {list(self.p.net)}"  # type: ignore[arg-type]
        raise self.deny("net", what)

    def _address(self, args: tuple[Any, ...]) -> None:
        address = args[1] if len(args) > 1 else None
        if isinstance(address, (str, bytes)):
            if not (self.p.net is True and self.p.sys):
                raise self.deny("net and sys", f"the local socket {address!r}")
        elif isinstance(address, tuple) and len(address) >= 2 and self.p.net is not True:
            if self.p.net is False or address[1] not in self.p.net:  # type: ignore[operator]
                raise self.deny("net", f"{address[0]}:{address[1]}")

    def _bind(self, args: tuple[Any, ...]) -> None:
        if self.p.net is not True:
            raise self.deny("net", f"listening on {args[1]!r}")

    def _lookup(self, args: tuple[Any, ...]) -> None:
        if self.p.net is False:
            raise self.deny("net", f"name resolution ({args[0]!r})")

    # processes
    def _run(self, args: tuple[Any, ...]) -> None:
        if not self.p.run:
            raise self.deny("run", f"start processes ({args[0]!r})" if args else "start processes")

    def _kill(self, args: tuple[Any, ...]) -> None:
        target = args[0]
        if self.p.run or target in (0, self.pid) or target == -os.getpgid(0):
            return
        raise self.deny("run", f"signal process {target} (a worker may signal only itself and its own children)")

    # native code
    def _ffi(self, args: tuple[Any, ...]) -> None:
        if not self.p.ffi:
            raise self.deny("ffi", f"load the native library {args[0]!r}")

    def _import(self, args: tuple[Any, ...]) -> None:
        """An import that would load a foreign-function interface fails as an `ImportError` (naming ffi), as the
        kernel would make it fail: libraries probe for ctypes with ``except ImportError``."""
        if self.p.ffi:
            return
        name, filename = args[0], args[1] if len(args) > 1 else None
        if name in FFI_MODULES or name in ("ctypes", "cffi"):
            raise ImportError(self.message("ffi", f"the foreign-function interface (import {name})"), name=name)
        if isinstance(filename, str) and filename.endswith(".so"):
            if any(_within(_real(filename), w) for w in self.writable):
                raise ImportError(self.message("ffi", f"a native module in a writable folder ({filename})"), name=name)


def _warn(text: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    print(text, file=stream, flush=True)
