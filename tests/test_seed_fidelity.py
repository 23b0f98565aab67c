"""The seed's behaviours that have no other home: its debug switch (``enableDebugging``), lazily started
function proxies, and the entry hooks (``onmessage({initialCall, beforeCall, afterCall})``). Real workers."""

from __future__ import annotations

import inspect

import pytest

import wb_magic
from wb_magic import NoSuchFunction, WorkerBroker


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
