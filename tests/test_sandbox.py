"""The escape suite: real attempts from untrusted workers, each denied by the kernel (and named by the audit hook).

Every attempt is the real thing: files that exist, a listener on 127.0.0.1 that counts what reaches it, the
host's own pid and /proc files, another worker's connection file, a fork bomb and a memory hog. The ``libc_*``
attempts go around Python with ctypes (``ffi=True``), so what stops them is the kernel, not the audit hook.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import zmq
from jupyter_core.paths import jupyter_runtime_dir

from wb_magic import CallTimeout, Permissions, WorkerBroker, WorkerDied, WorkerSpec, WorkerStartError
from wb_magic.launcher import SANDBOX_ENV
from worker_kernel.permissions import SandboxConfig
from worker_kernel.procstatus import is_confined, read_status
from worker_kernel.sandbox.confiner import landlock_abi
from worker_kernel.sandbox.plan import (
    FS_READ_DIR,
    FS_READ_FILE,
    FS_WRITE_FILE,
    WORKER_KERNEL,
    Machine,
    Plan,
    SandboxError,
    allows,
)
from worker_kernel.sandbox.seccomp import HOT, NR, seccomp_program, seccomp_rules

WORKERS = Path(__file__).parent / "workers"
UNTRUSTED = WORKERS / "untrusted"
ATTACKS = str(UNTRUSTED / "attacks.py")
HOST = os.getpid()

LINUX_X86_64 = sys.platform.startswith("linux") and os.uname().machine == "x86_64"
# Only the tests that run real sandboxed workers need Landlock ABI 6+ (signal and abstract-socket scoping); the
# fail-closed tests and the filter-alone tests need seccomp on Linux x86_64; the plan's tests need nothing.
needs_landlock = pytest.mark.skipif(
    not LINUX_X86_64 or landlock_abi() < 6, reason="a sandboxed worker here needs Linux on x86_64, Landlock ABI 6+"
)
needs_seccomp = pytest.mark.skipif(not LINUX_X86_64, reason="the seccomp filter is for Linux on x86_64")


@pytest.fixture
def sandbox():
    """``sandbox(permissions, **spec)``: a broker whose untrusted workers run with ``permissions`` (by default
    reading only their own module), and the proxy of the attack module. Skips where Landlock ABI 6+ is missing."""
    if not LINUX_X86_64 or landlock_abi() < 6:
        pytest.skip("a sandboxed worker here needs Linux on x86_64 with Landlock ABI 6 or later")
    brokers = []

    def make(permissions: Permissions | None = None, target: str = ATTACKS, call_policy=None, **spec):
        def construct(module, segregation_id):
            if "/untrusted/" in module:
                return WorkerSpec(permissions=permissions or Permissions(read=[module]), **spec)
            return WorkerSpec()

        broker = WorkerBroker(worker_constructor=construct, call_timeout=60, call_policy=call_policy)
        brokers.append(broker)
        return broker, broker.worker_proxy(target)

    yield make
    for broker in brokers:
        broker.close()


class Listener:
    """A TCP and a UDP socket on 127.0.0.1 that count what reaches them. Loopback delivers synchronously: once
    an attempt has returned, whatever got through is already queued here."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.port = self.tcp.getsockname()[1]
        self.udp_port = self.udp.getsockname()[1]
        self.connections = 0
        self.datagrams = 0

    def count(self) -> tuple[int, int]:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except BlockingIOError:
                break
            conn.close()
            self.connections += 1
        while True:
            try:
                self.udp.recv(100)
            except BlockingIOError:
                break
            self.datagrams += 1
        return self.connections, self.datagrams

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def listener():
    found = Listener()
    yield found
    found.close()


@pytest.fixture
def files(tmp_path):
    """A secret outside every grant, a folder the worker may read, and one it may write."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    readable = tmp_path / "readable"
    readable.mkdir()
    (readable / "data.txt").write_text("shared data")
    writable = tmp_path / "writable"
    writable.mkdir()
    return secret, readable, writable


def _permission_error(excinfo: pytest.ExceptionInfo, permission: str) -> None:
    assert f"Requires {permission} access" in str(excinfo.value), str(excinfo.value)


# -- a sandboxed worker still works -------------------------------------------------------------------------------


def _allow_hello(source_module, source_sid, module, sid, function):
    return True if module == str(WORKERS / "hello.py") else None  # a trusted target, opted into explicitly


def test_a_sandboxed_worker_serves_calls_output_and_other_workers(sandbox, capsys):
    broker, attacks = sandbox(call_policy=_allow_hello)
    assert attacks.hello("sandbox") == "Hello sandbox"
    assert attacks.socketpair_works() == b"pair"  # asyncio's self-pipe kind of socket still works
    for name in ("ctypes", "_ctypes", "worker_kernel.sandbox.confiner"):
        assert attacks.loaded(name) is False, name  # the confined image never loaded ctypes, nor the confiner
    assert attacks.loaded("worker_kernel.sandbox.confined") is True
    relay = broker.worker_proxy(UNTRUSTED / "relay.py")
    assert relay.greet("through the broker") == "Hello through the broker"  # worker to worker, from the sandbox
    assert "relaying through the broker" in capsys.readouterr().out


def test_the_worker_process_holds_no_privilege(sandbox):
    broker, attacks = sandbox()
    attacks.hello("x")
    worker = broker.worker_for(ATTACKS)
    status = read_status(worker.pid)
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2") and is_confined(status)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[name], 16) == 0, name
    assert read_status(2**22 + 1) == {} and not is_confined({})  # past the largest pid: no such process


def test_interrupts_and_timeouts_still_reach_a_sandboxed_worker(sandbox):
    broker, attacks = sandbox()
    with pytest.raises(CallTimeout):
        broker.worker_fn_proxy(ATTACKS, "spin", timeout=1)()
    assert attacks.hello("after the interrupt") == "Hello after the interrupt"


# -- files ----------------------------------------------------------------------------------------------------------


def test_reading_outside_its_paths_is_denied(sandbox, files):
    secret, readable, _ = files
    _, attacks = sandbox(Permissions(read=[ATTACKS, readable]))
    for attempt in (attacks.read_file, attacks.os_open_read):
        with pytest.raises(PermissionError) as excinfo:
            attempt(str(secret))
        _permission_error(excinfo, "read")
    with pytest.raises(PermissionError):
        attacks.list_dir(str(secret.parent))
    assert attacks.read_file(str(readable / "data.txt")) == "shared data"
    assert attacks.list_dir(str(readable)) == ["data.txt"]
    for system_file in ("/etc/passwd", "/etc/hostname", os.path.expanduser("~/.bashrc")):
        if os.path.exists(system_file):
            with pytest.raises(PermissionError):
                attacks.read_file(system_file)


def test_what_is_visible_anyway_of_a_path_it_may_not_read(sandbox, files):
    """Not enforced (docs/security.md): a file's metadata and a link's target, wherever the path is."""
    secret, _, _ = files
    link = secret.parent / "link"
    link.symlink_to(secret)
    _, attacks = sandbox()
    with pytest.raises(PermissionError):
        attacks.read_file(str(secret))
    assert attacks.metadata(str(secret))["size"] == len("the host's secret")
    assert attacks.metadata(str(link))["link"] == str(secret)
    assert "xattrs" in attacks.metadata(str(secret))


def test_writing_outside_its_paths_is_denied(sandbox, files):
    secret, readable, writable = files
    _, attacks = sandbox(Permissions(read=[ATTACKS, readable], write=[writable]))
    for attempt in (attacks.write_file, attacks.os_open_write):
        for target in (secret, readable / "data.txt", secret.parent / "new.txt"):
            with pytest.raises(PermissionError) as excinfo:
                attempt(str(target), "overwritten")
            _permission_error(excinfo, "write")
    assert secret.read_text() == "the host's secret"
    assert (readable / "data.txt").read_text() == "shared data"
    assert not (secret.parent / "new.txt").exists()
    assert attacks.write_file(str(writable / "out.txt"), "allowed") == 7
    assert (writable / "out.txt").read_text() == "allowed"
    mode = secret.stat().st_mode
    with pytest.raises(PermissionError) as excinfo:
        attacks.chmod(str(secret), 0o777)
    _permission_error(excinfo, "write")
    assert secret.stat().st_mode == mode


def test_the_modules_beside_its_own_are_out_of_reach(sandbox):
    """Another tenant's module in the same folder: not readable, not listable, not importable."""
    neighbour = UNTRUSTED / "neighbour.py"
    _, attacks = sandbox(Permissions(read=[ATTACKS], ffi=True))
    with pytest.raises(PermissionError) as excinfo:
        attacks.read_file(str(neighbour))
    _permission_error(excinfo, "read")
    with pytest.raises(PermissionError):
        attacks.list_dir(str(UNTRUSTED))
    with pytest.raises(ModuleNotFoundError):
        attacks.import_module("neighbour")
    assert str(UNTRUSTED) not in attacks.sys_path()
    assert attacks.libc_open(str(neighbour)) == "EACCES"  # the kernel's answer, around the audit hook
    assert attacks.read_file(ATTACKS).startswith('"""Escape attempts')  # its own module it reads


def test_a_module_named_init_reads_its_own_file_only(sandbox, tmp_path):
    """A tenant's module called ``__init__.py`` in a shared folder: its own file, not its neighbours. A package's
    other files are the package's only when ``read`` grants its folder; hooks get their own file."""
    tenants = tmp_path / "untrusted"
    tenants.mkdir()
    init = tenants / "__init__.py"
    init.write_text((UNTRUSTED / "attacks.py").read_text())
    (tenants / "other.py").write_text("SECRET = 1\n")
    (tenants / "data.txt").write_text("the package's own data")
    (tmp_path / "hooks_dir").mkdir()
    (tmp_path / "hooks_dir" / "beside_the_hooks.txt").write_text("not for workers")
    hooks = tmp_path / "hooks_dir" / "hooks.py"
    hooks.write_text((WORKERS / "hooks.py").read_text())
    _, attacks = sandbox(Permissions(), target=str(init), hooks=str(hooks))
    assert attacks.hello("x") == "Hello x"
    assert attacks.read_file(str(init)).startswith('"""Escape attempts')
    for denied in (tenants / "other.py", tenants / "data.txt", tmp_path / "hooks_dir" / "beside_the_hooks.txt"):
        with pytest.raises(PermissionError):
            attacks.read_file(str(denied))
    with pytest.raises(PermissionError):
        attacks.list_dir(str(tenants))
    assert attacks.read_file(str(hooks)).startswith('"""Entry hooks')
    _, package = sandbox(Permissions(read=[tenants]), target=str(init))
    assert package.read_file(str(tenants / "data.txt")) == "the package's own data"


def test_a_module_replaced_by_a_new_file_needs_a_new_worker(sandbox, tmp_path):
    """The grant is of the module's file as it was at launch (Landlock holds the file, not its name)."""
    module = tmp_path / "untrusted" / "edited.py"
    module.parent.mkdir()
    module.write_text("def version():\n    return 1\n")
    broker, edited = sandbox(Permissions(), target=str(module))
    assert edited.version() == 1
    module.write_text("def version():\n    return 2\n")  # rewritten in place: the same file
    broker.worker_import(module, cache_buster=1)
    assert edited.version() == 2
    replacement = tmp_path / "untrusted" / "edited.py.new"
    replacement.write_text("def version():\n    return 3\n")
    os.replace(replacement, module)  # saved by renaming: a new file
    with pytest.raises(PermissionError):
        broker.worker_import(module, cache_buster=2)
    assert broker.remove_worker(module)
    assert edited.version() == 3


def test_libc_open_and_chmod_are_denied_by_the_kernel(sandbox, files):
    secret, readable, writable = files
    _, attacks = sandbox(Permissions(read=[ATTACKS, readable], write=[writable], ffi=True))
    assert attacks.libc_open(str(secret)) == "EACCES"
    assert attacks.libc_open(str(secret), write=True) == "EACCES"
    assert attacks.libc_open(str(secret.parent / "new.txt"), write=True) == "EACCES"
    assert attacks.libc_open("/etc/passwd") == "EACCES"
    assert attacks.libc_open(str(readable / "data.txt")) == "opened: shared data"
    assert attacks.libc_open(str(writable / "out.txt"), write=True) == "opened: written"
    assert attacks.libc_chmod(str(secret), 0o777) == "EPERM"
    assert secret.read_text() == "the host's secret"
    assert not (secret.parent / "new.txt").exists()
    assert oct(secret.stat().st_mode & 0o777) != oct(0o777)


# -- network --------------------------------------------------------------------------------------------------------


def test_tcp_and_udp_are_denied(sandbox, listener):
    _, attacks = sandbox(Permissions(read=[ATTACKS], ffi=True))
    with pytest.raises(PermissionError) as excinfo:
        attacks.tcp_connect(listener.port)
    _permission_error(excinfo, "net")
    with pytest.raises(PermissionError) as excinfo:
        attacks.udp_send(listener.udp_port)
    _permission_error(excinfo, "net")
    with pytest.raises(PermissionError):
        attacks.tcp_listen()
    assert attacks.libc_tcp_connect(listener.port) == "socket: EPERM"
    assert attacks.libc_udp_send(listener.udp_port) == "socket: EPERM"
    assert listener.count() == (0, 0)


def test_net_ports_allow_tcp_to_those_ports_only(sandbox, listener):
    other = Listener()
    try:
        _, attacks = sandbox(Permissions(read=[ATTACKS], net=[listener.port], ffi=True))
        assert attacks.tcp_connect(listener.port) == "connected"
        assert listener.count() == (1, 0)  # the listener counts what gets through
        with pytest.raises(PermissionError) as excinfo:
            attacks.tcp_connect(other.port)
        _permission_error(excinfo, "net")
        # around Python: connect() is refused by Landlock, TCP Fast Open (a connect inside sendto) by seccomp
        assert attacks.libc_tcp_connect(other.port) == "connect: EACCES, fastopen: EPERM"
        with pytest.raises(PermissionError):
            attacks.udp_send(other.udp_port)
        assert attacks.libc_udp_send(other.udp_port) == "socket: EPERM"
        with pytest.raises(PermissionError):
            attacks.tcp_listen()  # listen() would bind a port of its choosing, unseen by Landlock
        assert other.count() == (0, 0)
        assert listener.count() == (1, 0)
    finally:
        other.close()


def test_net_ports_allow_plain_tcp_only(sandbox, listener):
    """MPTCP and SCTP make connections that Landlock's TCP port rules do not see: with ``net=[ports]`` the
    kernel lets a worker make plain TCP sockets only, in either IP family."""
    allowed = Listener()
    try:
        _, attacks = sandbox(Permissions(read=[ATTACKS], net=[allowed.port], ffi=True))
        outcome = attacks.libc_stream_protocols(listener.port)
        assert "AF_INET/SOCK_STREAM/262" in outcome and set(outcome.values()) == {"socket: EPERM"}, outcome
        assert listener.count() == (0, 0)
        assert attacks.tcp_connect(allowed.port) == "connected"  # socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)
        assert allowed.count() == (1, 0)
    finally:
        allowed.close()


@contextlib.contextmanager
def _console(connection_file: str):
    """Connect to a worker's control and heartbeat channels as ``jupyter console --existing`` does, and make a
    round trip on each, so that the worker holds their accepted connections."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    heartbeat = client.context.socket(zmq.REQ)
    try:
        heartbeat.connect(client._make_url("hb"))
        heartbeat.send(b"ping")
        assert heartbeat.poll(60_000) and heartbeat.recv() == b"ping"
        client.control_channel.send(client.session.msg("kernel_info_request"))
        assert client.get_control_msg(timeout=60)["msg_type"] == "kernel_info_reply"
        yield
    finally:
        heartbeat.close(linger=0)
        client.stop_channels()


def test_the_sockets_a_worker_holds_do_not_reach_the_network(sandbox, listener):
    """Without net, no socket() at all; but a worker holds the listening sockets it inherited and the
    connections ZeroMQ accepted. Freed (shutdown, connect(AF_UNSPEC)) and hidden from ZeroMQ, they would connect
    with connect() (where Landlock cannot filter TCP) or TCP Fast Open, which Landlock does not see."""
    broker, attacks = sandbox(Permissions(read=[ATTACKS], ffi=True))
    assert attacks.hello("first") == "Hello first"
    with _console(broker.worker_for(ATTACKS).connection_file):  # the broker itself uses the worker's lane
        outcome = attacks.libc_reuse_inherited_sockets(listener.port)
    assert outcome == {
        "listening socket, connect": "EPERM", "listening socket, sendto": "EPERM",
        "listening socket, sendmsg": "EPERM", "listening socket, sendmmsg": "EPERM",
        "accepted connection, connect": "EPERM", "accepted connection, sendto": "EPERM",
    }  # fmt: skip
    assert listener.count() == (0, 0)
    assert attacks.hello("after") == "Hello after"  # the shell's connection was left alone: the worker serves on
    _, python = sandbox(Permissions(read=[ATTACKS]))
    with pytest.raises(PermissionError) as excinfo:
        python.python_reuse_inherited_socket(listener.port)
    _permission_error(excinfo, "net")
    assert listener.count() == (0, 0)


@needs_seccomp
def test_the_seccomp_filter_alone_keeps_held_sockets_off_the_network(listener):
    """The filter as built where Landlock cannot filter TCP (ABI 3), in a child process that holds a listening
    socket and an accepted connection from before the filter, as a worker does: no connect(), no Fast Open."""
    code = textwrap.dedent(
        f"""
        import ctypes, os, socket
        from wb_magic import Permissions
        from worker_kernel.sandbox.confiner import install_seccomp
        from worker_kernel.sandbox.seccomp import seccomp_program
        target = ("127.0.0.1", {listener.port})
        servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(4)]
        client = socket.create_connection(servers[0].getsockname())
        accepted, _ = servers[0].accept()
        libc = ctypes.CDLL(None, use_errno=True)
        install_seccomp(seccomp_program(Permissions(), 3, os.getpid()))
        accepted.sendall(b"still")  # sending on a connection works
        assert client.recv(5) == b"still"
        for sock in servers:
            sock.shutdown(socket.SHUT_RDWR)  # no longer listening: free to connect
        def sendmmsg(sock):  # one message, as sendmmsg's vector of (msghdr, length); a zero-length message
            address = socket.AF_INET.to_bytes(2, "little") + target[1].to_bytes(2, "big") + socket.inet_aton(target[0])
            name = ctypes.create_string_buffer(address, 16)
            header = ctypes.create_string_buffer(64)  # struct mmsghdr: msg_name, msg_namelen, the rest zero
            ctypes.memmove(header, ctypes.addressof(name).to_bytes(8, "little") + (16).to_bytes(4, "little"), 12)
            if libc.sendmmsg(sock.fileno(), header, 1, socket.MSG_FASTOPEN) < 0:
                raise OSError(ctypes.get_errno(), "sendmmsg")

        attempts = [
            lambda: servers[0].connect(target),
            lambda: servers[1].sendto(b"x", socket.MSG_FASTOPEN, target),
            lambda: servers[2].sendmsg([b"x"], [], socket.MSG_FASTOPEN, target),
            lambda: sendmmsg(servers[3]),
            lambda: accepted.connect(("0.0.0.0", 0)),  # stands in for connect(AF_UNSPEC), which frees it
        ]
        outcome = []
        for attempt in attempts:
            try:
                attempt()
                outcome.append("reached it")
            except OSError as exc:
                outcome.append(os.strerror(exc.errno))
        print(outcome)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["Operation not permitted"] * 5)
    assert listener.count() == (0, 0)


def test_a_console_still_attaches_to_a_sandboxed_worker(sandbox):
    """What `jupyter console --existing` does: a client of the worker's connection file runs code in its module."""
    from jupyter_client import BlockingKernelClient

    broker, attacks = sandbox()
    assert attacks.hello("x") == "Hello x"
    client = BlockingKernelClient(connection_file=broker.worker_for(ATTACKS).manager.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        outputs: list = []
        reply = client.execute_interactive("print(hello('console'))", timeout=60, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        assert any(m["content"].get("text") == "Hello console\n" for m in outputs if m["msg_type"] == "stream")
    finally:
        client.stop_channels()
    assert attacks.hello("after") == "Hello after"


def test_abstract_unix_sockets_of_the_host_are_out_of_reach(sandbox):
    name = f"wb-sandbox-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen()
    server.setblocking(False)
    try:
        _, attacks = sandbox(Permissions(read=[ATTACKS], net=True))  # even with net: Landlock scopes them
        with pytest.raises(PermissionError):
            attacks.abstract_unix_connect(name)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


# -- processes ------------------------------------------------------------------------------------------------------


def test_starting_processes_is_denied(sandbox):
    _, attacks = sandbox()
    for attempt in (attacks.run_subprocess, attacks.execv, attacks.fork_bomb):
        with pytest.raises(PermissionError) as excinfo:
            attempt()
        _permission_error(excinfo, "run")


def test_a_fork_bomb_through_libc_makes_no_process(sandbox):
    broker, attacks = sandbox(Permissions(read=[ATTACKS], ffi=True))
    other = broker.worker_proxy(WORKERS / "hello.py")
    assert other.hello("before") == "Hello before"
    outcome = attacks.libc_fork_bomb(500)
    assert outcome == {
        "fork": 0, "fork errno": "EPERM", "clone": 0, "clone errno": "EPERM", "clone3": 0, "clone3 errno": "ENOSYS",
        "execve errno": "EPERM",
    }  # fmt: skip
    worker = psutil.Process(broker.worker_for(ATTACKS).pid)
    assert worker.children(recursive=True) == []
    assert attacks.hello("after") == "Hello after"
    assert other.hello("after") == "Hello after"


def test_a_subprocess_is_confined_by_the_kernel_alone(sandbox, files):
    secret, _, _ = files
    _, attacks = sandbox(Permissions(read=[ATTACKS], run=True))
    # the child interpreter has no audit hook: every refusal below is the kernel's
    code, out, err = attacks.python_child(f"print(open({str(secret)!r}).read())")
    assert code == 1 and "PermissionError: [Errno 13] Permission denied" in err and "secret" not in out
    code, _, err = attacks.python_child("import _ctypes")
    assert code == 1 and "Permission denied" in err  # ffi denied: its module is unreadable
    code, _, err = attacks.python_child("import socket; socket.socket()")
    assert code == 1 and "PermissionError: [Errno 1] Operation not permitted" in err
    code, out, _ = attacks.python_child(f"import os; os.kill({HOST}, 0)")
    assert code == 1
    assert attacks.python_child("print('a child runs')")[1] == "a child runs\n"


# -- the environment, the host and other workers ---------------------------------------------------------------------


def test_environment_secrets_stay_with_the_host(sandbox, monkeypatch):
    monkeypatch.setenv("WB_SANDBOX_TEST_SECRET", "s3cret")
    _, attacks = sandbox()
    assert attacks.environ("WB_SANDBOX_TEST_SECRET") is None
    assert "WB_SANDBOX_TEST_SECRET" not in attacks.environ_names()
    kept = {*SANDBOX_ENV, "JPY_PARENT_PID", "MALLOC_ARENA_MAX"}
    assert set(attacks.environ_names()) <= kept
    assert "HOME" not in attacks.environ_names() and "PATH" not in attacks.environ_names()
    for path in ("/proc/self/environ", f"/proc/{HOST}/environ"):
        with pytest.raises(PermissionError) as excinfo:
            attacks.read_file(path)
        _permission_error(excinfo, "sys")
    _, named = sandbox(Permissions(read=[ATTACKS], env=["WB_SANDBOX_TEST_SECRET"]))
    assert named.environ("WB_SANDBOX_TEST_SECRET") == "s3cret"


def test_the_host_cannot_be_signalled_traced_or_limited(sandbox):
    broker, attacks = sandbox(Permissions(read=[ATTACKS], ffi=True))
    other = broker.worker_proxy(WORKERS / "hello.py")
    other.hello("x")
    other_pid = broker.worker_for(WORKERS / "hello.py").pid
    with pytest.raises(PermissionError) as excinfo:
        attacks.kill(HOST, signal.SIGTERM)
    _permission_error(excinfo, "run")
    for pid in (HOST, other_pid):
        assert attacks.libc_kill(pid, signal.SIGKILL) == "EPERM"  # Landlock's signal scope
        assert attacks.libc_ptrace(pid) == "EPERM"
        assert attacks.libc_process_vm_readv(pid, id(attacks)) == "EPERM"
        assert attacks.libc_prlimit(pid) == "EPERM"
    assert psutil.Process(HOST).rlimit(psutil.RLIMIT_CPU) != (1, 1)
    assert other.hello("still here") == "Hello still here"


def test_the_hosts_proc_files_are_out_of_reach(sandbox):
    _, attacks = sandbox()
    for name in ("environ", "mem", "maps", "cmdline"):
        with pytest.raises(PermissionError) as excinfo:
            attacks.read_file(f"/proc/{HOST}/{name}")
        _permission_error(excinfo, "sys")
    # with sys, /proc is readable, but the kernel still keeps the host's memory and environment out of reach:
    # Landlock lets a sandboxed process inspect only processes in its own domain
    _, system = sandbox(Permissions(read=[ATTACKS], sys=True, ffi=True))
    assert "Name:" in system.read_file("/proc/self/status")
    for name in ("environ", "mem", "maps"):
        with pytest.raises(PermissionError) as excinfo:
            system.read_file(f"/proc/{HOST}/{name}")
        assert excinfo.value.errno == errno.EACCES
        assert system.libc_open(f"/proc/{HOST}/{name}") == "EACCES"


def test_another_workers_connection_file_is_out_of_reach(sandbox):
    broker, attacks = sandbox(Permissions(read=[ATTACKS, os.path.dirname(jupyter_runtime_dir())], ffi=True))
    other = broker.worker_proxy(WORKERS / "hello.py")
    other.hello("x")
    connection_file = broker.worker_for(WORKERS / "hello.py").manager.connection_file
    assert os.path.dirname(connection_file) == jupyter_runtime_dir()
    with pytest.raises(PermissionError):
        attacks.read_file(connection_file)
    with pytest.raises(PermissionError):
        attacks.list_dir(jupyter_runtime_dir())
    assert attacks.libc_open(connection_file) == "EACCES"
    # its own connection file too: the confiner read it before the sandbox closed
    own = broker.worker_for(ATTACKS).manager.connection_file
    assert attacks.libc_open(own) == "EACCES"
    with pytest.raises(WorkerStartError, match="must not reach into"):
        sandbox(Permissions(read=[jupyter_runtime_dir()]))[1].hello("x")


# -- the host's terminal, pipe and log file ---------------------------------------------------------------------

STDIO_HOST = """
import json, os, select, sys
from wb_magic import Permissions, WorkerBroker, WorkerDied, WorkerSpec
attacks_file = sys.argv[1]
print("host: before the worker", flush=True)
spec = WorkerSpec(permissions=Permissions(read=[attacks_file], sys=True))  # sys: /proc/self/fd is readable
with WorkerBroker(worker_constructor=lambda module, segregation_id: spec, warm_workers=0) as broker:
    attacks = broker.worker_proxy(attacks_file)
    outcome = {"open": attacks.open_stdout(), **attacks.stdio_attacks()}
    print("host: a line the worker must not read", flush=True)
    outcome["stolen"] = attacks.read_stolen()
    try:
        attacks.crash_with_stderr()
    except WorkerDied:
        outcome["crash"] = "WorkerDied"
outcome["keystrokes"] = os.read(0, 100).decode() if select.select([0], [], [], 0)[0] else ""
print("host: outcome " + json.dumps(outcome), flush=True)
"""
TYPED = "typed by the user\n"


def _read_until_closed(fd: int, process: subprocess.Popen, timeout: float = 120) -> bytes:
    """Everything written to a pty's master until the last holder of its slave (the host, its workers) is gone."""
    import select
    import time

    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                break
            if not chunk:
                break
            data += chunk
    process.wait(timeout=30)
    return data


@needs_landlock
@pytest.mark.parametrize("stdio", ["terminal", "pipe", "log file"])
def test_the_hosts_terminal_pipe_and_log_are_out_of_reach(stdio, tmp_path):
    """The host runs with a terminal (a pty of our own: CI has none), a pipe or a log file as its stdio. Its
    sandboxed worker reads the keystrokes waiting there, turns echo off, truncates the log, writes escape
    sequences and forged lines, and reopens its stdout to read the host's output: none of it reaches the
    host's. What the worker writes arrives labelled and without control characters, its crash's last words too."""
    import termios

    script = tmp_path / "host.py"
    script.write_text(STDIO_HOST)
    command = [sys.executable, str(script), ATTACKS]
    if stdio == "terminal":
        import pty

        master, slave = pty.openpty()
        before = termios.tcgetattr(master)
        os.write(master, TYPED.encode())  # keystrokes waiting for the host to read them
        host = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        try:
            output = _read_until_closed(master, host).decode(errors="replace").replace("\r\n", "\n")
            assert termios.tcgetattr(master) == before  # echo still on, every setting as it was
        finally:
            os.close(master)
    elif stdio == "pipe":
        read_end, write_end = os.pipe()  # read only once the host has ended: anything a worker took is gone
        host = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
        os.close(write_end)
        host.wait(timeout=120)
        with os.fdopen(read_end, "rb") as pipe:
            output = pipe.read().decode(errors="replace")
    else:
        log = tmp_path / "host.log"
        with open(log, "wb") as f:
            host = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        host.wait(timeout=120)
        output = log.read_text(errors="replace")
    assert host.returncode == 0, output
    lines = output.splitlines()
    if stdio == "terminal":
        assert lines.pop(0) == TYPED.strip()  # the terminal's echo of the keystrokes
    assert lines[0] == "host: before the worker", output  # the log was not truncated
    outcome = json.loads(next(line for line in lines if line.startswith("host: outcome "))[len("host: outcome ") :])
    assert outcome["crash"] == "WorkerDied"
    for fd in (0, 1, 2):
        assert TYPED.strip() not in outcome[f"read {fd}"]
        assert outcome[f"echo off {fd}"] != "done" and outcome[f"truncate {fd}"] != "done"
    assert "host: a line the worker must not read" not in outcome["stolen"]
    assert "host: a line the worker must not read" in lines
    if stdio == "terminal":
        assert outcome["keystrokes"] == TYPED  # still waiting for the host, which reads them
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", output), repr(output)  # no control character
    assert "host: a line forged by the worker" not in lines  # the worker's lines come labelled
    worker_lines = [line for line in lines if "forged by the worker" in line or "the worker crashed" in line]
    assert len(worker_lines) == 3, output
    assert all(re.match(r"\[worker \d+ attacks\.py\] ", line) for line in worker_lines), worker_lines
    assert any(line.endswith("the worker crashed [31min red[0m") for line in worker_lines)  # as text


def test_a_flood_on_stderr_is_shown_at_a_bounded_rate(sandbox, capfd):
    from wb_magic.stdio import BURST, MAX_LINE, RATE

    _, attacks = sandbox()
    start = time.monotonic()
    assert attacks.flood_stderr(10) == 10  # the host reads on: the worker is not left blocked on a full pipe
    elapsed = time.monotonic() - start
    err = capfd.readouterr().err
    shown = sum(len(line.split("] ", 1)[1]) + 1 for line in err.splitlines() if line.startswith("[worker "))
    assert 0 < shown <= BURST + RATE * (elapsed + 1)  # of 10 MB and more, what the rate lets through
    assert err.count("[wb-magic: output dropped: more than") >= 1
    assert all(len(line) < MAX_LINE + 100 for line in err.splitlines())


def test_a_flood_of_empty_lines_is_bounded_labels_and_all(sandbox, capfd):
    """The second red team's finding 06: the rate counts what the host writes, the labels included."""
    from wb_magic.stdio import BURST, RATE

    _, attacks = sandbox()
    start = time.monotonic()
    assert attacks.flood_newlines(4) == 4
    elapsed = time.monotonic() - start
    written = sum(len(line) + 1 for line in capfd.readouterr().err.splitlines() if line.startswith("[worker "))
    assert 0 < written <= BURST + RATE * (elapsed + 1) + 200  # of 4 MB of line feeds, and one note


# -- native code ------------------------------------------------------------------------------------------------------


def test_without_ffi_there_is_no_foreign_function_interface(sandbox):
    _, attacks = sandbox()
    assert attacks.loaded("_ctypes") is False
    for name in ("ctypes", "_ctypes", "_cffi_backend"):
        with pytest.raises(ImportError) as excinfo:  # as the kernel makes it fail: libraries probe for ctypes so
            attacks.import_module(name)
        _permission_error(excinfo, "ffi")
    assert attacks.import_module("numpy") == "numpy"  # which does probe for ctypes
    for source in (None, ATTACKS):  # seccomp: no anonymous executable memory, nor writable and executable
        with pytest.raises(PermissionError):
            attacks.python_exec_memory(source)
    _, native = sandbox(Permissions(read=[ATTACKS], ffi=True))
    assert native.python_exec_memory() == "mapped"
    assert native.python_exec_memory(ATTACKS) == "mapped"


def test_without_ffi_numpy_still_reaches_the_workers_own_memory_and_the_kernel_still_confines_it(sandbox, files):
    """Not enforced (docs/security.md): ffi=False does not stop raw reads and writes of the worker's own memory
    through a library such as numpy. What such code can do stays inside Landlock and seccomp."""
    secret, _, _ = files
    _, attacks = sandbox(memory_limit=1_000_000_000)
    assert attacks.numpy_raw_memory() == b"REWRITTEN BYTES!"  # an immutable bytes object, rewritten in place
    with pytest.raises(PermissionError):
        attacks.python_exec_memory(None)  # still no new executable memory
    with pytest.raises(PermissionError):
        attacks.read_file(str(secret))
    assert attacks.loaded("_ctypes") is False


def test_a_native_library_planted_in_a_readable_and_writable_folder_does_not_load(sandbox, tmp_path):
    import _json

    folder = tmp_path / "scratch"
    folder.mkdir()
    _, attacks = sandbox(Permissions(read=[ATTACKS, folder], write=[folder]))
    with pytest.raises(ImportError) as excinfo:
        attacks.plant_library(_json.__file__, str(folder))
    _permission_error(excinfo, "ffi")
    planted = str(folder / os.path.basename(_json.__file__))
    assert os.path.exists(planted)
    with pytest.raises(PermissionError):  # the kernel: the folder is mounted noexec in the worker
        attacks.exec_map(planted)
    assert attacks.exec_map(ATTACKS) == "mapped"  # where it cannot write, files map as code as usual


# -- limits ---------------------------------------------------------------------------------------------------------


def test_a_memory_hog_gets_memory_error_and_everyone_else_goes_on(sandbox):
    broker, attacks = sandbox(memory_limit=512_000_000)
    other = broker.worker_proxy(WORKERS / "hello.py")
    assert other.hello("before") == "Hello before"
    with pytest.raises(MemoryError):
        attacks.memory_hog()
    assert attacks.hello("after") == "Hello after"
    assert other.hello("after") == "Hello after"


def test_a_file_cannot_grow_past_the_file_size_limit(sandbox, files):
    _, _, writable = files
    _, attacks = sandbox(Permissions(read=[ATTACKS], write=[writable]), file_size_limit=10_000)
    assert attacks.write_file(str(writable / "small.txt"), "x" * 1000) == 1000
    with pytest.raises(OSError) as excinfo:
        attacks.write_file(str(writable / "big.txt"), "x" * 100_000)
    assert excinfo.value.errno == errno.EFBIG
    assert (writable / "big.txt").stat().st_size <= 10_000


def test_a_thread_bomb_is_bounded_by_the_memory_limit(sandbox):
    broker, attacks = sandbox(memory_limit=512_000_000)  # every thread reserves its stack against it
    other = broker.worker_proxy(WORKERS / "hello.py")
    with pytest.raises(RuntimeError, match="can't start new thread"):
        attacks.thread_bomb()
    assert attacks.hello("after") == "Hello after"
    assert other.hello("after") == "Hello after"


def test_kernel_memory_a_worker_can_pin_is_bounded(sandbox):
    """Queued bytes in sockets and pipes live in the kernel, outside ``memory_limit``: the number of open files
    bounds how many a worker holds, and their buffers stay at the system's defaults."""
    _, attacks = sandbox(memory_limit=256_000_000)
    hoard = attacks.socket_hoard(600)  # 600 pairs of default buffers: about 250 MB where nothing stops it
    assert hoard["error"] == "EMFILE" and hoard["pairs"] < 128, hoard  # RLIMIT_NOFILE: 256 open files
    assert hoard["queued"] < 128 * 2**20, hoard  # about 50 MiB with Linux's default buffers
    raised = attacks.socket_hoard(4, 4 * 2**20)  # SO_SNDBUF, SO_RCVBUF of 4 MiB: 16 MiB a pair where allowed
    assert raised["error"] is None and raised["queued"] < 4 * 2**20, raised
    with pytest.raises(PermissionError):
        attacks.pipe_hoard(4, 2**20)  # F_SETPIPE_SZ
    assert attacks.socketpair_works() == b"pair"  # all of it was given back
    assert attacks.hello("after") == "Hello after"


def test_cpu_seconds_count_from_the_workers_confinement_in_whole_seconds(sandbox):
    """RLIMIT_CPU counts the process's whole CPU time in whole seconds: the soft limit is the CPU used before
    confinement plus cpu_seconds, rounded up; the hard limit one second later."""
    _, attacks = sandbox(cpu_seconds=2.5)
    soft, hard, used = attacks.cpu_limit()
    assert 3 <= soft <= math.ceil(used + 2.5) and hard == soft + 1, (soft, hard, used)


def test_a_cpu_hog_is_killed_by_its_cpu_limit(sandbox):
    broker, attacks = sandbox(cpu_seconds=1)
    other = broker.worker_proxy(WORKERS / "hello.py")
    assert other.hello("before") == "Hello before"
    with pytest.raises(PermissionError):
        attacks.handle_sigxcpu()  # the limit's signal cannot be caught or ignored
    with pytest.raises(WorkerDied, match=r"killed by SIGXCPU: it used up its CPU time limit \(cpu_seconds=1\)"):
        attacks.spin()
    assert other.hello("after") == "Hello after"
    assert attacks.hello("a fresh worker") == "Hello a fresh worker"


# -- fail closed ------------------------------------------------------------------------------------------------------


def _old_kernel(missing: str, permissions: Permissions | None = None, **spec) -> WorkerSpec:
    argv = (sys.executable, str(WORKERS / "old_kernel.py"), missing, "-f", "{connection_file}")
    return WorkerSpec(argv=argv, permissions=permissions or Permissions(read=[ATTACKS]), **spec)


@needs_seccomp
@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("landlock", r"cannot enforce read, write, ffi, sys, .*: Landlock is not available"),
        ("seccomp", r"cannot enforce net, run, ffi, sys, write, .*: seccomp filters are not available"),
    ],
)
def test_a_worker_refuses_to_start_where_its_sandbox_cannot_be_enforced(missing, reason, capfd):
    with WorkerBroker(worker_constructor=lambda module, s: _old_kernel(missing), call_timeout=60) as broker:
        with pytest.raises(WorkerDied, match="refused to start: the worker's sandbox: " + reason):
            broker.worker_proxy(ATTACKS).hello("x")
    assert "wb-magic worker refused to start" in capfd.readouterr().err


def test_a_command_that_ignores_its_sandbox_is_ended_before_any_call(sandbox):
    """A custom argv that drops --sandbox would run the worker with the host's rights: the broker checks, at the
    worker's first reply, that the process runs with no-new-privileges and a seccomp filter, and ends it."""
    argv = (sys.executable, str(WORKERS / "ignores_sandbox.py"), "-f", "{connection_file}")
    broker, attacks = sandbox(argv=argv)
    with pytest.raises(WorkerDied, match=r"not confined as its permissions require \(fail closed\)"):
        attacks.read_file("/etc/hostname")
    assert broker.workers == []


@needs_seccomp
def test_best_effort_runs_with_a_loud_warning(capfd):
    spec = _old_kernel("landlock", Permissions(read=[ATTACKS], ffi=True), enforce="best-effort")
    with WorkerBroker(worker_constructor=lambda module, s: spec, call_timeout=60) as broker:
        attacks = broker.worker_proxy(ATTACKS)
        assert attacks.hello("anyway") == "Hello anyway"
        assert attacks.libc_open("/etc/hostname").startswith("opened")  # best effort: files are NOT protected
        assert attacks.libc_tcp_connect(1) == "socket: EPERM"  # but what seccomp enforces still holds
    err = capfd.readouterr().err
    assert re.search(r"WARNING: .*best-effort: NOT ENFORCED: .*Landlock is not available", err)


@needs_landlock
def test_a_sandboxed_worker_ends_with_its_host(host_that_ends):
    script = textwrap.dedent(
        f"""
        from wb_magic import Permissions, WorkerBroker, WorkerSpec
        spec = WorkerSpec(permissions=Permissions(read=[{ATTACKS!r}]))
        broker = WorkerBroker(worker_constructor=lambda m, s: spec)
        broker.worker_proxy({ATTACKS!r}).hello("x")
        end_when_told(broker.worker_for({ATTACKS!r}).pid, "exit")
        """
    )
    host_that_ends(script, 0)  # the worker's pidfd on its host fires: it exits


# -- the API --------------------------------------------------------------------------------------------------------


def test_default_permissions_let_a_worker_read_its_own_module(sandbox):
    _, attacks = sandbox(Permissions())
    assert attacks.hello("own module") == "Hello own module"


def test_everything_allowed_still_keeps_the_host_and_the_keys_out_of_reach(sandbox):
    broker, attacks = sandbox(Permissions.all())
    assert attacks.read_file("/etc/hostname") == open("/etc/hostname").read()[:200]
    assert attacks.libc_kill(HOST, 0) == "EPERM"
    assert attacks.libc_ptrace(HOST) == "EPERM"
    assert attacks.libc_open(broker.worker_for(ATTACKS).manager.connection_file) == "EACCES"
    with pytest.raises(PermissionError):
        attacks.read_file(f"/proc/{HOST}/environ")


def test_hooks_load_inside_the_sandbox(sandbox):
    _, attacks = sandbox(hooks=f"{WORKERS / 'hooks.py'}")
    assert attacks.hello("hooked") == "Hello hooked"
    assert attacks.loaded("hooks") is True


def test_permissions_are_plain_data():
    p = Permissions(read=["relative/dir", Path("/abs")], net=[8080], env="HOME", run=False)
    assert p.read == (os.path.abspath("relative/dir"), "/abs")
    assert p.net == (8080,) and p.env == ("HOME",) and p.write is False
    assert Permissions.from_json(p.to_json()) == p
    assert Permissions.all() == Permissions(net=True, read=True, write=True, env=True, run=True, ffi=True, sys=True)
    for bad in ({"run": "yes"}, {"net": [0]}, {"net": ["80"]}, {"read": [1]}, {"env": ["A=B"]}):
        with pytest.raises(TypeError):
            Permissions(**bad)
    config = SandboxConfig(permissions=p, memory_limit=10**9, cpu_seconds=2.5, enforce="best-effort")
    assert SandboxConfig.loads(config.dumps()) == config
    with pytest.raises(ValueError):
        SandboxConfig(enforce="sometimes")
    assert WorkerSpec().sandbox() is None and WorkerSpec(cpu_seconds=1).sandboxed
    with pytest.raises(ValueError, match="kernel_name"):
        from wb_magic.launcher import launch

        launch(WorkerSpec(kernel_name="python3", permissions=Permissions()))


@needs_seccomp
def test_the_seccomp_filter_alone_where_landlock_cannot_scope_signals():
    """The filter as built for Landlock ABI 5 (no signal scoping), installed in a child process on its own."""
    code = textwrap.dedent(
        f"""
        import os, signal, socket, threading
        from wb_magic import Permissions
        from worker_kernel.sandbox.confiner import install_seccomp
        from worker_kernel.sandbox.seccomp import seccomp_program
        install_seccomp(seccomp_program(Permissions(), 5, os.getpid()))
        outcome = []
        for attempt in (lambda: os.kill({HOST}, 0), lambda: os.kill(0, 0), lambda: os.kill(-1, 0), os.fork,
                        socket.socket, lambda: os.setpriority(os.PRIO_PROCESS, {HOST}, 19)):
            try:
                attempt()
                outcome.append("allowed")
            except PermissionError:
                outcome.append("denied")
        os.kill(os.getpid(), 0)  # itself: allowed
        signal.pthread_kill(threading.main_thread().ident, 0)
        thread = threading.Thread(target=outcome.append, args=("thread",))
        thread.start()
        thread.join()
        print(outcome)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["denied"] * 6 + ["thread"])
    assert os.getpriority(os.PRIO_PROCESS, HOST) != 19


def test_the_seccomp_filter_uses_this_kernels_system_call_numbers():
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no kernel headers")
    known = dict(re.findall(r"#define __NR_(\w+) (\d+)", header.read_text()))
    for name, number in NR.items():
        if name in known:
            assert int(known[name]) == number, name


# -- the plan and the filter, pure: no privilege, no Landlock needed ---------------------------------------------

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plan is for Linux")
MACHINE = Machine(landlock_abi=7, seccomp_problem=None, can_remount=False)


def test_the_confined_side_never_imports_ctypes_or_the_confiner():
    code = (
        "import sys, worker_kernel.__main__, worker_kernel.kernel, worker_kernel.sandbox.confined;"
        "print(sorted({'ctypes', '_ctypes', 'worker_kernel.sandbox.confiner'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@linux
def test_the_plan_grants_a_module_its_own_file_not_its_folder(tmp_path):
    tmp_path = Path(os.path.realpath(tmp_path))
    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / "mine.py").write_text("x = 1\n")
    (folder / "theirs.py").write_text("SECRET = 1\n")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.txt").write_text("its own")
    config = SandboxConfig(permissions=Permissions(), module=str(folder / "mine.py"))
    rules = Plan(config, {}, MACHINE).rules
    assert allows(rules, str(folder / "mine.py"), FS_READ_FILE)
    assert not allows(rules, str(folder / "theirs.py"), FS_READ_FILE)
    assert not allows(rules, str(folder), FS_READ_DIR)
    repo = os.path.realpath(Path(__file__).parent.parent)
    assert not allows(rules, repo, FS_READ_DIR)  # a development install's project folder is not listable either
    assert allows(rules, os.path.join(WORKER_KERNEL, "kernel.py"), FS_READ_FILE)  # the worker's own code is
    package_config = replace(config, module=str(package / "__init__.py"))
    package_rules = Plan(package_config, {}, MACHINE).rules
    assert allows(package_rules, str(package / "__init__.py"), FS_READ_FILE)
    assert not allows(package_rules, str(package / "data.txt"), FS_READ_FILE)  # its own file, whatever its name
    granted = replace(package_config, permissions=Permissions(read=[package]))
    assert allows(Plan(granted, {}, MACHINE).rules, str(package / "data.txt"), FS_READ_FILE)


@linux
def test_the_plan_keeps_the_runtime_folder_out_of_every_grant(tmp_path):
    tmp_path = Path(os.path.realpath(tmp_path))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "kernel-1.json").write_text("{}")
    (tmp_path / "data.txt").write_text("shared")
    config = SandboxConfig(permissions=Permissions(read=[tmp_path], write=[tmp_path]), protected=(str(runtime),))
    rules = Plan(config, {}, Machine(7, None, can_remount=True)).rules
    assert allows(rules, str(tmp_path / "data.txt"), FS_READ_FILE | FS_WRITE_FILE)
    for right in (FS_READ_FILE, FS_WRITE_FILE, FS_READ_DIR):
        assert not allows(rules, str(runtime / "kernel-1.json"), right)
    assert not allows(rules, str(tmp_path), FS_READ_DIR)  # listing it would reach into the runtime folder


@linux
def test_the_plan_refuses_what_this_machine_cannot_enforce():
    config = SandboxConfig(permissions=Permissions(net=[443]))
    with pytest.raises(SandboxError, match=r"cannot enforce read, write, ffi, sys, .*Landlock is not available"):
        Plan(config, {}, Machine(0, None, False))
    with pytest.raises(SandboxError, match=r"cannot enforce net, run, ffi, sys, write, .*no seccomp here"):
        Plan(config, {}, Machine(7, "no seccomp here", False))
    with pytest.raises(SandboxError, match=r"net .*cannot filter TCP ports \(needs 4\)"):
        Plan(config, {}, Machine(3, None, False))
    with pytest.raises(SandboxError, match="must speak TCP"):
        Plan(config, {"transport": "ipc"}, MACHINE)
    lenient = Plan(replace(config, enforce="best-effort"), {}, Machine(3, None, False))
    assert lenient.unenforced == ["net (Landlock ABI 3 cannot filter TCP ports (needs 4))"]


ALLOW, KILL = 0x7FFF0000, 0x80000000
DENIED = 0x00050000 | errno.EPERM


def _run_filter(program: bytes, syscall: str | int, args: tuple = (), arch: int = 0xC000003E) -> int:
    """What the kernel would answer to one system call: the classic BPF program run over its seccomp_data
    (nr, arch, instruction pointer, six arguments), by an interpreter of the instructions the filter uses."""
    nr = NR[syscall] if isinstance(syscall, str) else syscall
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args, *[0] * (6 - len(args)))
    instructions = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        if code == 0x20:  # load a word of seccomp_data
            accumulator = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:  # and
            accumulator &= k
        elif code == 0x15:  # jump if equal
            pc += jt if accumulator == k else jf
        elif code == 0x35:  # jump if greater or equal
            pc += jt if accumulator >= k else jf
        elif code == 0x05:  # jump
            pc += k
        elif code == 0x06:  # return
            return k
        else:
            raise AssertionError(f"an instruction the interpreter does not know: {code:#x}")


def test_the_filter_program_decides_as_its_rules_say():
    """The compiled program against the rules read directly (the first rule of a call whose checks all hold
    decides; the hot calls and a call no rule names are allowed), for every call and telling arguments."""

    def by_the_rules(rules: list, nr: int, args: tuple) -> int:
        if nr in {NR[name] for name in HOT}:
            return ALLOW
        for rule in rules:
            words = [(args[c.arg] >> (32 if c.high else 0)) & 0xFFFFFFFF for c in rule.checks]
            if NR[rule.syscall] == nr and all(w & c.mask == c.value for w, c in zip(words, rule.checks, strict=True)):
                return rule.action
        return ALLOW

    telling = [0, 1, 2, 4, 17, 24, 132, 262, 1234, 0x20, 0x24, 0x6, 0x10100, 0x20000000, 0x5412, 0x7F00_1234_5678]
    vectors = [(v, v, v, v, v, v) for v in telling] + [(0, v, 0, v, 0, 0) for v in telling]
    for permissions in (
        Permissions(),
        Permissions(net=[443], ffi=True),
        Permissions(net=True, sys=True),
        Permissions.all(),
    ):
        for abi in (5, 7):
            rules = seccomp_rules(permissions, abi, 1234, 0x7F00_1234_5678, guard_cpu=True)
            program = seccomp_program(permissions, abi, 1234, 0x7F00_1234_5678, guard_cpu=True)
            for nr in sorted(set(NR.values())):
                for args in vectors:
                    assert _run_filter(program, nr, args) == by_the_rules(rules, nr, args), (permissions, abi, nr, args)


def test_the_filter_denies_fast_open_and_connect_without_net():
    fastopen = 0x20000000
    for permissions, connect, fast_open, tcp_socket in [
        (Permissions(), DENIED, DENIED, DENIED),
        (Permissions(net=[443]), ALLOW, DENIED, ALLOW),  # connect: Landlock filters its port
        (Permissions(net=True), ALLOW, ALLOW, ALLOW),
    ]:
        program = seccomp_program(permissions, 7, 1234)
        assert _run_filter(program, "connect", (3, 0, 16)) == connect, permissions
        assert _run_filter(program, "socket", (socket.AF_INET, socket.SOCK_STREAM)) == tcp_socket
        stream = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        assert _run_filter(program, "socket", (socket.AF_INET6, stream, socket.IPPROTO_TCP)) == tcp_socket
        for family, kind, protocol in ((socket.AF_INET, stream, 262), (socket.AF_INET6, stream, 132)):
            expected = ALLOW if permissions.net is True else DENIED  # MPTCP, SCTP: Landlock does not see them
            assert _run_filter(program, "socket", (family, kind, protocol)) == expected
        assert _run_filter(program, "socketpair", (socket.AF_UNIX, stream)) == ALLOW
        assert _run_filter(program, "socketpair", (socket.AF_INET, stream)) == DENIED
        for name, flags_arg in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
            args = [3, 0, 0, 0, 0, 0]
            args[flags_arg] = fastopen | socket.MSG_DONTWAIT
            assert _run_filter(program, name, tuple(args)) == fast_open, (permissions, name)
            args[flags_arg] = socket.MSG_DONTWAIT
            assert _run_filter(program, name, tuple(args)) == ALLOW  # ZeroMQ's own sends
        assert _run_filter(program, "listen") == (ALLOW if permissions.net is True else DENIED)
        assert _run_filter(program, "read") == ALLOW
        assert _run_filter(program, 0x40000000 | NR["read"]) == KILL  # the x32 ABI
        assert _run_filter(program, NR["read"], arch=0x40000003) == KILL  # i386


def test_the_filter_keeps_socket_and_pipe_buffers_at_their_defaults():
    no_effect = 0x00050000
    for permissions in (Permissions(), Permissions.all()):
        program = seccomp_program(permissions, 7, 1234)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            assert _run_filter(program, "setsockopt", (3, socket.SOL_SOCKET, option)) == no_effect
        assert _run_filter(program, "setsockopt", (3, socket.SOL_SOCKET, socket.SO_KEEPALIVE)) == ALLOW
        assert _run_filter(program, "setsockopt", (3, socket.IPPROTO_TCP, socket.SO_SNDBUF)) == ALLOW  # another level
        assert _run_filter(program, "fcntl", (3, 1031, 2**20)) == DENIED  # F_SETPIPE_SZ
        assert _run_filter(program, "fcntl", (3, 1032)) == ALLOW  # F_GETPIPE_SZ
        assert _run_filter(program, "fcntl", (3, 4, os.O_NONBLOCK)) == ALLOW  # F_SETFL


def test_the_filter_lets_only_the_confiners_execve_through():
    program = seccomp_program(Permissions(), 7, 1234, exec_path=0x7F00_1234_5678)
    assert _run_filter(program, "execve", (0x7F00_1234_5678,)) == ALLOW
    assert _run_filter(program, "execve", (0x7F00_1234_5679,)) == DENIED
    assert _run_filter(program, "execve", (0x7F01_1234_5678,)) == DENIED  # the high half counts too
    assert _run_filter(program, "fork") == DENIED
    assert _run_filter(program, "clone", (0x00010000 | 0x100 | 0x200,)) == ALLOW  # a thread
    assert _run_filter(program, "clone", (17,)) == DENIED  # a process (SIGCHLD)
    assert _run_filter(seccomp_program(Permissions(run=True), 7, 1234), "fork") == ALLOW
