"""A sandboxed worker that asks the broker for more than it takes (the red team's findings 02 and 05).

It writes worker-to-worker requests straight on its lane and never reads the answers while it writes: large
calls of its own module (allowed: the same file, as its own segregation id), which the broker would queue toward
it, or a flood of small requests the broker refuses, whose answers it would queue.
"""

import os
import threading

from worker_kernel import kernel, lane

MiB = 1 << 20
FIRST_ID = 10_000


def hello(name):
    return f"Hello {name}"


def noop(*args):
    return None


def _write_all(fd, parts):
    """Write one frame, blocking (a worker whose writes the broker stops reading waits here)."""
    os.set_blocking(fd, True)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.set_blocking(fd, False)


def route_to_self(count=12, mib=32):
    """``count`` calls of ``noop`` in this very worker, each with one buffer of ``mib`` MiB: the broker would
    forward them to this worker, which reads nothing until all are written. Their answers are kept (as answers
    to requests the worker waits for) for `answers`."""
    running = kernel.running
    blob = bytes(mib * MiB)  # one buffer, sent again and again: the worker holds only this
    request = {
        "target": __file__,
        "segregation_id": None,
        "function": "noop",
        "args": [{"$w": "bytes", "b": 0}],
        "kwargs": {},
    }
    for i in range(count):
        running._waiting[FIRST_ID + i] = None  # the kernel keeps the answer for us
        _write_all(running._lane_fd, lane.encode(lane.BROKER, FIRST_ID + i, request, [blob]))
    return "sent"


def answers(count=12):
    """What the broker answered to `route_to_self`'s requests so far: "ok", or the error's message."""
    found = []
    for i in range(count):
        frame = kernel.running._answers.get(FIRST_ID + i)
        if frame is not None:
            content = frame.content
            found.append("ok" if content.get("status") == "ok" else str(content.get("evalue")))
    return found


def refused_flood(count=200_000, batch=1000):
    """``count`` small requests the broker refuses (another tenant's segregation id), written without ever reading
    an answer: returns only if the broker read them all."""
    request = {"target": __file__, "segregation_id": "someone-else", "function": "hello", "args": [], "kwargs": {}}
    fd = kernel.running._lane_fd
    for start in range(0, count, batch):
        chunk = b"".join(b"".join(lane.encode(lane.BROKER, start + i + 1, request)) for i in range(batch))
        _write_all(fd, [chunk])
    return "all read"


def ask_for_big_answers(count=6, mib=60):
    """``count`` requests for ``big(mib)`` of another worker of this tenant, written at once; then say "sent" and
    wait, reading nothing, until interrupted: each answer would wait in the host for this worker to take it (the
    second red team's finding 01)."""
    running = kernel.running
    target = os.path.join(os.path.dirname(__file__), "big_answers.py")
    request = {"target": target, "segregation_id": None, "function": "big", "args": [mib], "kwargs": {}}
    for i in range(count):
        running._waiting[FIRST_ID + i] = None
        _write_all(running._lane_fd, lane.encode(lane.BROKER, FIRST_ID + i, request))
    print("sent", flush=True)
    threading.Event().wait()


def json_bomb(mib=3):
    """One output frame whose JSON is ``mib`` MiB of empty dicts (some 25 times that once decoded)."""
    empty: dict = {}
    bomb = [empty] * (mib * MiB // 3)  # written as "{}," again and again
    _write_all(kernel.running._lane_fd, lane.encode(lane.STREAM, 0, {"name": "stdout", "text": bomb}))
    return "sent"
