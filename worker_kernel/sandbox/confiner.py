"""Stage one of a sandbox, the confiner: probe the machine, plan, confine this process, and ``execve`` the
confined worker (stage two, `confined.py`) in a fresh image.

It reads its connection file, binds the five listening sockets itself (the confined worker never needs
``socket()``, ``bind()`` or ``listen()``), writes a brief for stage two into a memory file, then: a private
mount namespace with the readable-and-writable folders ``noexec`` (without ``ffi``), no new privileges, every
capability dropped (the bounding set too, securebits locked), the Landlock domain, the resource limits, and the
seccomp filter. The filter lets exactly one ``execve`` through when ``run`` is denied: this one (its path
pointer). If this machine cannot enforce what the plan must deny, the worker refuses to start instead.

Everything here goes through raw system calls with ctypes: this module is the only one of the package that
imports it, and the confined image never imports this module.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from ..connection_file import write_connection_file
from ..permissions import REFUSED_EXIT_CODE, SandboxConfig, refusal_file
from ..procstatus import has_capability, read_status
from .plan import (
    CHANNELS,
    FS_FILE_RIGHTS,
    FS_IOCTL_DEV,
    FS_REFER,
    FS_TRUNCATE,
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    SCOPE_SIGNAL,
    WORKER_KERNEL,
    Machine,
    Plan,
    Rule,
    SandboxError,
    warn_unenforced,
)
from .seccomp import SECCOMP_RET_ERRNO, seccomp_program

# -- constants (linux/landlock.h, linux/seccomp.h, linux/capability.h, linux/prctl.h, sys/mount.h) -------------

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
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21


# -- raw system calls -----------------------------------------------------------------------------

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


def probe_machine() -> Machine:
    """What this machine can enforce (a `Machine` for the plan)."""
    return Machine(landlock_abi(), seccomp_problem(), _has_capability(CAP_SYS_ADMIN))


def _has_capability(cap: int) -> bool:
    return has_capability(read_status(), cap)


def install_seccomp(program: bytes) -> None:
    """Install ``program`` on this thread (and so on everything it execs and starts), after no_new_privs."""
    import ctypes

    filters = _buffer(program)
    fprog = _buffer(struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(filters)))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _syscall(SYS_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0), fprog)


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
        plan = Plan(config, connection, probe_machine(), _hooks_file(argv))
        if config.permissions is None or not sys.platform.startswith("linux"):
            _limits(config)
            if plan.unenforced:
                warn_unenforced(plan.unenforced)
            return
        brief = _prepare(plan, connection, connection_file)
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
    init = os.path.join(WORKER_KERNEL, "__init__.py")
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
    from ..loader import resolve_module, source_path

    spec = argv[argv.index("--hooks") + 1].partition(":")[0]
    try:
        return source_path(resolve_module(spec))
    except (ImportError, ValueError):
        return None


def _prepare(plan: Plan, connection: dict[str, Any], connection_file: str) -> int:
    """Bind the listening sockets (the confined worker cannot), and write the brief for the confined worker
    into a memory file; returns its descriptor. A port taken since the launcher chose it is replaced by another
    (the broker reads a sandboxed worker through its lane only), and the connection file says so, for a console."""
    fds: dict[str, int] = {}
    ip = str(connection.get("ip", "127.0.0.1"))
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    moved = False
    for channel in CHANNELS:
        port = connection.get(f"{channel}_port")
        if not isinstance(port, int) or not 0 < port < 65536:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            sock.bind((ip, 0))
            port = connection[f"{channel}_port"] = sock.getsockname()[1]
            moved = True
        sock.listen(100)
        fd = sock.detach()
        os.set_inheritable(fd, True)
        fds[str(port)] = fd
    if moved:
        write_connection_file(connection_file, connection)
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


# Open files of a sandboxed worker (RLIMIT_NOFILE). A worker holds about 25 (ZeroMQ's sockets and their
# epoll and eventfds, the lane, asyncio's self-pipe, stdio), at fd numbers below 40. The limit bounds the
# kernel memory a worker can pin outside its address space: every socket's and pipe's queued bytes (seccomp
# keeps their buffers at the system's defaults), and the fds in flight over its sockets (counted against it).
OPEN_FILES = 256


def _limits(config: SandboxConfig) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.permissions is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        files = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
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
