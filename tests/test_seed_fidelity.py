"""The seed's behaviours that have no other home: its debug switch (``enableDebugging``), lazily started
function proxies, and the entry hooks (``onmessage({initialCall, beforeCall, afterCall})``). Real workers."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import wb_magic
from wb_magic import CallTimeout, NoSuchFunction, WorkerBroker, WorkerSpec, WorkerStartError


def test_enable_debugging_takes_a_log_function(workers_dir):
    lines: list[str] = []
    wb_magic.enable_debugging(lines.append)
    try:
        with WorkerBroker(warm_workers=0) as broker:
            assert broker.worker_proxy(workers_dir / "hello.py").hello("log") == "Hello log"
    finally:
        wb_magic.enable_debugging(False)
    assert any("started worker" in line for line in lines), lines
    count = len(lines)
    with WorkerBroker(warm_workers=0) as broker:
        broker.worker_proxy(workers_dir / "hello.py").hello("quiet")
    assert len(lines) == count  # off again


def test_a_workers_debug_switch_is_turned_on_from_the_host(workers_dir, capsys):
    with WorkerBroker(warm_workers=0) as broker:
        hello = broker.worker_proxy(workers_dir / "hello.py")
        hello.hello("before")
        assert "call hello()" not in capsys.readouterr().err
        broker.enable_worker_debugging(workers_dir / "hello.py")
        assert hello.hello("during") == "Hello during"
        err = capsys.readouterr().err
        assert f"call hello() of {workers_dir / 'hello.py'} from the host" in err
        broker.enable_worker_debugging(workers_dir / "hello.py", False)
        hello.hello("after")
        assert "call hello()" not in capsys.readouterr().err


def test_a_sync_function_proxy_starts_its_worker_at_the_first_call(workers_dir):
    with WorkerBroker(warm_workers=0) as broker:
        fn = broker.worker_fn_proxy(workers_dir / "hello.py", "hello")
        missing = broker.worker_fn_proxy(workers_dir / "hello.py", "nothere")
        assert broker.workers == []  # as the seed's workerFnProxy: nothing starts until a call
        assert fn("lazy") == "Hello lazy"
        assert len(broker.workers) == 1
        with pytest.raises(NoSuchFunction, match="nothere"):
            missing()
        assert str(inspect.signature(fn)) == "(name: str, greeting: str = 'Hello') -> str"
        assert fn.__doc__ == "Greet someone by name."
        assert inspect.getsourcefile(inspect.unwrap(fn)) == str(workers_dir / "hello.py")
        assert fn.with_timeout(30)("timed") == "Hello timed"


# -- entry hooks ---------------------------------------------------------------------------------------------


def hooked_broker(workers_dir, mode: str) -> WorkerBroker:
    spec = WorkerSpec(hooks=str(workers_dir / "seed_hooks.py"), env={"WB_HOOKS_MODE": mode})
    return WorkerBroker(worker_constructor=lambda module, sid: spec, warm_workers=0, call_timeout=60)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_initial_call_runs_before_the_module_is_imported_also_for_an_import(workers_dir, mode):
    with hooked_broker(workers_dir, mode) as broker:
        broker.worker_import(workers_dir / "seed_hooked.py")
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py")
        assert hooked.log() == ["initial", "import", "before log"]
        assert hooked.alog() == ["initial", "import", "before log", "after log", "before alog"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_initial_call_runs_before_an_inspect_request_imports(workers_dir, mode):
    with hooked_broker(workers_dir, mode) as broker:
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py")
        assert "log" in dir(hooked)  # a wb_inspect_request, the worker's first
        assert hooked.log()[:2] == ["initial", "import"]


def test_async_initial_call_holds_the_requests_that_come_meanwhile(workers_dir):
    async def main(broker):
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py", asynchronous=True)
        return await asyncio.gather(*(hooked.alog() for _ in range(5)), hooked.log())

    with hooked_broker(workers_dir, "async") as broker:
        results = asyncio.run(main(broker))
    assert all(result[:2] == ["initial", "import"] for result in results)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_after_call_runs_when_before_call_raised_and_the_call_fails_with_the_hooks_error(workers_dir, mode):
    with hooked_broker(workers_dir, mode) as broker:
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py")
        with pytest.raises(PermissionError, match="before_call refused guarded"):
            hooked.guarded()
        assert hooked.log()[-3:] == ["before guarded", "after guarded", "before log"]


def test_a_failed_initial_call_keeps_the_module_out_for_good(workers_dir):
    with hooked_broker(workers_dir, "failing-initial") as broker:
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py")
        with pytest.raises(RuntimeError, match="could not lock things down"):
            hooked.log()
        with pytest.raises(WorkerStartError, match="initial_call hook failed .*: it imports nothing"):
            broker.worker_import(workers_dir / "seed_hooked.py")
        with pytest.raises(WorkerStartError):
            broker.worker_fn_proxy(workers_dir / "seed_hooked.py", "log")()


def test_a_sync_call_whose_hooks_are_coroutines_can_be_interrupted(workers_dir):
    with hooked_broker(workers_dir, "async") as broker:
        hooked = broker.worker_proxy(workers_dir / "seed_hooked.py")
        hooked.log()
        pid = broker.worker_for(workers_dir / "seed_hooked.py").pid
        with pytest.raises(CallTimeout):
            hooked.sleep_long.with_timeout(1)()
        assert hooked.log()[-3:] == ["before sleep_long", "after sleep_long", "before log"]  # after_call ran
        assert broker.worker_for(workers_dir / "seed_hooked.py").pid == pid  # the same worker serves on
