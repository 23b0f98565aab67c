"""Stage zero of a sandbox, and pure: what a worker's `Permissions` mean on this machine.

`Plan` works out the Landlock rules (the paths a worker may read, write and execute, with the Jupyter runtime
folder and the foreign-function modules split out of every grant) and what this machine cannot enforce of them,
from the facts the confiner probed (`Machine`). It changes nothing (it may print a warning): the suite
unit-tests it without privileges.
The confiner (`confiner.py`) applies the plan; the confined worker (`confined.py`) mirrors its rules in the
audit hook. Nothing here imports ctypes.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..permissions import SandboxConfig

# -- Landlock's access rights (linux/landlock.h) ---------------------------------------------------------------

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

DEVICES = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/full")  # not /dev/zero: it maps as anonymous memory
NET_FILES = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf", "/etc/services",
    "/etc/protocols", "/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates",
)  # fmt: skip
BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
# extension modules that hand Python code a foreign-function interface or raw memory: unreadable without ffi
# (not the only way to raw memory: numpy's strides are another, see docs/security.md)
FFI_MODULES = ("_ctypes", "_ctypes_test", "_cffi_backend", "_testcapi", "_testinternalcapi", "_testbuffer",
               "_testmultiphase", "_testsinglephase", "_xxtestfuzz", "_testimportmultiple", "_testclinic")  # fmt: skip
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
WORKER_KERNEL = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package every worker runs


def warn_unenforced(unenforced: list[str]) -> None:
    """The loud warning of a best-effort sandbox, on stderr: what this machine does not enforce."""
    stream = sys.__stderr__ or sys.stderr
    print(
        "WARNING: this wb-magic worker runs best-effort: NOT ENFORCED: " + "; ".join(unenforced),
        file=stream,
        flush=True,
    )


class SandboxError(RuntimeError):
    """The sandbox cannot be enforced as configured: the worker refuses to start."""


@dataclass(frozen=True)
class Machine:
    """What this machine can enforce, as the confiner probed it: the Landlock ABI (0 for none), why seccomp
    filters cannot be installed (None if they can), and whether this process may remount folders (root)."""

    landlock_abi: int
    seccomp_problem: str | None
    can_remount: bool


# -- the rules --------------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """Landlock rights beneath ``path`` (a folder's rights cover everything in it)."""

    path: str
    rights: int
    is_dir: bool


def real_path(path: str) -> str:
    return os.path.realpath(path)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _grant(path: str, rights: int, hide: list[str]) -> list[Rule]:
    """Rules granting ``rights`` beneath ``path`` but not beneath the ``hide`` paths. Landlock has no deny
    rules and a folder's rights cover everything beneath it, so a folder holding a hidden path gets listing at
    most (none if a hidden folder is beneath it: listing would reach into that folder too), and its entries
    are granted one by one."""
    real = real_path(path)
    if not os.path.exists(real) or any(within(real, h) for h in hide):
        return []  # a missing or hidden path is not granted: the safe side
    is_dir = os.path.isdir(real)
    inside = [h for h in hide if within(h, real)]
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
        if rule.rights & right and (rule.path == path or (rule.is_dir and within(path, rule.path))):
            return True
    return False


def own_file(module_file: str) -> str:
    """What a sandboxed worker may read of its own module: the file alone, whatever its name. Never the folder
    around it, not even for an ``__init__.py``: the files beside it may be other tenants' code and secrets (a
    tenant may name its module ``__init__.py``), so a package's other files are granted by ``read``."""
    return real_path(module_file)


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

    zmq = importlib.util.find_spec("zmq")
    read.add(WORKER_KERNEL)
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
    executable = real_path(sys.executable)
    execute = [executable]
    interpreter = _elf_interpreter(executable)
    if interpreter:
        execute.append(real_path(interpreter))
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
    return sorted(real_path(f) for f in found)


class Plan:
    """The rules for one worker and what this machine can enforce of them. Side-effect free."""

    def __init__(
        self, config: SandboxConfig, connection: dict[str, Any], machine: Machine, hooks_file: str | None = None
    ) -> None:
        self.config = config
        self.machine = machine
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
        self.abi = self.machine.landlock_abi
        self.seccomp_problem = self.machine.seccomp_problem
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
        protected = [real_path(path) for path in self.config.protected]
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
                rules += _grant(own_file(own), READ | execute, hide)
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
        both = sorted({w for w in writable if any(within(w, r) or within(r, w) for r in readable)})
        folders = sorted({w if os.path.isdir(w) else os.path.dirname(w) for w in both})
        for folder in folders:
            if any(within(path, folder) for path in self.runtime):
                return [("ffi", f"{folder} is writable and holds the worker's own libraries")]
        self.noexec = folders
        if folders and not self.machine.can_remount:
            return [("ffi", f"{folders[0]} is readable and writable, and only root can remount it noexec")]
        return []

    def bind_ports(self) -> list[int]:
        ports = [self.connection.get(f"{channel}_port") for channel in CHANNELS]
        return [port for port in ports if isinstance(port, int) and 0 < port < 65536]
