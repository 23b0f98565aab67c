"""Workers calling workers, routed and stamped by the broker."""

from __future__ import annotations

import pytest

from wb_magic import CallTimeout, WorkerBroker

pytestmark = pytest.mark.usefixtures("link_kind")  # with the lane and with the Jupyter channels


@pytest.fixture
def caller(broker, workers_dir):
    return broker.worker_proxy(workers_dir / "caller.py")


def test_a_worker_calls_another_by_a_relative_path(caller, broker):
    assert caller.greet("from a worker") == "Hello from a worker"
    modules = sorted(w.module.rsplit("/", 1)[-1] for w in broker.workers)
    assert modules == ["caller.py", "hello.py"]


def test_the_broker_stamps_the_true_source(caller, broker, workers_dir):
    assert caller.who_calls_callee() == ["caller.py", None]
    segregated = broker.worker_proxy((workers_dir / "caller.py", "tenant-7"))
    assert segregated.who_calls_callee() == ["caller.py", "tenant-7"]
    # called from the host, the source is empty
    assert broker.worker_proxy(workers_dir / "caller.py").identity() == [
        None,
        None,
        str(workers_dir / "caller.py"),
        "identity",
    ]


def test_a_cycle_completes(caller):
    assert caller.ping(6) == "done"  # caller -> callee -> caller -> ... six hops deep


def test_async_functions_interleave(caller):
    # each wait_for_token call finishes only when three have arrived: they must run side by side
    assert caller.gather_slow(3) == [0, 1, 2]


def test_errors_cross_back(caller):
    with pytest.raises(FileNotFoundError, match="does_not_exist.py"):
        caller.call_missing()
    assert caller.greet("after an error") == "Hello after an error"


def test_output_of_a_nested_call_reaches_the_host(caller, capsys):
    assert caller.print_through() == "CALLEE PRINTS"
    assert capsys.readouterr().out == "caller prints\ncallee prints\n"


def test_nested_timeout(workers_dir, tmp_path):
    module = tmp_path / "impatient.py"
    module.write_text(
        "from worker_kernel import broker_proxy, CallTimeout\n"
        f"values = broker_proxy().worker_proxy({str(workers_dir / 'values.py')!r}, timeout=0.3)\n"
        "def try_it():\n"
        "    try:\n"
        "        values.block_until_interrupted()\n"
        "    except CallTimeout as exc:\n"
        "        return 'timed out: ' + type(exc).__name__\n"
    )
    with WorkerBroker() as broker:
        assert broker.worker_proxy(module).try_it() == "timed out: CallTimeout"


def test_timeout_inside_a_worker_reaches_the_host_as_call_timeout(workers_dir, tmp_path):
    module = tmp_path / "impatient2.py"
    module.write_text(
        "from worker_kernel import broker_proxy\n"
        f"values = broker_proxy().worker_proxy({str(workers_dir / 'values.py')!r}, timeout=0.3)\n"
        "def try_it():\n"
        "    return values.block_until_interrupted()\n"
    )
    with WorkerBroker() as broker:
        with pytest.raises(CallTimeout):
            broker.worker_proxy(module).try_it()


def test_a_call_policy_can_refuse_worker_to_worker_calls(workers_dir):
    seen = []

    def policy(source, source_sid, target, target_sid, function):
        seen.append((source.rsplit("/", 1)[-1], target.rsplit("/", 1)[-1], function))
        return not target.endswith("hello.py")

    with WorkerBroker(call_policy=policy) as broker:
        caller = broker.worker_proxy(workers_dir / "caller.py")
        with pytest.raises(PermissionError, match=r"caller.py may not call hello\(\) of hello.py"):
            caller.greet("denied")
        assert caller.who_calls_callee() == ["caller.py", None]  # another target is allowed
        assert seen == [("caller.py", "hello.py", "hello"), ("caller.py", "callee.py", "who_called")]


def test_a_segregation_id_means_the_same_worker_from_the_host_and_from_a_worker(caller, broker, workers_dir):
    """Every side reads a target alike (worker_kernel.loader.split_target): 0 is the worker of "0", not the
    shared one; None and "" are the shared one."""
    counter = workers_dir / "counter.py"
    assert broker.worker_proxy((counter, 0)).increment() == 1
    assert caller.count_in(0) == 2
    assert caller.count_in("0") == 3
    assert broker.worker_proxy((counter, "0")).increment() == 4
    assert caller.count_in(None) == 1
    assert caller.count_in("") == 2
    assert broker.worker_proxy(counter).increment() == 3
    assert {w.segregation_id for w in broker.workers if w.module == str(counter)} == {None, "0"}


def test_split_target():
    from worker_kernel.loader import split_target

    assert split_target("m.py") == ("m.py", None)
    assert split_target(("m.py", 0)) == ("m.py", "0")
    assert split_target(("m.py", "")) == ("m.py", None)
    assert split_target(("m.py", None)) == ("m.py", None)
    assert split_target(("m.py", False)) == ("m.py", "False")
    with pytest.raises(ValueError, match="a target is a module spec or a"):
        split_target(("m.py", "a", "b"))


def test_module_file_finds_a_dotted_module_without_importing_it():
    """What ``proxy.fn?`` names as the file of a dotted module: found on the host without running its packages."""
    import subprocess
    import sys

    code = (
        "import sys; from worker_kernel.loader import module_file\n"
        "print(module_file('xml.dom.minidom'), module_file('xml.nothere'), module_file('sys'), 'xml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("/xml/dom/minidom.py") and out[1:] == ["None", "None", "False"]


def test_routed_calls_with_a_timeout_leave_no_timer_behind(caller, broker, workers_dir):
    """Each routed call with a timeout sets a timer in the broker, and a turn on every event loop the broker
    serves; a call that ends forgets both, so a worker that makes many calls with long timeouts does not make
    the host hold one per call until they expire."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()  # an application's event loop (a notebook's, say) that has made async calls
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        hello = broker.worker_proxy(workers_dir / "hello.py", asynchronous=True).hello
        assert asyncio.run_coroutine_threadsafe(hello("loop"), loop).result(60) == "Hello loop"
        assert caller.greet_within(300, 600) == 300
        for _ in range(2):  # the cancellations reach the loop through its queue: let it take them
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(60)
        assert len([timer for timer in broker._pump._timers if timer[2] is not None]) < 5  # heartbeats, say
        assert len(broker._pump._timers) <= 300 // 2 + 5
        assert len([handle for handle in loop._scheduled if not handle.cancelled()]) < 5
    finally:
        loop.call_soon_threadsafe(loop.stop)
