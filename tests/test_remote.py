"""Workers on another host: a network namespace with its own address and its own view of the files, an sshd run
by hand in it (tests/remote_host.py), and workers there reached over the veth pair, encrypted with CurveZMQ."""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import zmq
from jupyter_client.connect import write_connection_file
from remote_host import RemoteHost, missing, remove_leftovers
from zmq.utils.monitor import recv_monitor_message

from wb_magic import CallTimeout, Permissions, WorkerBroker, WorkerDied, WorkerSpec, WorkerStartError
from wb_magic.cleaner import LRUCleaner
from wb_magic.kernelspec import main, remote_kernel_spec
from worker_kernel.wire import Session

TESTS = Path(__file__).parent
WAIT = 60.0  # seconds: generous bounds on events that normally take milliseconds
BROKER_TIMEOUT = 3.0  # seconds a remote worker outlives a silent broker, in these tests
_ports = itertools.count(42000, 10)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    """The second host, for the whole module (starting it costs about a second); removed after it."""
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"tests/test_remote.py cannot build its test host: {why}")
        pytest.skip(why)
    remove_leftovers()
    remote = RemoteHost(hidden=[TESTS, tmp_path_factory.getbasetemp()])
    remote.start()
    try:
        yield remote
    finally:
        remote.stop()


@pytest.fixture(scope="module")
def remote_env(host: RemoteHost, tmp_path_factory: pytest.TempPathFactory):
    """This process as a broker host for the test host: a HOME whose .ssh knows it, the response address on the
    veth pair, and the ``wb-remote`` kernel spec (workers exit 3 s after their broker went silent)."""
    data = tmp_path_factory.mktemp("remote-jupyter")
    spec = remote_kernel_spec([host.address], sys.executable, broker_timeout=BROKER_TIMEOUT, launch_timeout=60)
    (data / "kernels" / "wb-remote").mkdir(parents=True)
    (data / "kernels" / "wb-remote" / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(host.home))
        patch.setenv("JUPYTER_PATH", str(data))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))
        patch.setenv("GP_RESPONSE_IP", host.local_address)  # read when gateway_provisioners is first imported
        patch.setenv("GP_UNAUTHORIZED_USERS", "")  # it refuses root by default, and CI runs as root
        patch.setenv("GP_POLL_INTERVAL", "0.1")  # how often it looks for the launcher's answer (0.5 s by default)
        yield host


REMOTE = WorkerSpec(kernel_name="wb-remote")


def remote_broker(*remote_modules: Path, **options) -> WorkerBroker:
    """A broker that starts the workers of ``remote_modules`` on the test host, and every other one here."""
    remote = {str(path) for path in remote_modules}
    return WorkerBroker(
        worker_constructor=lambda module, sid: REMOTE if module in remote else WorkerSpec(),
        warm_workers=0,
        **options,
    )


def wait_gone(pids: set[int], timeout: float = WAIT) -> set[int]:
    """Wait for processes of this machine (the test host's included: one pid space) to end; those that did not."""
    left = set()
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                left.add(pid)
        finally:
            os.close(fd)
    return left


def hand_started(host: RemoteHost, name: str, *, curve: bool = True, args: tuple[str, ...] = ()) -> tuple:
    """A worker kernel started by hand on the test host: (connection info, its process)."""
    keys = zmq.curve_keypair() if curve else (None, None)
    base = next(_ports)  # the test host's network has nothing of its own: any ports are free there
    path, info = write_connection_file(
        str(host.run / f"{name}.json"),
        ip=host.address,
        shell_port=base,
        iopub_port=base + 1,
        stdin_port=base + 2,
        control_port=base + 3,
        hb_port=base + 4,
        key=os.urandom(16).hex().encode(),
        curve_publickey=keys[0],
        curve_secretkey=keys[1],
    )
    process = subprocess.Popen(
        [*host.enter(), sys.executable, "-m", "worker_kernel", "-f", path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return info, process


def handshake_fails(context: zmq.Context, address: str, port: int, frames: list[bytes]) -> bool:
    """Connect in the clear, send ``frames``; True once the server refused the handshake (no answer came)."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(f"tcp://{address}:{port}")
        sock.send_multipart(frames)
        while monitor.poll(int(WAIT * 1000)):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                return sock.poll(0) == 0
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def test_the_test_host_cannot_see_the_test_modules(host):
    listing = subprocess.run([*host.enter(), "ls", "-A", str(TESTS)], capture_output=True, text=True, check=True)
    assert listing.stdout == ""
    assert (TESTS / "workers" / "values.py").is_file()  # while this host can


def test_attach_to_an_encrypted_worker_and_a_plaintext_client_gets_no_answer(host):
    info, process = hand_started(host, "curve")
    try:
        with WorkerBroker(warm_workers=0) as broker:
            broker.attach(info, "colorsys")
            assert broker.worker_proxy("colorsys").rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
            context = zmq.Context()
            try:
                request = Session(info["key"].encode()).message("kernel_info_request", {})[
                    1
                ]  # signed with the right key
                assert handshake_fails(context, host.address, info["shell_port"], request)
                assert handshake_fails(context, host.address, info["hb_port"], [b"ping"])
            finally:
                context.destroy(linger=0)
            assert broker.worker_proxy("colorsys").hsv_to_rgb(0.0, 1.0, 1.0) == (1.0, 0.0, 0.0)  # served on
        assert process.wait(WAIT) == 0  # the broker shut it down
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


def test_a_worker_refuses_to_listen_on_the_network_in_the_clear(host):
    info, process = hand_started(host, "clear", curve=False)
    _, err = process.communicate(timeout=WAIT)
    assert process.returncode != 0
    assert f"refusing to listen on {host.address} without encryption" in err


def test_allow_plaintext_lets_it_listen_in_the_clear(host):
    info, process = hand_started(host, "clear-allowed", curve=False, args=("--allow-plaintext",))
    try:
        with WorkerBroker(warm_workers=0) as broker:
            with pytest.raises(PermissionError, match="no CurveZMQ keys"):  # the broker's side says no too
                broker.attach(info, "colorsys")
            broker.attach(info, "colorsys", allow_plaintext=True)
            assert broker.worker_proxy("colorsys").rgb_to_hsv(0.0, 1.0, 0.0)[0] == pytest.approx(1 / 3)
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


REMOTE_MODULE = """
import os
import threading

from worker_kernel import broker_proxy

def where():
    return os.getpid(), os.path.exists(__file__)

def add(a, b):
    return a + b

def relay(x):
    return broker_proxy().worker_proxy("./near.py").finish(x + 1)  # back to the local worker, by a relative path

def crash():
    os._exit(3)

def spin():
    while True:
        pass

def hang():
    threading.Event().wait()
"""

NEAR_MODULE = """
from worker_kernel import broker_proxy

def ask(x):
    return broker_proxy().worker_proxy("./far.py").relay(x)

def finish(x):
    return f"near:{x}"
"""


@pytest.fixture
def modules(tmp_path: Path) -> tuple[Path, Path]:
    """far.py (run on the test host, which cannot see it) and near.py (run here), side by side."""
    (tmp_path / "far.py").write_text(REMOTE_MODULE)
    (tmp_path / "near.py").write_text(NEAR_MODULE)
    return tmp_path / "far.py", tmp_path / "near.py"


def launchers(host: RemoteHost, *workers: int) -> set[int]:
    """The test host's processes other than sshd and ``workers``: the workers' launchers."""
    return host.pids() - {host.sshd.pid, *workers}


def test_a_remote_worker_runs_the_module_the_broker_ships_it(remote_env, modules):
    host, (module, _) = remote_env, modules
    with remote_broker(module) as broker:
        far = broker.worker_proxy(module)
        pid, file_there = far.where()
        assert pid in host.pids() and not file_there  # on the test host, which cannot see the file
        assert far.add(2, 3) == 5
        module.write_text(REMOTE_MODULE.replace("a + b", "a * b"))
        broker.worker_import(module, cache_buster="v2")
        assert far.add(2, 3) == 6  # the new source was shipped too
        launcher = launchers(host, pid)
    assert wait_gone({pid, *launcher}) == set()  # closing the broker left nothing on the test host
    assert host.pids() == {host.sshd.pid}


def test_a_local_worker_calls_a_remote_one_and_back(remote_env, modules):
    far, near = modules
    with remote_broker(far, call_timeout=WAIT) as broker:
        assert broker.worker_proxy(near).ask(1) == "near:2"
        assert broker.worker_for(far).pid is None and broker.worker_for(near).pid is not None  # far is remote


def test_a_remote_crash_fails_the_call_and_the_next_call_starts_a_fresh_worker(remote_env, modules):
    host, (far, _) = remote_env, modules
    with remote_broker(far, call_timeout=WAIT) as broker:
        proxy = broker.worker_proxy(far)
        first, _ = proxy.where()
        with pytest.raises(WorkerDied, match="its connection was dropped: it ended on its host"):
            proxy.crash()  # its sockets close with it: the broker need not wait for the heartbeat
        assert wait_gone({first}) == set()
        second, _ = proxy.where()
        assert second != first and second in host.pids()


def test_timeouts_and_interrupts_reach_a_remote_worker(remote_env, modules):
    far, _ = modules
    with remote_broker(far) as broker:
        pid, _ = broker.worker_proxy(far).where()
        with pytest.raises(CallTimeout):
            broker.worker_proxy(far, timeout=0.5).spin()  # the broker interrupts the call it gave up on
        assert broker.worker_proxy(far).where()[0] == pid  # the same worker, serving again


def test_a_cut_link_fails_pending_calls_and_the_remote_worker_exits(remote_env, modules):
    host, (far, _) = remote_env, modules
    with remote_broker(far, call_timeout=WAIT) as broker:
        proxy = broker.worker_proxy(far)
        pid, _ = proxy.where()
        launcher = launchers(host, pid)
        host.cut()
        try:
            with pytest.raises(WorkerDied, match="heartbeat"):
                proxy.hang()
            assert wait_gone({pid, *launcher}) == set()  # no heartbeat from its broker: it ended itself
        finally:
            host.mend()
        assert proxy.where()[0] != pid  # a fresh one


def test_a_remote_worker_exits_when_its_broker_dies(remote_env, modules):
    host, (far, _) = remote_env, modules
    script = (
        "import sys\n"
        "from wb_magic import WorkerBroker, WorkerSpec\n"
        "spec = WorkerSpec(kernel_name='wb-remote')\n"
        "broker = WorkerBroker(worker_constructor=lambda m, s: spec, warm_workers=0)\n"
        "print(broker.worker_proxy(sys.argv[1]).where()[0], flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(far)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        pid = int(process.stdout.readline())
        launcher = launchers(host, pid)
        assert pid in host.pids()
        process.kill()  # no goodbye: the broker's host is gone
        process.wait(WAIT)
        assert wait_gone({pid, *launcher}) == set()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


def test_the_cleaner_evicts_remote_workers(remote_env, modules):
    host, (far, near) = remote_env, modules
    lru = LRUCleaner(worker_count=1)
    with remote_broker(far, worker_cleaner=lru) as broker:
        pid, _ = broker.worker_proxy(far).where()
        launcher = launchers(host, pid)
        assert broker.worker_proxy(near).finish(0) == "near:0"  # a second worker: the remote one, idle, goes
        assert wait_gone({pid, *launcher}) == set()
        assert broker.worker_for(far) is None and broker.worker_for(near) is not None


def test_the_broker_refuses_a_remote_worker_that_came_up_in_the_clear(remote_env, modules, tmp_path_factory):
    """A kernel spec that neither asks for encryption nor gets keys back: the broker sends nothing in the clear."""
    host, (far, _) = remote_env, modules
    spec = remote_kernel_spec([host.address], sys.executable, broker_timeout=BROKER_TIMEOUT)
    spec["argv"].append("--allow-plaintext")
    del spec["metadata"]["supported_encryption"]
    data = Path(os.environ["JUPYTER_PATH"])
    (data / "kernels" / "wb-clear").mkdir(parents=True, exist_ok=True)
    (data / "kernels" / "wb-clear" / "kernel.json").write_text(json.dumps(spec))
    clear = WorkerSpec(kernel_name="wb-clear")
    with WorkerBroker(worker_constructor=lambda module, sid: clear, warm_workers=0) as broker:
        with pytest.raises(WorkerStartError, match="without CurveZMQ keys"):
            broker.worker_proxy(far).add(1, 2)
    assert wait_gone(launchers(host)) == set()  # and it did not leave the worker running there


def test_a_sandboxed_remote_worker_is_refused(remote_env, modules):
    far, _ = modules
    sandboxed = WorkerSpec(kernel_name="wb-remote", permissions=Permissions())
    with WorkerBroker(worker_constructor=lambda module, sid: sandboxed, warm_workers=0) as broker:
        with pytest.raises(WorkerStartError, match="would run it unconfined"):
            broker.worker_proxy(far).add(1, 2)


def test_a_hung_remote_worker_is_declared_dead_and_ended_through_its_provisioner(remote_env, modules):
    """Stopped, it answers nothing and cannot end itself: the broker's kill reaches it through the launcher."""
    host, (far, _) = remote_env, modules
    with remote_broker(far, call_timeout=WAIT) as broker:
        proxy = broker.worker_proxy(far)
        pid, _ = proxy.where()
        launcher = launchers(host, pid)
        os.kill(pid, signal.SIGSTOP)  # the test host shares this machine's pid space
        with pytest.raises(WorkerDied, match="heartbeat"):
            proxy.add(1, 2)
        assert wait_gone({pid, *launcher}) == set()
        assert proxy.add(1, 2) == 3  # a fresh worker


def test_the_provisioner_contract_reaches_a_remote_worker(remote_env, modules):
    host, (far, _) = remote_env, modules
    with remote_broker(far) as broker:
        proxy = broker.worker_proxy(far)
        pid, _ = proxy.where()
        launcher = launchers(host, pid)
        kernel = broker.worker_for(far).manager
        assert kernel.remote and kernel.pid is None  # its pid is the remote host's business
        assert kernel.poll() is None
        kernel.send_signal(signal.SIGUSR1)  # would end it; the launcher forwards only INT, TERM and KILL
        assert proxy.where()[0] == pid
        kernel.terminate()
        assert wait_gone({pid, *launcher}) == set()
        assert kernel.poll() == 0  # the launcher's port is closed: gone


def test_wb_module_cells_run_on_a_remote_worker_and_a_rerun_cell_reloads_there(remote_env, tmp_path, monkeypatch):
    from IPython.testing import globalipapp

    import wb_magic

    host = remote_env
    globalipapp.start_ipython()  # first: its history file goes in the usual temporary folder
    shell = globalipapp.get_ipython()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the cells' folder: one the test host cannot see
    shell.run_line_magic("load_ext", "wb_magic")
    try:
        wb_magic.get_broker().worker_constructor = lambda module, sid: REMOTE
        cell = "%%wb_module cell\nimport os\n\ndef where():\n    return os.getpid(), os.path.exists(__file__)\n"
        for source in (cell, "%wb_proxy cell"):
            assert shell.run_cell(source).success
        pid, file_there = shell.run_cell("cell.where()").result
        assert pid in host.pids() and not file_there
        assert shell.run_cell(cell.replace("os.getpid()", "-os.getpid()")).success  # run again: a reload
        assert shell.run_cell("cell.where()").result == (-pid, False)
    finally:
        shell.run_line_magic("unload_ext", "wb_magic")
    assert wait_gone({pid}) == set()


def test_the_kernel_spec_installer_writes_wb_remote(tmp_path):
    main(["--remote-hosts", "node1, node2", "--python", "/opt/venv/bin/python", "--prefix", str(tmp_path)])
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / "wb-remote" / "kernel.json").read_text())
    assert spec["argv"][:3] == ["/opt/venv/bin/python", "-m", "worker_kernel.launcher"]
    assert "{response_address}" in spec["argv"] and "{public_key}" in spec["argv"]
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == "distributed-provisioner"
    assert provisioner["config"]["remote_hosts"] == ["node1", "node2"]
    with pytest.raises(ValueError, match="must not contain spaces"):
        remote_kernel_spec(["node1"], "/opt/my venv/bin/python")


def _public_key() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return base64.b64encode(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--port-range", "5..6"], "is not within 1024..65535"),
        (["--port-range", "lots"], "must be LOW..HIGH"),
        ([], "Connection refused"),  # nobody at the response address: the worker it started is ended
        (None, "Connection refused"),  # the same, told in the environment, as the container provisioners do
    ],
)
def test_the_launcher_fails_clearly_and_leaves_no_worker(tmp_path, extra, expected):
    protocol = {"KERNEL_ID": "k1", "PUBLIC_KEY": _public_key(), "RESPONSE_ADDRESS": "127.0.0.1:1"}
    command = [sys.executable, "-m", "worker_kernel.launcher", "--ip", "127.0.0.1"]
    if extra is not None:
        command += [f"--{name.lower().replace('_', '-')}={value}" for name, value in protocol.items()] + extra
    env = {**os.environ, "TMPDIR": str(tmp_path), **(protocol if extra is None else {})}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = launcher.communicate(timeout=WAIT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0 and expected in err
    assert list(tmp_path.iterdir()) == []  # its folder is gone, and no worker runs from it:
    assert [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])] == []
