"""The broker against a hostile worker: a fake kernel (tests/workers/hostile_kernel.py) that holds its own key and
sends whatever it likes on its sockets. The broker must drop what is not well formed and signed, never let one
worker's bytes reach another worker's call, stamp the true source of worker-to-worker calls, and keep serving
everyone else.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wb_magic import WorkerBroker, WorkerBrokerError, WorkerSpec
from worker_kernel.wire import DELIMITER

WORKERS = Path(__file__).parent / "workers"
HOSTILE = str(WORKERS / "hostile_kernel.py")
HELLO = str(WORKERS / "hello.py")


def _construct(module, segregation_id):
    if module == HOSTILE:
        return WorkerSpec(argv=(sys.executable, HOSTILE, "-f", "{connection_file}"))
    return WorkerSpec()


@pytest.fixture
def brokered():
    with WorkerBroker(worker_constructor=_construct, call_timeout=60) as broker:
        yield broker, broker.worker_proxy(HOSTILE), broker.worker_proxy(HELLO)


def test_malformed_unsigned_and_missigned_messages_are_dropped(brokered):
    _, hostile, honest = brokered
    assert hostile.garbage_then_echo(7) == 7  # nine kinds of garbage on shell, iopub and stdin came first
    assert honest.hello("still") == "Hello still"
    assert hostile.echo(8) == 8


def test_duplicate_and_stray_replies_are_dropped(brokered):
    _, hostile, _ = brokered
    assert hostile.double_reply(1) == 1
    assert hostile.echo(2) == 2  # the extra replies to the first call did not answer this one


def test_a_worker_cannot_answer_another_workers_call(brokered, tmp_path):
    broker, hostile, _ = brokered
    patient = broker.worker_proxy(WORKERS / "patient.py")
    fifo = tmp_path / "line"
    os.mkfifo(fifo)
    result: list = []
    waiting = threading.Thread(target=lambda: result.append(patient.wait_for_line(str(fifo))))
    waiting.start()
    with open(fifo, "w", encoding="utf-8") as writer:  # opens once the patient worker is inside its call
        (call_id,) = broker.worker_for(WORKERS / "patient.py").pending
        assert hostile.forge(str(call_id), "forged value") == "forged"  # a signed reply and output for that call id
        writer.write("the real answer\n")
    waiting.join(timeout=60)
    assert result == ["the real answer"]


def test_a_worker_cannot_pose_as_another(brokered):
    _, hostile, _ = brokered
    callee, caller = str(WORKERS / "callee.py"), str(WORKERS / "caller.py")
    # it claims to be caller.py in segregation "tenant-7": the broker stamps what it really is
    assert hostile.pose_as(callee, "who_called", caller, "tenant-7") == ["hostile_kernel.py", None]


def test_false_output_counts_do_not_hang_a_call(brokered):
    _, hostile, honest = brokered
    for claim in ("lots", -1, None, [1], 10**30):
        assert hostile.bad_outputs(claim) == "claimed"  # at most OUTPUT_GRACE late
    assert honest.hello("after") == "Hello after"


def test_output_without_a_call_goes_to_the_hosts_streams(brokered, capsys):
    _, hostile, _ = brokered
    assert hostile.orphan_output(3) == 3
    assert hostile.echo("sync") == "sync"  # iopub is drained before the next reply is waited for
    out, err = capsys.readouterr()
    assert "orphan" not in out  # never passed off as a call's output
    assert "orphan" not in err or "hostile_kernel.py] " in err  # labelled as the worker's, if shown yet


def test_other_workers_keep_answering_through_an_output_flood(brokered, capsys):
    broker, _, _ = brokered

    async def main():
        flood = broker.worker_proxy(HOSTILE, asynchronous=True).flood_output(5000, 1000)
        honest = broker.worker_proxy(HELLO, asynchronous=True)
        answers = await asyncio.gather(*[honest.hello(str(i)) for i in range(20)])
        return answers, await flood

    answers, flooded = asyncio.run(main())
    assert answers == [f"Hello {i}" for i in range(20)]
    assert flooded == 5000
    assert 0 < len(capsys.readouterr().out) <= 5000 * 1000  # ZeroMQ's high-water marks may drop some of it


def test_an_output_flood_is_capped(brokered, capsys):
    _, hostile, _ = brokered
    assert hostile.flood_output(2000, 10_000) == 2000  # 20 MB of output for one call
    out = capsys.readouterr().out
    assert len(out) <= 2 * 1024 * 1024 and "printed too much: the rest is truncated" in out


def test_the_output_cap_is_noted_once_when_output_comes_line_by_line(brokered, capsys):
    _, hostile, _ = brokered
    assert hostile.flood_output(2000, 10_000) == 2000
    assert capsys.readouterr().out.count("printed too much: the rest is truncated") == 1


def test_a_huge_message_is_refused(brokered):
    broker, hostile, honest = brokered
    with pytest.raises(WorkerBrokerError, match="large"):
        broker.worker_fn_proxy(HOSTILE, "huge_reply", timeout=20)(80 * 1024 * 1024)
    assert honest.hello("after") == "Hello after"


@pytest.mark.parametrize("timeout", [math.nan, math.inf])
def test_a_nan_or_infinite_timeout_cannot_break_the_pump(timeout):
    with WorkerBroker(worker_constructor=_construct) as broker:  # no call timeout, the default
        hostile, honest = broker.worker_proxy(HOSTILE), broker.worker_proxy(HELLO)
        request = {"target": HELLO, "function": "hello", "args": ["x"], "kwargs": {}, "timeout": timeout}
        hostile.route(request, False)  # a timer at now + nan (or inf) is left on the pump
        assert honest.hello("after") == "Hello after"
        # the pump's other timers still fire: a reply that claims outputs that never come ends after the grace
        assert broker.worker_fn_proxy(HOSTILE, "bad_outputs", timeout=20)(10**30) == "claimed"


def test_worker_initiated_launches_are_bounded():
    with WorkerBroker(worker_constructor=_construct, call_timeout=60, max_workers=3) as broker:
        hostile = broker.worker_proxy(HOSTILE)
        for i in range(4):  # each new segregation id would be a new worker process
            request = {"target": HELLO, "function": "hello", "args": ["x"], "kwargs": {}, "segregation_id": i}
            hostile.route(request, True)
        assert len(broker.workers) <= 3


# -- fuzz: whatever frames a worker sends, the broker drops or handles them, and keeps serving -------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
contents = st.dictionaries(
    st.sampled_from(
        [
            "status",
            "value",
            "outputs",
            "text",
            "name",
            "ename",
            "evalue",
            "traceback",
            "target",
            "function",
            "args",
            "kwargs",
            "timeout",
            "segregation_id",
            "source_module",
            "functions",
        ]
    )  # fmt: skip
    | st.text(max_size=8),
    json_values | st.sampled_from(["ok", "error", "stdout", "stderr", "wb_call_reply", "/no/such/module.py", "hello"]),
    max_size=6,
)
structured = st.tuples(
    st.sampled_from(["wb_call_reply", "stream", "wb_broker_request", "status", "execute_result", "wb_inspect_reply"])
    | st.text(max_size=12),
    st.sampled_from([None, "$current"]) | st.dictionaries(st.sampled_from(["msg_id", "msg_type"]), json_values),
    contents,
    st.lists(st.binary(max_size=64), max_size=3),
)
raw_frames = st.lists(st.binary(max_size=64) | st.just(DELIMITER) | st.just(b"{}"), max_size=9)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    channel=st.sampled_from(["shell", "stdin", "iopub"]),
    frames=raw_frames,
    sign=st.booleans(),
    parts=st.none() | structured,
)
def test_fuzz_the_brokers_message_handling(brokered, channel, frames, sign, parts):
    broker, _, honest = brokered
    if parts is not None and parts[0] == "wb_broker_request" and isinstance(parts[2].get("target"), str):
        parts[2]["target"] = "/no/such/module.py"  # routing may launch workers: keep it to a target that fails
    emit = broker.worker_fn_proxy(HOSTILE, "emit", timeout=30)
    stdout, stderr = io.StringIO(), io.StringIO()
    with _redirected(stdout, stderr):
        try:
            outcome = emit(channel, frames, sign, list(parts) if parts else None)
        except Exception as exc:  # a fuzzed reply to this very call may be anything: an error is a fine outcome
            outcome = exc
    assert outcome == "echo" or isinstance(outcome, Exception)
    assert broker.worker_fn_proxy(HOSTILE, "echo", timeout=30)("still serving") == "still serving"
    assert honest.hello("fuzz") == "Hello fuzz"


class _redirected:
    def __init__(self, out, err):
        self.streams = (out, err)

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.streams

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved


def test_the_fuzz_strategies_reach_json_special_values():
    assert json.loads(json.dumps({"t": math.nan}, allow_nan=True))["t"] != 0  # NaN travels, as a fuzzed value may


# -- the host's terminal: what a worker prints or raises reaches it as text (red team findings 03 and 04) --------------

ESCAPES = str(WORKERS / "escapes.py")
UNSAFE = ("\x1b", "\x07", "\r", "\u202e")


def test_output_that_belongs_to_no_call_is_labelled_as_the_workers(capsys):
    with WorkerBroker(call_timeout=60, warm_workers=0) as broker:
        escapes = broker.worker_proxy(ESCAPES)
        assert escapes.stray() == "returned"
        pid = broker.worker_for(ESCAPES).pid
    out, err = capsys.readouterr()
    assert out == ""  # nothing passed off as a call's output (or the host's own)
    assert f'[worker {pid} escapes.py] {{"status": "ok", "balance": 1000000}}\n' in err
    assert f"[worker {pid} escapes.py] INFO:host: all checks passedERROR overwritten\n" in err


def test_a_calls_output_loses_carriage_returns_and_bidirectional_overrides(capsys):
    with WorkerBroker(call_timeout=60, warm_workers=0) as broker:
        assert broker.worker_proxy(ESCAPES).printed() == "ok"
    out = capsys.readouterr().out
    assert out == "visible-lineFORGED host line overwrites\nabcdesrever\n"


HOST_UNCAUGHT = textwrap.dedent(
    """
    import sys
    from wb_magic import WorkerBroker
    with WorkerBroker(call_timeout=60, warm_workers=0) as broker:
        getattr(broker.worker_proxy(sys.argv[1]), sys.argv[2])()
    """
)


@pytest.mark.parametrize("function", ["boom", "boom2"])
def test_a_remote_exception_reaches_a_plain_scripts_terminal_as_text(function):
    """Uncaught in a plain script, printed by Python's own excepthook, message, class name and remote traceback
    carry no escape sequence, carriage return or bidirectional override."""
    done = subprocess.run(
        [sys.executable, "-c", HOST_UNCAUGHT, ESCAPES, function], capture_output=True, timeout=120, check=False
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    assert "PWNED-TITLE" in err and f"in {function}" in err  # the message and the remote traceback are shown
    assert "Remote traceback" in err or "RemoteTraceback" in err  # a note; on Python 3.10, the chained cause
    assert not [c for c in UNSAFE if c in err], err
    if function == "boom2":
        assert "RemoteError: escapes.Bad[31mName: x[5mblink" in err


def test_what_a_module_prints_as_it_is_imported_is_the_importing_calls_output(capsys):
    with WorkerBroker(call_timeout=60, warm_workers=0) as broker:
        assert broker.worker_fn_proxy(WORKERS / "prints_at_import.py", "answer")() == 42
    out, err = capsys.readouterr()
    assert out == "imported\n" and "imported" not in err  # the caller's, not labelled as output of no call
