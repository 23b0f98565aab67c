"""Escape attempts, run by the sandbox tests in an untrusted worker. Each does the real thing.

Functions named ``libc_*`` go around Python (and its audit hooks) with ctypes, straight to libc and the kernel:
they need ``ffi``, and report the errno the kernel answered (or what got through).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading


def hello(name: str) -> str:
    return f"Hello {name}"


# -- files --------------------------------------------------------------------------------------------------------


def read_file(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(200)


def os_open_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 200)
    finally:
        os.close(fd)


def write_file(path: str, text: str) -> int:
    with open(path, "w", encoding="utf-8") as f:
        return f.write(text)


def os_open_write(path: str, text: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return os.write(fd, text.encode())
    finally:
        os.close(fd)


def list_dir(path: str) -> list:
    return sorted(os.listdir(path))


def chmod(path: str, mode: int) -> None:
    os.chmod(path, mode)


def _libc():
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)
    return ctypes, lib


def _errno(ctypes) -> str:
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def libc_open(path: str, write: bool = False) -> str:
    ctypes, lib = _libc()
    flags = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
    fd = lib.open(path.encode(), flags, 0o600)
    if fd < 0:
        return _errno(ctypes)
    data = b"written" if write else b""
    if write:
        lib.write(fd, data, len(data))
    else:
        buf = ctypes.create_string_buffer(200)
        n = lib.read(fd, buf, 200)
        data = buf.raw[: max(n, 0)]
    lib.close(fd)
    return "opened: " + data.decode(errors="replace")


def libc_chmod(path: str, mode: int) -> str:
    ctypes, lib = _libc()
    return "changed" if lib.chmod(path.encode(), mode) == 0 else _errno(ctypes)


# -- network ------------------------------------------------------------------------------------------------------


def tcp_connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"escaped")
    return "connected"


def udp_send(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"escaped", ("127.0.0.1", port))
    return "sent"


def tcp_listen() -> int:
    s = socket.socket()
    s.listen()
    return s.getsockname()[1]


def _sockaddr_in(ctypes, port: int):
    import struct

    raw = struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton("127.0.0.1"))
    raw = struct.pack("=H", socket.AF_INET) + raw[2:]  # sin_family is in host order
    return ctypes.create_string_buffer(raw, 16)


def libc_tcp_connect(port: int) -> str:
    """socket() and connect() straight to the kernel; and TCP Fast Open, which connects from sendto()."""
    ctypes, lib = _libc()
    fd = lib.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    if fd < 0:
        return "socket: " + _errno(ctypes)
    try:
        if lib.connect(fd, _sockaddr_in(ctypes, port), 16) == 0:
            return "connected"
        connect = _errno(ctypes)
    finally:
        lib.close(fd)
    fd = lib.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    try:
        sent = lib.sendto(fd, b"escaped", 7, 0x20000000, _sockaddr_in(ctypes, port), 16)  # MSG_FASTOPEN
        return "fastopen sent" if sent >= 0 else f"connect: {connect}, fastopen: {_errno(ctypes)}"
    finally:
        lib.close(fd)


IPPROTO_SCTP, IPPROTO_MPTCP = 132, 262


def libc_stream_protocols(port: int) -> dict:
    """socket() and connect() to 127.0.0.1:port, straight to the kernel, for every kind of connected socket but
    plain TCP that an IP family offers: MPTCP and SCTP (one-to-one streams, seqpacket), over IPv4 and IPv6
    (v4-mapped). Landlock's port rules are about TCP only."""
    import struct

    ctypes, lib = _libc()
    v4 = _sockaddr_in(ctypes, port)
    raw6 = struct.pack("=H", socket.AF_INET6) + struct.pack(
        "!HI16sI", port, 0, socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1"), 0
    )
    v6 = ctypes.create_string_buffer(raw6, 28)
    outcome = {}
    for family, address, size in ((socket.AF_INET, v4, 16), (socket.AF_INET6, v6, 28)):
        for kind, protocol in ((socket.SOCK_STREAM, IPPROTO_MPTCP), (socket.SOCK_STREAM, IPPROTO_SCTP),
                               (socket.SOCK_SEQPACKET, IPPROTO_SCTP), (socket.SOCK_STREAM, 99)):  # fmt: skip
            name = f"{family.name}/{socket.SocketKind(kind).name}/{protocol}"
            fd = lib.socket(family, kind | socket.SOCK_CLOEXEC, protocol)
            if fd < 0:
                outcome[name] = "socket: " + _errno(ctypes)
                continue
            try:
                ok = lib.connect(fd, address, size) == 0 and lib.send(fd, b"escaped", 7, 0) == 7
                outcome[name] = "connected" if ok else "connect: " + _errno(ctypes)
            finally:
                lib.close(fd)
    return outcome


def inherited_sockets() -> dict:
    """The TCP sockets this worker holds, by descriptor: ZeroMQ's listening sockets (which the confiner bound and
    the worker inherited) and the connections it accepted on them, as {fd: (local port, listening)}. Found with
    libc: Python's socket module will not wrap them without net."""
    ctypes, lib = _libc()
    found = {}
    for fd in range(3, 256):
        values = []
        for option in (39, 3, 30):  # SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN
            value, size = ctypes.c_int(0), ctypes.c_uint32(4)
            if lib.getsockopt(fd, socket.SOL_SOCKET, option, ctypes.byref(value), ctypes.byref(size)) != 0:
                break
            values.append(value.value)
        if len(values) == 3 and values[0] == socket.AF_INET and values[1] == socket.SOCK_STREAM:
            address, size = ctypes.create_string_buffer(16), ctypes.c_uint32(16)
            lib.getsockname(fd, address, ctypes.byref(size))
            found[fd] = (int.from_bytes(address.raw[2:4], "big"), bool(values[2]))
    return found


def _fastopen(ctypes, lib, fd: int, port: int, how: str) -> int:
    address = _sockaddr_in(ctypes, port)
    data = ctypes.create_string_buffer(b"escaped", 7)
    if how == "connect":
        return lib.connect(fd, address, 16)
    if how == "sendto":
        return lib.sendto(fd, data, 7, MSG_FASTOPEN, address, 16)

    class IOVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IOVec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]  # fmt: skip

    class MMsgHdr(ctypes.Structure):
        _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

    iov = IOVec(ctypes.addressof(data), 7)
    header = MsgHdr(ctypes.addressof(address), 16, ctypes.pointer(iov), 1, None, 0, 0)
    if how == "sendmsg":
        return lib.sendmsg(fd, ctypes.byref(header), MSG_FASTOPEN)
    return lib.sendmmsg(fd, ctypes.byref(MMsgHdr(header, 0)), 1, MSG_FASTOPEN)


MSG_FASTOPEN = 0x20000000


def _reached(ctypes, result: int) -> str:
    if result >= 0 or ctypes.get_errno() == errno.EINPROGRESS:  # a non-blocking socket's SYN is on its way
        return "reached it"
    return _errno(ctypes)


def libc_reuse_inherited_sockets(port: int) -> dict:
    """Reach ``port`` on 127.0.0.1 without socket(): take sockets this worker already holds, hide them from
    ZeroMQ (out of its epoll sets, so that it does not notice), free them for a new connection (``shutdown`` a
    listening one, ``connect(AF_UNSPEC)`` an accepted one), then connect, or send with TCP Fast Open (a connect
    inside sendto, sendmsg or sendmmsg). Returns what each attempt got."""
    ctypes, lib = _libc()
    sockets = inherited_sockets()
    listening = sorted((fd for fd, (_, listens) in sockets.items() if listens), reverse=True)
    # the accepted connections of the heartbeat and control channels (the last two bound): not the shell's,
    # whose connection carries this very call
    spare_ports = {sockets[fd][0] for fd in listening[:2]}
    connected = [fd for fd, (local, listens) in sockets.items() if not listens and local in spare_ports]
    for fd in [*listening[:4], *connected[:2]]:
        for epoll in range(256):  # EPOLL_CTL_DEL from every epoll set (fails harmlessly for other descriptors)
            lib.epoll_ctl(epoll, 2, fd, None)
    outcome = {}
    for fd, how in zip(listening, ("connect", "sendto", "sendmsg", "sendmmsg"), strict=False):
        lib.shutdown(fd, socket.SHUT_RDWR)
        outcome[f"listening socket, {how}"] = _reached(ctypes, _fastopen(ctypes, lib, fd, port, how))
    unspec = ctypes.create_string_buffer(16)  # sa_family 0: AF_UNSPEC, which disconnects a TCP socket
    for fd, how in zip(connected, ("connect", "sendto"), strict=False):
        lib.connect(fd, unspec, 16)
        outcome[f"accepted connection, {how}"] = _reached(ctypes, _fastopen(ctypes, lib, fd, port, how))
    return outcome


def _is_socket(fd: int, stat) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def python_reuse_inherited_socket(port: int) -> str:
    """The same through Python's socket module (the audit hook sees it)."""
    import stat

    fd = next(fd for fd in range(3, 256) if _is_socket(fd, stat))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)
        sock.sendto(b"escaped", 0x20000000, ("127.0.0.1", port))
    return "reached it"


def libc_udp_send(port: int) -> str:
    ctypes, lib = _libc()
    fd = lib.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)
    if fd < 0:
        return "socket: " + _errno(ctypes)
    try:
        sent = lib.sendto(fd, b"escaped", 7, 0, _sockaddr_in(ctypes, port), 16)
        return "sent" if sent >= 0 else "sendto: " + _errno(ctypes)
    finally:
        lib.close(fd)


def abstract_unix_connect(name: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect("\0" + name)
    return "connected"


def socketpair_works() -> bytes:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"pair")
        return b.recv(4)


# -- the host's terminal, pipe or log file ---------------------------------------------------------------------

FORGED = b"host: a line forged by the worker\n"
ESCAPES = b"\x1b]0;window title\x07\x1b]52;c;Y2xpcGJvYXJk\x07\x9b2J\x1b[2J\r"  # title, clipboard, clear screen
_stolen: list = []


def _outcome(action, *args) -> str:
    try:
        result = action(*args)
    except OSError as exc:  # termios.error is not one: it carries (errno, text) all the same
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except Exception as exc:
        return errno.errorcode.get(exc.args[0], str(exc)) if exc.args and isinstance(exc.args[0], int) else str(exc)
    return "done" if result is None else result


def stdio_attacks() -> dict:
    """What a worker whose fds 0-2 were the host's could do to them: read the keystrokes waiting on a terminal,
    turn its echo off, truncate a log file, and write escape sequences and lines that look like the host's."""
    import select
    import termios

    def read(fd: int) -> str:
        if not select.select([fd], [], [], 0)[0]:
            return "nothing to read"
        return os.read(fd, 200).decode(errors="replace")

    def echo_off(fd: int) -> None:
        attributes = termios.tcgetattr(fd)
        attributes[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attributes)

    outcome = {}
    for fd in (0, 1, 2):
        outcome[f"read {fd}"] = _outcome(read, fd)
        outcome[f"echo off {fd}"] = _outcome(echo_off, fd)
        outcome[f"truncate {fd}"] = _outcome(os.ftruncate, fd, 0)
    for fd in (1, 2):
        outcome[f"write {fd}"] = _outcome(os.write, fd, ESCAPES + b"\n" + FORGED)
    return outcome


def open_stdout() -> dict:
    """Reopen its stdout for reading (a pipe's write end, reopened, reads the pipe): to read what the host
    writes to the same pipe later."""
    outcome = {}
    for path in ("/dev/stdout", "/proc/self/fd/1", "/dev/tty"):
        try:
            _stolen.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            outcome[path] = "opened"
        except OSError as exc:
            outcome[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    return outcome


def read_stolen() -> str:
    got = []
    for fd in _stolen:
        try:
            got.append(os.read(fd, 4096).decode(errors="replace"))
        except OSError:
            pass
    return "".join(got)


def flood_newlines(megabytes: int) -> int:
    """Empty lines straight to fd 2: each would come out with the host's label in front of it."""
    for _ in range(megabytes * 16):
        os.write(2, b"\n" * 65536)
    return megabytes


def flood_stderr(megabytes: int) -> int:
    """Lines of 100 bytes and one long line, straight to fd 2: more than the host should show."""
    line = b"x" * 99 + b"\n"
    for _ in range(megabytes * 10_000):
        os.write(2, line)
    os.write(2, b"y" * 100_000 + b"\n")
    return megabytes


def crash_with_stderr() -> None:
    """End the process as a crash does, after writing its last words (with escape sequences) to stderr."""
    os.write(2, b"Traceback (most recent call last):\n  the worker crashed \x1b[31min red\x1b[0m\n")
    os._exit(3)


# -- processes ----------------------------------------------------------------------------------------------------


def run_subprocess() -> str:
    return subprocess.run(["/bin/echo", "escaped"], capture_output=True, text=True, check=True).stdout


def python_child(code: str) -> list:
    """A child interpreter (run allowed): it has no audit hook of ours, only what the kernel enforces."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return [done.returncode, done.stdout, done.stderr]


def execv() -> None:
    os.execv("/bin/echo", ["echo", "escaped"])


def fork_bomb() -> int:
    children = 0
    while True:
        if os.fork() == 0:
            os._exit(0)
        children += 1


def libc_fork_bomb(tries: int) -> dict:
    """fork(), vfork-less clone() and execve() straight to the kernel, ``tries`` times each."""
    ctypes, lib = _libc()
    lib.syscall.restype = ctypes.c_long
    outcome: dict = {}
    for name, call in (
        ("fork", lambda: lib.fork()),
        ("clone", lambda: lib.syscall(56, signal.SIGCHLD, 0, 0, 0, 0)),
        ("clone3", lambda: lib.syscall(435, 0, 0)),
    ):
        made = 0
        for _ in range(tries):
            pid = call()
            if pid == 0:
                os._exit(0)
            if pid > 0:
                made += 1
            else:
                outcome[name + " errno"] = _errno(ctypes)
        outcome[name] = made
    argv = (ctypes.c_char_p * 3)(b"/bin/echo", b"escaped", None)
    lib.execve(b"/bin/echo", argv, None)
    outcome["execve errno"] = _errno(ctypes)
    return outcome


def children() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


# -- the host and other processes -----------------------------------------------------------------------------------


def environ(name: str) -> str | None:
    return os.environ.get(name)


def environ_names() -> list:
    return sorted(os.environ)


def kill(pid: int, sig: int) -> None:
    os.kill(pid, sig)


def libc_kill(pid: int, sig: int) -> str:
    ctypes, lib = _libc()
    return "signalled" if lib.kill(pid, sig) == 0 else _errno(ctypes)


def libc_ptrace(pid: int) -> str:
    ctypes, lib = _libc()
    lib.ptrace.restype = ctypes.c_long
    return "attached" if lib.ptrace(16, pid, None, None) == 0 else _errno(ctypes)  # PTRACE_ATTACH


def libc_process_vm_readv(pid: int, address: int) -> str:
    ctypes, lib = _libc()

    class IOVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    buf = ctypes.create_string_buffer(64)
    local = IOVec(ctypes.addressof(buf), 64)
    remote = IOVec(address, 64)
    lib.process_vm_readv.restype = ctypes.c_ssize_t
    n = lib.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return f"read {n} bytes" if n >= 0 else _errno(ctypes)


def libc_prlimit(pid: int) -> str:
    """Lower another process's CPU limit to one second: a way to kill it that no signal check sees."""
    ctypes, lib = _libc()
    limit = (ctypes.c_ulong * 2)(1, 1)
    return "lowered" if lib.prlimit(pid, 0, limit, None) == 0 else _errno(ctypes)  # RLIMIT_CPU


# -- resources ----------------------------------------------------------------------------------------------------


def memory_hog() -> int:
    chunks = []
    while True:
        chunks.append(bytearray(16 << 20))


def thread_bomb() -> int:
    stop = threading.Event()
    try:
        while True:
            threading.Thread(target=stop.wait, daemon=True).start()
    finally:
        stop.set()


def socket_hoard(pairs: int, buffer: int = 0) -> dict:
    """Kernel memory outside the address space: connected socket pairs, each end's buffer (raised to
    ``buffer`` bytes if given) filled with bytes nobody reads. What it got, what the kernel queued."""
    keep: list = []
    queued, error = 0, None
    chunk = b"x" * 65536
    try:
        for _ in range(pairs):
            a, b = socket.socketpair()
            keep += (a, b)
            for s in (a, b):
                if buffer:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        queued += s.send(chunk)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        for s in keep:
            s.close()
    return {"pairs": len(keep) // 2, "queued": queued, "error": error}


def pipe_hoard(pipes: int, size: int) -> int:
    """The same with pipes, each grown to ``size`` bytes (F_SETPIPE_SZ) and filled: the bytes queued."""
    import fcntl

    keep: list = []
    queued = 0
    try:
        for _ in range(pipes):
            r, w = os.pipe()
            keep += (r, w)
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
            os.set_blocking(w, False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    queued += os.write(w, b"x" * 65536)
    finally:
        for fd in keep:
            os.close(fd)
    return queued


def numpy_raw_memory() -> bytes:
    """Without ffi, numpy still reads and writes any address of the process: as_strided makes a view whose
    stride is the distance from an array's data to the target (here, an immutable bytes object's contents)."""
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    target = bytes(bytearray(b"immutable bytes!"))  # a new object, not the code constant
    base = np.zeros(1, dtype=np.uint8)
    distance = id(target) + sys.getsizeof(b"") - 1 - base.__array_interface__["data"][0]  # to ob_sval
    view = as_strided(base, shape=(2, len(target)), strides=(distance, 1), writeable=True)
    if bytes(view[1]) != target:
        return b"not read: " + bytes(view[1])
    view[1] = np.frombuffer(b"REWRITTEN BYTES!", dtype=np.uint8)
    return target


def cpu_limit() -> tuple:
    """RLIMIT_CPU as the worker has it, and the CPU seconds it has used so far."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    return (*resource.getrlimit(resource.RLIMIT_CPU), used.ru_utime + used.ru_stime)


def metadata(path: str) -> dict:
    """What a worker learns of a path it may not read: stat, readlink, listxattr."""
    found = {"size": os.stat(path, follow_symlinks=False).st_size}
    with contextlib.suppress(OSError):
        found["link"] = os.readlink(path)
    with contextlib.suppress(OSError):
        found["xattrs"] = os.listxattr(path, follow_symlinks=False)
    return found


def spin() -> None:
    while True:
        pass


def handle_sigxcpu() -> None:
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)


def exec_map(path: str) -> str:
    """Map a file executable (read-only, as the dynamic loader maps a library's code)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC):
        return "mapped"


def plant_library(source: str, folder: str) -> str:
    """Copy a native extension module into a folder, and import it from there."""
    import importlib
    import shutil

    target = os.path.join(folder, os.path.basename(source))
    shutil.copyfile(source, target)
    sys.path.insert(0, folder)
    name = os.path.basename(source).split(".")[0]
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    importlib.import_module(name)
    return "imported"


def sys_path() -> list:
    return list(sys.path)


# -- what the worker is made of -------------------------------------------------------------------------------------


def loaded(name: str) -> bool:
    return name in sys.modules


def import_module(name: str) -> str:
    __import__(name)
    return name


def python_exec_memory(path: str | None = None) -> str:
    """Writable executable memory through Python's own mmap module, anonymous or a private copy of a file it
    can read: the start of shellcode without ctypes."""
    import mmap

    prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    if path is None:
        with mmap.mmap(-1, 4096, prot=prot):
            return "mapped"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=prot):
        return "mapped"
