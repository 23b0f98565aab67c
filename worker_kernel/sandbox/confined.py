"""Stage two of a sandbox, the confined worker: a fresh interpreter image that inherits the confiner's Landlock
domain, seccomp filter, limits and lack of privileges, irrevocably.

It reads the brief the confiner left in a memory file (`Confinement`), installs the audit hook that turns what
the kernel will deny into a `PermissionError` naming the permission (`AuditHook`: clear messages, not the
barrier), and has the kernel's ZeroMQ sockets adopt the listening sockets the confiner bound. It never imports
ctypes (so ``ffi=False`` means no foreign-function interface at all), nor the confiner: a test checks
``sys.modules``.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ..loader import isolate_module_folders
from ..permissions import Permissions, SandboxConfig
from .plan import (
    FFI_MODULES,
    FS_MAKE_DIR,
    FS_MAKE_REG,
    FS_MAKE_SYM,
    FS_READ_DIR,
    FS_READ_FILE,
    FS_REMOVE_DIR,
    FS_REMOVE_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
    Rule,
    allows,
    real_path,
    warn_unenforced,
    within,
)
from .seccomp import AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK

# -- the brief ------------------------------------------------------------------------------------


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
            warn_unenforced(self.unenforced)

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
        real = real_path(text)
        if right == FS_READ_FILE and os.path.isdir(real):
            right = FS_READ_DIR
        elif right == FS_WRITE_FILE and not os.path.exists(real):
            right = FS_MAKE_REG
        if allows(self.rules, real, right):
            return
        if not self.p.sys and (within(real, "/proc") or within(real, "/sys")):
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
            if any(within(real_path(filename), w) for w in self.writable):
                raise ImportError(self.message("ffi", f"a native module in a writable folder ({filename})"), name=name)
