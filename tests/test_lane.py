"""The lane (worker_kernel/lane.py): the default link of a local worker, and as hostile as a socket.

A worker's lane bytes are checked before anything is allocated for them; a malformed frame, or a lane closed by
the worker, ends that worker only and fails its calls at once. A sandboxed worker is read through its lane alone,
so one message of it cannot make the host hold more than the cap (issue 11, finding 6).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wb_magic import Permissions, WorkerBroker, WorkerDied, WorkerSpec
from worker_kernel import lane
from worker_kernel.sandbox import landlock_abi

WORKERS = Path(__file__).parent / "workers"
HELLO = WORKERS / "hello.py"
WRITER = WORKERS / "lane_writer.py"
FLOOD = str(WORKERS / "untrusted" / "flood.py")
MiB = 1 << 20


def test_local_workers_get_a_lane_unless_told_otherwise(tmp_path):
    with WorkerBroker(call_timeout=60, warm_workers=0, worker_constructor=_spec) as broker:
        assert broker.worker_proxy(HELLO).hello("lane") == "Hello lane"
        assert broker.worker_for(HELLO).link.kind == "lane"
        assert broker.worker_proxy((HELLO, "jupyter")).hello("wire") == "Hello wire"
        assert broker.worker_for((HELLO, "jupyter")).link.kind == "jupyter"


def _spec(module: str, segregation_id: str | None) -> WorkerSpec:
    return WorkerSpec(lane=segregation_id != "jupyter")


def test_a_sandboxed_worker_cannot_be_put_on_the_jupyter_channels():
    with pytest.raises(ValueError, match="a sandboxed worker needs its lane"):
        WorkerSpec(permissions=Permissions(), lane=False)
    with pytest.raises(ValueError, match="a sandboxed worker needs its lane"):
        WorkerSpec(memory_limit=1 << 30, lane=False)
    assert WorkerSpec(permissions=Permissions()).uses_lane
    assert not WorkerSpec(kernel_name="python3").uses_lane
    assert not WorkerSpec(argv=("python", "my_kernel.py", "-f", "{connection_file}")).uses_lane


def test_a_worker_that_closes_its_lane_fails_its_calls_at_once():
    with WorkerBroker(call_timeout=600) as broker:
        writer, honest = broker.worker_proxy(WRITER), broker.worker_proxy(HELLO)
        assert writer.hello("first") == "Hello first"
        with pytest.raises(WorkerDied, match="it closed its lane"):
            writer.send_raw(b"")  # writes nothing, closes its lane and runs on: not a 600 s wait
        assert honest.hello("unaffected") == "Hello unaffected"
        assert writer.hello("a fresh worker") == "Hello a fresh worker"


def test_a_frame_over_the_cap_ends_that_worker_before_it_is_read():
    with WorkerBroker(call_timeout=600, max_message_bytes=MiB) as broker:
        writer, honest = broker.worker_proxy(WRITER), broker.worker_proxy(HELLO)
        header = lane.HEADER.pack(lane.REPLY, 0, 1, 2, 1) + struct.pack("<Q", 1 << 40)
        with pytest.raises(WorkerDied, match=r"broke the lane's format \(a lane frame of 1099511627778 bytes"):
            writer.send_raw(header + b"{}", False)
        assert honest.hello("unaffected") == "Hello unaffected"


def test_a_value_of_max_message_bytes_travels_both_ways():
    with WorkerBroker(call_timeout=600, max_message_bytes=MiB) as broker:
        values = broker.worker_proxy(WORKERS / "values.py")
        assert values.echo(b"x" * MiB) == b"x" * MiB  # the cap is the value's: its JSON comes on top


def test_output_and_a_large_value_travel_on_the_lane(capsys):
    with WorkerBroker(call_timeout=60) as broker:
        values = broker.worker_proxy(WORKERS / "values.py")
        big = os.urandom(3 * lane.CHUNK + 5)  # read straight into a block of its own, on both sides
        assert values.echo(big) == big
        honest = broker.worker_proxy(HELLO)
        assert honest.hello("out") == "Hello out"


# -- the reader against any bytes ---------------------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Lane bytes, mostly near the format: plausible headers with wrong fields, lengths and bodies, or noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    count = draw(st.integers(0, 5) | st.sampled_from([lane.MAX_BUFFERS + 1, 0xFFFF]))
    length = st.integers(0, 64) | st.sampled_from([1 << 30, 2**64 - 1])
    lengths = draw(st.lists(length, min_size=min(count, 5), max_size=min(count, 5)))  # a count too large: cut
    body = draw(st.sampled_from([b"{}", b"[]", b'{"status":"ok","value":1}', b"\xff", b"{"]) | st.binary(max_size=32))
    json_length = draw(st.sampled_from([len(body), 0, 2**32 - 1]) | st.integers(0, 40))
    header = struct.pack(
        "<BBHIQ", draw(st.integers(0, 9)), draw(st.sampled_from([0, 0, 1])), count, json_length, draw(st.integers(0, 9))
    )
    return header + struct.pack(f"<{len(lengths)}Q", *lengths) + body + draw(st.binary(max_size=64))


@settings(max_examples=300, deadline=None)
@given(data=frames())
def test_the_reader_checks_every_length_before_allocating(data):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader = lane.LaneReader(ours.fileno(), max_message_bytes=4096)
    try:
        theirs.sendall(data)
        theirs.close()
        with pytest.raises((lane.LaneError, lane.LaneClosed)):
            while True:
                for frame in reader.read():
                    assert type(frame.content) is dict
                    assert sum(len(b) for b in frame.buffers) <= reader.max_frame
                assert reader._block is None or len(reader._block) <= reader.max_frame
    finally:
        ours.close()


def test_a_small_frame_alone_in_one_read_meets_the_same_caps():
    """A frame that arrives whole and alone is parsed in one step: its JSON cap, header and body are checked
    there as on the general path."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader = lane.LaneReader(ours.fileno(), max_message_bytes=4096, max_json=64)
    try:
        theirs.sendall(lane.encode(lane.REPLY, 7, {"status": "ok"})[0])
        (frame,) = reader.read()
        assert (frame.kind, frame.id, frame.content, frame.buffers) == (lane.REPLY, 7, {"status": "ok"}, [])
        for bad, why in [
            (lane.encode(lane.REPLY, 8, {"x": "y" * 100})[0], "over the cap of 64"),
            (lane.HEADER.pack(lane.REPLY, 0, 0, 2, 9) + b"[]", "must be a JSON object"),
            (lane.HEADER.pack(lane.REPLY, 0, 0, 1, 9) + b"{", "not JSON"),
        ]:
            theirs.sendall(bad)
            with pytest.raises(lane.LaneError, match=why):
                reader.read()
    finally:
        ours.close()
        theirs.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=frames())
def test_malformed_frames_from_a_worker_end_that_worker_only(data, lane_broker):
    broker, honest = lane_broker
    writer = broker.worker_proxy(WRITER)
    with pytest.raises(WorkerDied):  # the worker closes its lane after writing, whatever the bytes say
        writer.send_raw(data)
    assert honest.hello("still") == "Hello still"


@pytest.fixture(scope="module")
def lane_broker():
    with WorkerBroker(call_timeout=600) as broker:
        yield broker, broker.worker_proxy(HELLO)


# -- finding 6: the host's memory under a flood from a sandboxed worker ---------------------------------------------

# What the hostile-worker host scripts below share: run as a process of its own, the host's peak RSS is the
# attack's alone. `hostile_broker` runs ``path`` sandboxed (limited to 512 MB); `reset_peak` starts the peak
# (VmHWM) again from the RSS now, so that start-up's peak is not the attack's, and returns that RSS.
HOSTILE_HOST = textwrap.dedent(
    """
    import json, sys
    import psutil
    from wb_magic import Permissions, WorkerBroker, WorkerDied, WorkerSpec

    def peak_rss():  # this process's own high-water mark (ru_maxrss keeps the parent's across fork and exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return psutil.Process().memory_info().rss

    def hostile_broker(path, call_timeout=600):
        spec = WorkerSpec(permissions=Permissions(read=[path]), memory_limit=512 << 20)
        return WorkerBroker(call_timeout=call_timeout, warm_workers=0, worker_constructor=lambda m, s: spec)
    """
)

HOST_SCRIPT = HOSTILE_HOST + textwrap.dedent(
    """
    FLOOD = sys.argv[1]
    outcome = {}
    with hostile_broker(FLOOD) as broker:
        flood = broker.worker_proxy(FLOOD)
        flood.hello("first")
        outcome["link"] = broker.worker_for(FLOOD).link.kind
        before = reset_peak()
        outcome["zmq_multipart"] = flood.zmq_multipart()
        outcome["lane_within_cap"] = flood.lane_within_cap()
        try:
            flood.lane_announce()
        except WorkerDied as exc:
            outcome["lane_announce"] = str(exc)
        peak = peak_rss()
        outcome["growth"] = peak - before
        outcome["max_message_bytes"] = broker.max_message_bytes
    print(json.dumps(outcome))
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or landlock_abi() < 1, reason="needs a sandbox that confines (Landlock)"
)
def test_a_sandboxed_workers_flood_leaves_the_hosts_memory_within_the_bound():
    """The red team's message (24 frames of 60 MiB) and the lane's variants, from a worker limited to 512 MB; the
    host is a process of its own, so that its peak RSS is this attack's alone."""
    done = subprocess.run(
        [sys.executable, "-c", HOST_SCRIPT, FLOOD], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    print("host RSS growth under the flood:", outcome["growth"] // MiB, "MiB")
    assert outcome["link"] == "lane"
    assert outcome["zmq_multipart"] >= 1  # it did send: nobody on the host was connected to receive it
    assert outcome["lane_within_cap"] == "sent"
    assert "broke the lane's format" in outcome["lane_announce"]
    assert outcome["growth"] <= 2 * outcome["max_message_bytes"] + 64 * MiB


# -- red team findings 02 and 05: a worker that asks for more than it takes -----------------------------------------

BACKPRESSURE = str(WORKERS / "untrusted" / "backpressure.py")

ROUTE_TO_SELF = HOSTILE_HOST + textwrap.dedent(
    """
    HOG = sys.argv[1]
    outcome = {}
    with hostile_broker(HOG) as broker:
        hog = broker.worker_proxy(HOG)
        hog.hello("first")
        before = reset_peak()
        outcome["sent"] = hog.route_to_self(12, 32)
        peak = peak_rss()
        outcome["growth"] = peak - before
        outcome["answers"] = hog.answers(12)
        outcome["after"] = hog.hello("after")
        outcome["max_message_bytes"] = broker.max_message_bytes
    print(json.dumps(outcome))
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or landlock_abi() < 1, reason="needs a sandbox that confines (Landlock)"
)
def test_calls_routed_to_a_worker_that_does_not_read_are_refused_within_the_bound():
    """Finding 02: a sandboxed worker routes 12 calls of 32 MiB to itself and reads nothing meanwhile. The host
    queues at most ``max_message_bytes`` toward a worker and on one worker's behalf; the rest fail at once in the
    caller with a clear error, and the host's RSS stays within 2 x max_message_bytes + 64 MiB (it was 12 x 32)."""
    done = subprocess.run(
        [sys.executable, "-c", ROUTE_TO_SELF, BACKPRESSURE], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    print("host RSS growth under the routed flood:", outcome["growth"] // MiB, "MiB")
    assert outcome["sent"] == "sent" and outcome["after"] == "Hello after"
    refused = [a for a in outcome["answers"] if a != "ok"]
    assert len(refused) >= 10, outcome["answers"]
    for message in refused:
        assert "the broker holds at most" in message and "was refused" in message, message
    assert outcome["growth"] <= 2 * outcome["max_message_bytes"] + 64 * MiB


def test_a_worker_that_floods_requests_and_reads_no_answer_is_not_read_and_starves_nobody():
    """Finding 05: a sandboxed worker writes 200,000 small requests that the broker refuses and never reads the
    answers. The broker stops reading it once UNREAD_ANSWERS bytes of answers wait for it, handles at most
    MAX_FRAMES of its frames a turn meanwhile, and the other workers' calls are answered all along."""
    from wb_magic import broker as broker_module

    spec = WorkerSpec(permissions=Permissions(read=[BACKPRESSURE]))
    with WorkerBroker(call_timeout=600, warm_workers=0, worker_constructor=lambda m, s: spec) as broker:
        chatty, honest = broker.worker_proxy(BACKPRESSURE), broker.worker_proxy(HELLO)
        assert chatty.hello("first") == "Hello first"
        worker = broker.worker_for(BACKPRESSURE)
        outcome: list = []
        flood = threading.Thread(target=lambda: outcome.append(_outcome(chatty.refused_flood, 200_000)), daemon=True)
        flood.start()
        answered = 0
        while not getattr(worker.link, "paused", False) and flood.is_alive():  # each call waits on the pump
            assert honest.hello(str(answered)) == f"Hello {answered}"
            answered += 1
        assert not outcome, f"the broker read all its requests: {outcome} ({answered} calls to another worker)"
        handled = worker.requests_handled
        print(f"not read any more after {handled} requests and {answered} calls to another worker")
        assert 0 < handled < 200_000 // 4  # throttled: its answers' bytes over the bound, a few thousand requests
        assert worker.unread_answers <= broker_module.UNREAD_ANSWERS + lane.MAX_READS * lane.CHUNK
        for i in range(20):  # and it stays so
            assert honest.hello(f"after {i}") == f"Hello after {i}"
        assert worker.requests_handled == handled and flood.is_alive() and not outcome
    flood.join(timeout=60)
    assert outcome and isinstance(outcome[0], WorkerDied)  # closing the broker ended it


@pytest.mark.parametrize("spin", [0.0, lane.SPIN, 0.01])
def test_waiting_sides_poll_for_as_long_as_the_broker_says(spin):
    """``spin`` is a speed setting only: off, the default or long, calls (and calls between workers) give the
    same results."""
    with WorkerBroker(warm_workers=0, spin=spin) as broker:
        assert broker.spin == spin
        caller = broker.worker_proxy(WORKERS / "caller.py")
        assert [caller.greet(str(i)) for i in range(50)] == [f"Hello {i}" for i in range(50)]
        assert caller.ping(6) == "done"


def test_a_worker_reads_its_answers_while_it_writes_a_large_reply():
    """A worker that leaves an answer of more than UNREAD_ANSWERS unread is not read until it takes it; a worker
    that writes a large reply meanwhile must read while it waits for room, or each waits for the other."""
    with WorkerBroker(call_timeout=60, warm_workers=0) as broker:  # each would wait for the other until then
        writer = broker.worker_proxy(WORKERS / "reads_while_writing.py")
        reply = writer.reply_while_answered(8, 48)
        assert len(reply) == 48 * MiB
        assert writer.reply_while_answered(8, 1) == bytes(MiB)  # and it goes on serving


def _outcome(function, *args):
    try:
        return function(*args)
    except Exception as exc:
        return exc


BIG_ANSWERS = HOSTILE_HOST + textwrap.dedent(
    """
    import asyncio, io

    class Watch(io.TextIOBase):  # the hog's output: "sent" once its requests have left
        def __init__(self, loop, sent):
            self.loop, self.sent = loop, sent
        def write(self, text):
            if "sent" in text:
                self.loop.call_soon_threadsafe(self.sent.set)
            return len(text)

    async def unread_answers(broker, outcome):
        \"\"\"The hog asks for four answers of 60 MiB and reads none until its call is cancelled.\"\"\"
        sent = asyncio.Event()
        sys.stdout = Watch(asyncio.get_running_loop(), sent)
        try:
            holding = asyncio.ensure_future(broker.worker_proxy(HOG, asynchronous=True).ask_for_big_answers(4, 60))
            await sent.wait()
            # the big worker answers in order: once it has answered this, the broker has had all four answers
            await broker.worker_proxy(sys.argv[2], asynchronous=True).big(1)
            outcome["growth"] = peak_rss() - before
            holding.cancel()
            try:
                await holding
            except asyncio.CancelledError:
                pass
        finally:
            sys.stdout = sys.__stdout__

    HOG = sys.argv[1]
    outcome = {}
    with hostile_broker(HOG, call_timeout=120) as broker:
        hog = broker.worker_proxy(HOG)
        hog.hello("first")
        big = broker.worker_proxy(sys.argv[2])
        big.big(1)
        before = reset_peak()
        asyncio.run(unread_answers(broker, outcome))
        outcome["answers"] = hog.answers(4)
        try:
            hog.json_bomb(3)
        except WorkerDied as exc:
            outcome["bomb"] = str(exc)
        try:
            big.large_json(30_000)
        except TypeError as exc:  # as any reply that cannot be encoded
            outcome["large_json"] = str(exc)
        outcome["after"] = big.big(1) == bytes(1 << 20)
        outcome["max_message_bytes"] = broker.max_message_bytes
    print(json.dumps(outcome))
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or landlock_abi() < 1, reason="needs a sandbox that confines (Landlock)"
)
@pytest.mark.timeout(600)  # four answers of 60 MiB made, copied and dropped: slow on a loaded machine
def test_answers_a_worker_never_reads_and_json_bombs_stay_within_the_bound():
    """The second red team's findings 01 and 02: a sandboxed worker asks another for four answers of 60 MiB and
    reads none of them (the host holds at most ``max_message_bytes`` of answers for it; the rest are dropped with
    an error), then sends one frame of 3 MiB of JSON empty dicts (some 75 MiB once decoded: refused before it is
    decoded, and the worker ended). A legitimate result over the JSON cap fails its call and nothing else."""
    big = str(WORKERS / "untrusted" / "big_answers.py")
    done = subprocess.run(
        [sys.executable, "-c", BIG_ANSWERS, BACKPRESSURE, big], capture_output=True, text=True, timeout=500, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    print("host RSS growth:", outcome["growth"] // MiB, "MiB")
    taken, *dropped = outcome["answers"]
    assert taken == "ok" and len(dropped) == 3
    assert all("the answer was dropped" in answer for answer in dropped), dropped
    assert "JSON of" in outcome["bomb"] and "over the cap" in outcome["bomb"]
    assert "a sandboxed worker may send" in outcome["large_json"]
    assert outcome["after"] is True
    assert outcome["growth"] <= 2 * outcome["max_message_bytes"] + 64 * MiB


def test_a_worker_whose_port_was_taken_meanwhile_listens_on_another(monkeypatch):
    """The launcher picks free ports and the worker binds them a moment later; a port taken in between (another
    process, or an outgoing connection's source port) must not cost the worker its start."""
    import json
    import socket

    from wb_magic import Permissions, WorkerSpec, launcher

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    pick = launcher.listening_ports
    monkeypatch.setattr(launcher, "listening_ports", lambda ip, n: [taken, *pick(ip, n - 1)])
    sandboxed = WorkerSpec(permissions=Permissions())
    try:
        for spec in (WorkerSpec(), sandboxed):
            with WorkerBroker(worker_constructor=lambda m, s, spec=spec: spec, warm_workers=0, call_timeout=600) as b:
                assert b.worker_proxy(WORKERS / "hello.py").hello("ports") == "Hello ports"
                (info,) = b.workers
                with open(info.connection_file, encoding="utf-8") as f:
                    written = json.load(f)
                assert written["shell_port"] != taken  # where a console finds it
    finally:
        held.close()


def test_a_waiter_stops_polling_when_what_comes_is_not_what_it_waits_for():
    """A worker that writes a small frame every 100 µs, which the host drops, must not keep the host's waiting
    thread polling: after SPIN_MISSES waits that brought something else, the spinner polls no more until one
    brings what it waits for."""
    polls = []

    def poll(timeout):
        polls.append(timeout)
        return [(3, 1)]  # always something: the noise

    spinner = lane.Spinner(1.0)
    for _ in range(lane.SPIN_MISSES):
        assert spinner.spin(poll) == [(3, 1)]
        spinner.miss()
    before = len(polls)
    assert spinner.spin(poll) == []  # the caller sleeps on its own wait instead
    assert len(polls) == before
    spinner.hit()
    assert spinner.spin(poll) == [(3, 1)]


def test_a_frame_written_to_a_closed_lane_still_reports_itself_done():
    """``on_written`` is called once a frame has left, or once the lane has closed: the broker's counts of bytes in
    flight depend on it."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.close()
    writer = lane.LaneWriter(ours.fileno())
    called = []
    with pytest.raises(lane.LaneClosed):
        writer.send(lane.encode(lane.REPLY, 1, {"status": "ok"}), lambda: called.append("small"))
    with pytest.raises(lane.LaneClosed):
        writer.send(lane.encode(lane.REPLY, 2, {"status": "ok"}, [b"x" * 10]), lambda: called.append("buffer"))
    assert called == ["small", "buffer"]
    ours.close()
