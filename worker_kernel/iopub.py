"""The worker's iopub channel: status, stream and execute messages, safe to use from any thread.

The socket is XPUB so that the worker knows when a subscriber has joined: ZeroMQ drops what a PUB socket sends
before a subscription arrives, so messages wait in a short queue until then (a call can reach the worker, and
print, before the broker's subscription has). Every ``print`` in a worker becomes a ``stream`` message whose
parent is the request being served, so that the broker can show it under the call that made it.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from .lazylog import LazyLogger
from .wire import Session, has_message, send_frames

log = LazyLogger("worker_kernel")

QUEUE_LIMIT = 1000  # messages held before the first subscriber; the oldest are dropped past this


class Request:
    """The request being served, as the output streams see it: its header (raw JSON) and how many outputs it
    made. ``lane_id`` is the call's id when it came on the lane (its output goes back on the lane)."""

    __slots__ = ("header", "idents", "outputs", "trace", "lane_id")

    def __init__(self, header: bytes | None, idents: list[bytes], lane_id: int | None = None) -> None:
        self.header = header
        self.idents = idents
        self.outputs = 0
        self.trace: Any = None  # a `tracing.Recorder` when the request carries a trace context
        self.lane_id = lane_id


current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar("wb_request", default=None)


class IOPub:
    def __init__(self, socket: zmq.Socket, session: Session) -> None:
        self.socket = socket
        self.session = session
        self._lock = threading.Lock()
        self._held: deque[list[Any]] = deque(maxlen=QUEUE_LIMIT)
        self.subscribed = False

    def publish(self, msg_type: str, content: dict[str, Any], parent: bytes | dict[str, Any] | None = None) -> None:
        _, frames = self.session.message(msg_type, content, parent=parent)
        with self._lock:
            if not self.subscribed:
                # the socket's fd is edge-triggered: a send from any thread can swallow the wake-up for a
                # subscription that has arrived, so look for one here too rather than trust the event loop
                self._take_subscriptions_locked()
            if self.subscribed:
                send_frames(self.socket, frames)
            else:
                self._held.append(frames)

    def status(self, state: str, parent: bytes | dict[str, Any] | None = None) -> None:
        self.publish("status", {"execution_state": state}, parent)

    def take_subscriptions(self) -> None:
        """Read subscription notices from the XPUB socket; the first releases the held messages."""
        with self._lock:
            self._take_subscriptions_locked()

    def _take_subscriptions_locked(self) -> None:
        while has_message(self.socket):
            notice = self.socket.recv()
            if notice[:1] == b"\x01" and not self.subscribed:
                self.subscribed = True
                while self._held:
                    send_frames(self.socket, self._held.popleft())

    def close(self) -> None:
        with self._lock:
            self.socket.close(linger=200)


class OutputStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a worker: lines become iopub ``stream`` messages as they are written.

    With a lane (``to_lane``), the output of a lane call, and output that belongs to no request, goes on the lane
    instead, ahead of the call's reply; a console's requests keep their output on iopub.

    What is written while the same thread is inside this stream (a warning logged because sending failed: the
    lane is gone) goes to the process's own stderr instead: waiting for the stream's lock there would wait for
    ever."""

    def __init__(self, name: str, iopub: IOPub, to_lane: Callable[[int, str, str], None] | None = None) -> None:
        super().__init__()
        self.name = name
        self._iopub = iopub
        self._to_lane = to_lane
        self._lock = threading.Lock()
        self._inside: int | None = None  # the thread that holds the lock, while it sends
        self._parts: list[str] = []
        self._owner: Request | None = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        request = current_request.get()
        if self._inside == threading.get_ident():
            return _to_process_stderr(text)
        with self._lock:
            if request is not self._owner and self._parts:
                self._flush_locked()
            self._owner = request
            self._parts.append(text)
            if "\n" in text:
                self._flush_locked()
        return len(text)

    def flush(self) -> None:
        if not self._parts or self._inside == threading.get_ident():  # nothing written (the common case), or
            return  # a flush from inside a send: what it would send is being sent
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._parts:
            return
        self._inside = threading.get_ident()
        try:
            self._send_locked()
        finally:
            self._inside = None

    def _send_locked(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        owner = self._owner
        if owner is not None:
            owner.outputs += 1
        if self._to_lane is not None and (owner is None or owner.lane_id is not None):
            self._to_lane(owner.lane_id or 0 if owner is not None else 0, self.name, text)
            return
        self._iopub.publish("stream", {"name": self.name, "text": text}, owner.header if owner else None)


def _to_process_stderr(text: str) -> int:
    stream = sys.__stderr__
    try:
        if stream is not None:
            stream.write(text)
            stream.flush()
    except (OSError, ValueError):  # closed: there is nowhere left to say it
        pass
    return len(text)


def flush_output() -> None:
    """Send what the worker's ``print`` calls have left in its output streams (when they are still ours: code
    may have replaced ``sys.stdout``) as stream messages: before a reply, so that output never trails it."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, OutputStream):
            stream.flush()
