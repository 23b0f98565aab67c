"""The broker with real worker kernels: proxies, values, errors, faults, output."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import io
import logging
import os
import signal
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from wb_magic import CallTimeout, RemoteError, WorkerBroker, WorkerDied, register_marshaller

pytestmark = pytest.mark.usefixtures("link_kind")  # with the lane and with the Jupyter channels


@pytest.fixture
def values(broker, workers_dir):
    return broker.worker_proxy(workers_dir / "values.py")


def test_module_and_function_proxies(broker, workers_dir):
    hello = broker.worker_proxy(str(workers_dir / "hello.py"))
    assert hello.hello("World") == "Hello World"
    fn = broker.worker_fn_proxy(workers_dir / "hello.py", "hello")
    assert fn("World", greeting="Hi") == "Hi World"
    url = broker.worker_proxy((workers_dir / "hello.py").as_uri())
    assert url.hello("URL") == "Hello URL"
    assert len(broker.workers) == 1  # one module, one worker, whichever way it was named


def test_dotted_module_names(broker, workers_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(workers_dir))
    monkeypatch.setenv("PYTHONPATH", str(workers_dir))
    assert broker.worker_proxy("hello").hello("dotted") == "Hello dotted"


def test_async_proxies(broker, workers_dir):
    async def main():
        ahello = broker.worker_proxy(workers_dir / "hello.py", asynchronous=True)
        fn = broker.worker_fn_proxy(workers_dir / "hello.py", "ahello", asynchronous=True)
        return await asyncio.gather(ahello.hello("World"), ahello.ahello("async"), fn("fn"))

    assert asyncio.run(main()) == ["Hello World", "Hello async", "Hello fn"]


def test_sync_functions_may_use_asyncio_run_after_the_worker_started_its_loop(broker, workers_dir):
    """The worker runs an event loop from its first ``async def`` call on; its sync functions still run as if
    none were running, so asyncio.run() works in them before and after."""
    loops = broker.worker_proxy(workers_dir / "loops.py")
    assert loops.twice_with_asyncio_run(1) == 2
    assert loops.atwice(2) == 4  # the worker's loop starts here
    assert loops.twice_with_asyncio_run(3) == 6
    assert loops.atwice(4) == 8  # and its own loop still serves


def test_a_modules_own_logging_py_does_not_break_the_worker(broker, workers_dir):
    """The worker imports logging only when it logs; by then a target module may have imported a logging.py of
    its own, which the worker must not trip over (a reload logs, for one)."""
    target = workers_dir / "shadow" / "uses_own_logging.py"
    shadowed = broker.worker_proxy(target)
    assert shadowed.log_and_count("one") == 1
    broker.worker_import(target, cache_buster="v2")  # the worker logs the reload
    assert shadowed.log_and_count("two") == 2  # the worker still serves (its logging.py stays imported)


def test_introspection_shows_the_remote_module(broker, workers_dir):
    hello = broker.worker_proxy(workers_dir / "hello.py")
    assert {"hello", "ahello"} <= set(dir(hello))
    assert str(inspect.signature(hello.hello)) == "(name: str, greeting: str = 'Hello') -> str"
    assert hello.hello.__doc__ == "Greet someone by name."
    text = io.StringIO()
    import pydoc

    text.write(pydoc.render_doc(hello.hello, renderer=pydoc.plaintext))
    assert "Greet someone by name." in text.getvalue()
    with pytest.raises(AttributeError, match="'hello'.*no function 'nope'"):
        hello.nope  # noqa: B018


def test_segregated_workers_keep_their_own_state(broker, workers_dir):
    plain = broker.worker_proxy(workers_dir / "counter.py")
    alice = broker.worker_proxy((workers_dir / "counter.py", "alice"))
    bob = broker.worker_proxy((workers_dir / "counter.py", "bob"))
    assert [plain.increment(), plain.increment(), alice.increment(), bob.increment(), alice.increment()] == [
        1,
        2,
        1,
        1,
        2,
    ]
    pids = {w.pid for w in broker.workers}
    assert len(pids) == 3
    empty = broker.worker_proxy((workers_dir / "counter.py", ""))
    assert empty.increment() == 3  # an empty segregation id counts as none, as in the seed


def test_worker_key_supplier_shares_one_worker(workers_dir):
    with WorkerBroker(worker_key_supplier=lambda module, sid: "shared") as broker:
        a = broker.worker_proxy(workers_dir / "values.py")
        b = broker.worker_proxy(workers_dir / "hello.py")
        assert a.pid() == broker.worker_proxy(workers_dir / "values.py").pid()
        assert b.hello("x") == "Hello x"
        assert len(broker.workers) == 1
        assert broker.workers[0].key == "shared"


def test_values_cross_both_ways(values):
    sample = [
        None,
        True,
        2**100,
        -1.5,
        float("inf"),
        "ünïcode",
        b"\x00bytes",
        bytearray(b"ba"),
        (1, (2, 3)),
        {1: "int key", (1, 2): "tuple key", "$w": "tag-like key"},
        {"nested": [{"set": {1, 2}}, frozenset({"x"})]},
        3 + 4j,
        dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.timezone.utc),
        dt.date(2026, 1, 1),
        dt.time(12, 0),
        dt.timedelta(days=2, seconds=3),
        Decimal("1.10"),
        __import__("uuid").UUID(int=7),
        Path("/tmp/x"),
    ]
    assert values.echo(sample) == sample
    assert values.echo(None) is None
    assert values.nothing() is None
    nan = values.echo(float("nan"))
    assert nan != nan
    assert values.echo_many(1, 2, key="word") == [[1, 2], {"key": "word"}]


def test_numpy_arrays_cross_as_frames(values):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    back = values.echo(array)
    assert back.dtype == array.dtype and back.shape == (3, 4) and (back == array).all()
    assert values.array_sum(np.ones((100, 100))) == 10_000.0
    assert values.make_array(6).shape == (3, 2)
    big = np.random.default_rng(1).random(1_000_000)
    assert (values.echo(big) == big).all()
    with pytest.raises(TypeError, match=r"numpy.ndarray.*args\[0\]"):
        values.echo(np.array([object()], dtype=object))


def test_unsendable_values_fail_the_call_with_their_place(values):
    with pytest.raises(TypeError, match=r"'threading.Lock'.*args\[0\]\['a'\]\[1\]|lock.*args\[0\]\['a'\]\[1\]"):
        values.echo({"a": [1, threading.Lock()]})
    with pytest.raises(TypeError, match=r"builtins.object.*the result"):
        values.unsendable()
    assert values.echo("still fine") == "still fine"  # nothing was lost


def test_text_utf8_cannot_carry_fails_at_once(values):
    """A lone surrogate cannot be encoded: the call fails with a TypeError rather than waiting for a reply that
    never comes, whichever side it is on (test_codec checks both of the wire's JSON encoders refuse it)."""
    with pytest.raises(TypeError, match="surrogates not allowed"):
        values.lone_surrogate("result")
    with pytest.raises(TypeError, match="surrogates not allowed"):
        values.lone_surrogate("error")
    with pytest.raises(TypeError, match="surrogates not allowed"):
        values.echo("x\udc80y")
    assert values.echo("still fine") == "still fine"


def test_registered_marshallers(values):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    register_marshaller("test.point", Point, lambda p: [p.x, p.y], lambda v: tuple(v))
    # the worker has no marshaller for the tag: the call fails with a clear error, the worker lives on
    with pytest.raises(ValueError, match="unknown value tag 'test.point'"):
        values.echo(Point(1, 2))
    assert values.echo(1) == 1


class Denied(Exception):
    """The host's twin of tests/workers/denied.py's type, registered under the same tag."""

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status, self.reason = status, reason


def test_registered_exception_types_arrive_as_themselves(broker, workers_dir):
    register_marshaller("test.denied", Denied, lambda e: [e.status, e.reason], lambda v: Denied(*v))
    denied = broker.worker_proxy(workers_dir / "denied.py")
    with pytest.raises(Denied) as info:
        denied.deny(403)
    assert (info.value.status, info.value.reason) == (403, "no entry")
    assert "raise Denied(status" in info.value.remote_traceback
    with pytest.raises(Denied) as info:  # raised in one worker, caught as itself in another, raised on
        denied.deny_through(403)
    assert (info.value.status, info.value.reason) == (404, "passed on: no entry")
    with pytest.raises(RemoteError):  # a type the host has not registered is still a RemoteError
        broker.worker_proxy(workers_dir / "values.py").raise_custom("custom")


def test_builtin_exceptions_arrive_as_themselves(values):
    with pytest.raises(ValueError, match="bad value") as info:
        values.raise_builtin("ValueError", "bad value")
    assert "raise_builtin" in info.value.remote_traceback
    with pytest.raises(KeyError):
        values.raise_builtin("KeyError", "k")
    with pytest.raises(PermissionError, match="denied"):
        values.raise_builtin("PermissionError", "denied")


def test_an_uncaught_remote_error_in_a_plain_script_shows_the_remote_traceback(workers_dir, tmp_path):
    """Python prints the worker's traceback below the local one: as a note, or on 3.10 as the chained cause."""
    script = tmp_path / "script.py"
    script.write_text(
        "from wb_magic import WorkerBroker\n"
        "with WorkerBroker(warm_workers=0) as broker:\n"
        f"    broker.worker_proxy({str(workers_dir / 'values.py')!r}).raise_builtin('ValueError', 'bad value')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert 'values.py", line 22, in raise_builtin' in done.stderr, done.stderr
    assert "ValueError: bad value" in done.stderr


def test_other_exceptions_arrive_as_remote_error(values):
    with pytest.raises(RemoteError, match="values.CustomError: custom") as info:
        values.raise_custom("custom")
    assert info.value.type_name == "values.CustomError"
    assert "raise_custom" in info.value.remote_traceback


def test_a_worker_cannot_end_its_caller(values):
    with pytest.raises(RemoteError, match="SystemExit"):
        values.exit_worker()
    assert values.echo(1) == 1


def test_worker_death_fails_the_call_and_the_next_call_starts_afresh(broker, values):
    first = values.pid()
    with pytest.raises(WorkerDied, match="SIGKILL"):
        values.crash()
    assert values.pid() != first
    assert len(broker.workers) == 1


def test_call_timeout_and_per_call_override(workers_dir):
    with WorkerBroker(call_timeout=0.5) as broker:
        patient = broker.worker_proxy(workers_dir / "values.py", timeout=60)
        assert patient.echo("up") == "up"  # the worker has started: from here the broker's 0.5 s applies
        values = broker.worker_proxy(workers_dir / "values.py")
        with pytest.raises(CallTimeout) as info:
            values.block_until_interrupted()
        assert isinstance(info.value, TimeoutError)
        assert patient.echo("usable") == "usable"  # the stuck call was interrupted, or this would wait behind it
        assert values.slow.with_timeout(60)(0.6) == 0.6


def test_async_timeout(workers_dir):
    with WorkerBroker() as broker:
        hasty = broker.worker_proxy(workers_dir / "values.py", asynchronous=True, timeout=0.5)
        patient = broker.worker_proxy(workers_dir / "values.py", asynchronous=True, timeout=60)

        async def main():
            assert await patient.echo("up") == "up"
            with pytest.raises(CallTimeout):
                await hasty.block_until_interrupted()
            return await patient.echo("after")

        assert asyncio.run(main()) == "after"


def test_many_gathered_calls_reach_every_worker_and_keep_their_order(workers_dir):
    """Calls made together leave in batches (Pump.batch): each gets its own answer, a timeout in the middle
    of a batch fails only its own call, and a cancelled one leaves the rest alone."""
    with WorkerBroker() as broker:
        first = broker.worker_proxy(workers_dir / "values.py", asynchronous=True, timeout=60)
        second = broker.worker_proxy((workers_dir / "values.py", "second"), asynchronous=True, timeout=60)
        hasty = broker.worker_proxy((workers_dir / "values.py", "hasty"), asynchronous=True, timeout=0.5)
        stuck = broker.worker_proxy((workers_dir / "values.py", "stuck"), asynchronous=True, timeout=60)

        async def main():
            assert await hasty.echo("up") == "up"
            calls = [(first if i % 2 else second).echo(i) for i in range(100)]
            calls.insert(37, hasty.block_until_interrupted())
            doomed = asyncio.ensure_future(stuck.block_until_interrupted())
            results = await asyncio.gather(*calls, return_exceptions=True)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return results, await stuck.echo("after")

        results, after = asyncio.run(main())
    assert isinstance(results.pop(37), CallTimeout)
    assert results == list(range(100))
    assert after == "after"


def test_a_blocking_call_from_a_coroutine_sends_the_calls_queued_before_it(workers_dir, tmp_path):
    """Coroutines' calls leave in batches at the end of the loop's pass; a sync call made on the loop's thread
    blocks that pass, so the calls queued before it must leave first (here, the one it waits for)."""
    fifo = tmp_path / "line"
    os.mkfifo(fifo)
    with WorkerBroker() as broker:
        writer = broker.worker_proxy((workers_dir / "values.py", "writer"), asynchronous=True)
        patient = broker.worker_proxy(workers_dir / "patient.py", timeout=30)

        async def main():
            assert await writer.echo("up") == "up"  # started: the calls below are made without a wait
            first = asyncio.ensure_future(writer.echo("first"))  # the first of a pass goes at once
            release = asyncio.ensure_future(writer.write_line(str(fifo), "released"))  # this one is queued
            await asyncio.sleep(0)  # one step each: both calls are made
            assert patient.wait_for_line(str(fifo)) == "released"
            return await asyncio.gather(first, release)

        assert asyncio.run(main()) == ["first", None]


class _Trigger(io.StringIO):
    """A stdout that sends the test process SIGINT (a Ctrl-C) when the worker says it has started."""

    def write(self, text):
        if "started" in text:
            os.kill(os.getpid(), signal.SIGINT)
        return super().write(text)


def test_keyboard_interrupt_interrupts_the_workers_call(values, monkeypatch):
    monkeypatch.setattr("sys.stdout", _Trigger())
    with pytest.raises(KeyboardInterrupt):
        values.block_until_interrupted()
    monkeypatch.undo()
    assert values.echo("alive") == "alive"


def test_prints_reach_the_callers_streams(values, capsys):
    assert values.talk(3) == 3
    out, err = capsys.readouterr()
    assert out == "line 0\nline 1\nline 2\n"
    assert err == "to stderr\n"


def test_long_output_all_arrives_and_the_channel_stays_usable(values, capsys):
    assert values.talk(700) == 700  # more messages than the broker takes from a socket in one turn
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f"line {i}" for i in range(700)]
    assert values.talk(2) == 2
    assert capsys.readouterr().out == "line 0\nline 1\n"


def test_worker_output_is_plain_text(values, capsys):
    values.echo_print("bell\a clear\x1b[2J title\x1b]0;pwned\x07 tab\tend")
    assert capsys.readouterr().out == "bell clear[2J title]0;pwned tab\tend\n"


def test_remove_and_terminate(broker, values, workers_dir):
    pid = values.pid()
    assert broker.remove_worker(workers_dir / "values.py") is True
    assert broker.remove_worker(workers_dir / "values.py") is False
    assert values.pid() != pid
    broker.terminate()
    assert broker.workers == []
    assert values.echo("usable after terminate") == "usable after terminate"


def test_hooks_run_around_every_call(workers_dir):
    from wb_magic import WorkerSpec

    spec = WorkerSpec(hooks=str(workers_dir / "hooks.py"))
    with WorkerBroker(worker_constructor=lambda module, sid: spec) as broker:
        hooks = broker.worker_proxy(workers_dir / "hooks.py")
        with pytest.raises(RuntimeError):
            hooks.fail()
        assert hooks.history() == ["initial", "before fail", "after fail", "before history"]


def test_worker_constructor_sets_env_and_cwd(workers_dir, tmp_path):
    from wb_magic import WorkerSpec

    seen = []

    def construct(module, segregation_id):
        seen.append((module, segregation_id))
        return WorkerSpec(env={"WB_TEST_VALUE": "from-spec"}, cwd=str(tmp_path))

    with WorkerBroker(worker_constructor=construct) as broker:
        values = broker.worker_proxy((workers_dir / "values.py", "s1"))
        assert values.environment("WB_TEST_VALUE") == "from-spec"
        assert seen == [(str(workers_dir / "values.py"), "s1")]


def test_bad_targets_get_clear_errors(broker, tmp_path):
    with pytest.raises(ValueError, match="neither a path"):
        broker.worker_proxy("not a module!")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        broker.worker_proxy(tmp_path / "missing.py").anything()
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(SyntaxError):
        broker.worker_proxy(broken).f()


def test_debug_logging(broker, values, caplog):
    import wb_magic.debug

    wb_magic.debug.enable()
    try:
        with caplog.at_level(logging.DEBUG, logger="wb_magic"):
            broker.remove_worker(values._wb_target)
            values.echo(1)
        assert any("started worker" in r.message for r in caplog.records)
    finally:
        wb_magic.debug.disable()


def test_workers_launch_through_a_named_kernel_spec(kernel_spec_dir, workers_dir):
    """WorkerSpec(kernel_name=...): the launch goes through jupyter_client's kernel spec (and its provisioner)."""
    from wb_magic import WorkerSpec

    spec = WorkerSpec(kernel_name="wb-worker")
    with WorkerBroker(worker_constructor=lambda module, sid: spec, warm_workers=0) as broker:
        assert broker.worker_proxy(workers_dir / "hello.py").hello("spec") == "Hello spec"


@pytest.mark.parametrize("function", ["syntax_error", "exception_group", "os_error"])
def test_a_remote_exception_prints_no_terminal_control_characters(broker, workers_dir, function):
    """However deeply the worker hides them in its exception's arguments, what Python prints of the rebuilt
    exception (a plain script's uncaught traceback) carries no escape sequence, carriage return or reordering."""
    import traceback

    escapes = broker.worker_proxy(workers_dir / "nested_escapes.py")
    with pytest.raises(Exception) as info:
        getattr(escapes, function)()
    shown = "".join(traceback.format_exception(info.value))
    assert "PWNED-TITLE" in shown or "evil" in shown  # the text is there, without the controls
    assert not any(c in shown for c in ("\x1b", "\x07", "\r", "\u202e")), repr(shown)
