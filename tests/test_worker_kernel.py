"""The worker kernel alone, spoken to by jupyter_client as any Jupyter kernel would be."""

from __future__ import annotations

import os
import subprocess
import sys

import jupyter_kernel_test
import pytest
from jupyter_client.manager import start_new_kernel


@pytest.fixture(autouse=True, scope="module")
def _spec(kernel_spec_dir):
    return kernel_spec_dir


class TestWorkerKernelSpec(jupyter_kernel_test.KernelTests):
    """jupyter_kernel_test's own suite: kernel info, stdout, stderr, errors, results, completion."""

    kernel_name = "wb-worker"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "6*7", "result": "42"}, {"code": "x = 1\nx + 1", "result": "2"}]
    completion_samples = [{"text": "impo", "matches": {"import"}}, {"text": "pri", "matches": {"print"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
    incomplete_code_samples = ["def f(x):", "print('''hello"]
    invalid_code_samples = ["import = 7q"]


def _client(kernel_spec_dir):
    return start_new_kernel(kernel_name="wb-worker", startup_timeout=30)


def test_unknown_message_type_gets_an_error_reply(kernel_spec_dir):
    km, kc = _client(kernel_spec_dir)
    try:
        msg = kc.session.msg("no_such_request", {})
        kc.shell_channel.send(msg)
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
        assert reply["msg_type"] == "no_such_reply"
        assert reply["content"]["status"] == "error"
        assert "no_such_request" in reply["content"]["evalue"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_wb_messages_on_the_shell_channel(kernel_spec_dir, workers_dir):
    km, kc = _client(kernel_spec_dir)
    module = str(workers_dir / "hello.py")
    try:
        kc.shell_channel.send(kc.session.msg("wb_inspect_request", {"module": module}))
        functions = kc.get_shell_msg(timeout=10)["content"]["functions"]
        assert functions["hello"]["signature"] == "(name: str, greeting: str = 'Hello') -> str"
        assert functions["ahello"]["is_async"] is True
        call = {"module": module, "function": "hello", "args": ["World"], "kwargs": {}}
        kc.shell_channel.send(kc.session.msg("wb_call_request", call))
        reply = kc.get_shell_msg(timeout=10)
        assert reply["msg_type"] == "wb_call_reply"
        assert reply["content"]["value"] == "Hello World"
        # execute_request runs in the target module's namespace: a console sees the worker's state
        reply = kc.execute_interactive("hello('console')", timeout=10, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
        kc.execute("greeting_seen = hello('x')", reply=True, timeout=10)
        kc.shell_channel.send(kc.session.msg("wb_call_request", {**call, "function": "nope"}))
        reply = kc.get_shell_msg(timeout=10)["content"]
        assert reply["status"] == "error" and reply["ename"] == "NoSuchFunction"  # an AttributeError, for the host
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_interrupt_message_stops_running_code(kernel_spec_dir):
    km, kc = _client(kernel_spec_dir)
    try:
        msg_id = kc.execute("import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)")
        while True:  # wait for the code to be running: its first output
            out = kc.get_iopub_msg(timeout=10)
            if out["msg_type"] == "stream":
                break
        kc.control_channel.send(kc.session.msg("interrupt_request", {}))
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert kc.execute_interactive("1", timeout=10)["content"]["status"] == "ok"  # still serving
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_importing_worker_kernel_stays_light():
    """What a worker imports to start: pyzmq and a little of the standard library. The rest (orjson, logging,
    asyncio, inspect, datetime...) waits until something needs it: see docs/architecture.md."""
    heavy = {"IPython", "jupyter_client", "numpy", "traitlets", "tornado", "ipykernel"}
    later = {"orjson", "logging", "asyncio", "inspect", "datetime", "dataclasses", "traceback", "ssl"}
    # what pyzmq imports itself is not ours to defer (its compiled backend imports inspect on Python 3.13)
    code = (
        "import sys, zmq; pyzmq = set(sys.modules);"
        "import worker_kernel, worker_kernel.kernel, worker_kernel.__main__;"
        f"print(sorted(set({sorted(later)!r}) & (set(sys.modules) - pyzmq)), sorted(set({sorted(heavy)!r}) & "
        "set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_worker_exits_when_its_host_dies(workers_dir, host_that_ends):
    """A worker launched by a process that is killed must not outlive it."""
    script = (
        "from wb_magic import WorkerBroker\n"
        "b = WorkerBroker()\n"
        f"end_when_told(b.worker_proxy({str(workers_dir / 'values.py')!r}).pid(), 'kill')\n"
    )
    host_that_ends(script, -9)


def test_a_worker_whose_host_ended_before_it_started_exits(tmp_path):
    """A warm worker can still be starting when its host quits: it must not run on, an orphan."""
    from jupyter_client.connect import write_connection_file

    connection_file, _ = write_connection_file(str(tmp_path / "kernel.json"), key=b"k")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a host that has ended
    env = {**os.environ, "JPY_PARENT_PID": str(gone.pid)}
    worker = subprocess.Popen([sys.executable, "-m", "worker_kernel", "-f", connection_file], env=env)
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()


def test_a_worker_whose_host_and_lane_are_gone_before_it_serves_exits(tmp_path):
    """A warm worker of a host that was killed while the worker started: its first words (the host has gone)
    cannot reach the host through its lane either. It must still exit, not wait for ever on its own output."""
    import socket

    from jupyter_client.connect import write_connection_file

    from worker_kernel.lane import ENV

    connection_file, _ = write_connection_file(str(tmp_path / "kernel.json"), key=b"k")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    control_read, control_write = os.pipe()
    env = {**os.environ, "JPY_PARENT_PID": str(gone.pid), ENV: f"{theirs.fileno()},{control_read}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker_kernel", "-f", connection_file],
        env=env,
        pass_fds=(theirs.fileno(), control_read),
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    os.close(control_read)
    ours.close()  # the host's end of the lane: gone with the host
    os.close(control_write)
    try:
        _, err = worker.communicate(timeout=60)  # TimeoutExpired if it waits on itself
        assert worker.returncode == 0, err
        assert "exiting" in err  # said on its own stderr, since the lane is gone
    finally:
        worker.kill()


def test_a_busy_worker_exits_when_its_host_dies(workers_dir, host_that_ends):
    """Even in the middle of a long call (its main thread busy), a worker must not outlive its host."""
    script = (
        "import io\n"
        "from wb_magic import WorkerBroker\n"
        "b = WorkerBroker(warm_workers=0)\n"
        f"values = b.worker_proxy({str(workers_dir / 'values.py')!r})\n"
        "pid = values.pid()\n"
        "class Die(io.StringIO):\n"
        "    def write(self, text):\n"
        "        if 'waiting' in text:  # the worker is inside the call: the host dies now\n"
        "            end_when_told(pid, 'kill')\n"
        "        return len(text)\n"
        "sys.stdout = Die()\n"
        "values.wait_for_file('/nonexistent/never')\n"
    )
    host_that_ends(script, -9)


def test_sigint_interrupts_running_code_and_is_ignored_when_idle(kernel_spec_dir):
    """interrupt_mode "signal": a SIGINT to the worker process stops the running code, and does not end an idle
    worker."""
    import os
    import signal

    km, kc = _client(kernel_spec_dir)
    try:
        pid = km.provisioner.pid
        os.kill(pid, signal.SIGINT)  # idle: ignored
        assert kc.execute_interactive("1 + 1", timeout=10)["content"]["status"] == "ok"
        msg_id = kc.execute("import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)")
        while kc.get_iopub_msg(timeout=10)["msg_type"] != "stream":
            pass
        os.kill(pid, signal.SIGINT)
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
