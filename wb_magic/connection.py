"""The broker's side of one worker: its sockets, its process, and the calls waiting on it.

Every connection is opened by the broker (the kernel binds, the broker connects), so a worker on another host
needs no route back. Shell and stdin share one routing identity, as jupyter_client arranges it, so that the
worker can address its stdin requests to us. A connection file with CurveZMQ keys makes every socket a Curve
client of the kernel's public key (`worker_kernel.transport`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from worker_kernel.transport import connect_curve, curve_keys
from worker_kernel.wire import Session

# ZeroMQ retries a refused connection after RECONNECT_IVL (100 ms by default). A worker binds its sockets some
# 100 ms after launch, so we retry much sooner: this is what makes the first call fast without wait_for_ready.
# The retries back off (doubling) only up to RECONNECT_MAX_MS: with a 100 ms cap, a worker that bound at 110 ms
# was found at 126 ms; with 10 ms, by 120 at worst. A worker that is gone has its sockets closed by the broker, so
# the fast retries last only while one starts (or while an attached kernel is out of reach).
RECONNECT_MS = 2
RECONNECT_MAX_MS = 10
MAX_MESSAGE_BYTES = 64 << 20  # default cap on one frame from a worker: ZeroMQ drops the connection past it
RECEIVE_QUEUE = 100  # messages queued per socket before ZeroMQ stops reading from the worker
# a shutdown request is sent just before the sockets close: with no linger, ZeroMQ may drop it unsent (its I/O
# thread writes it a moment later), and a worker with no process here to end (attached, remote) would live on
CONTROL_LINGER_MS = 1000


class WorkerConnection:
    """Sockets to one kernel. Owned by the broker's pump: only the thread leading the pump touches them."""

    def __init__(
        self, context: zmq.Context, info: dict[str, Any], identity: bytes, max_message_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.info = info
        key = info.get("key", b"")
        self.session = Session(key if isinstance(key, bytes) else str(key).encode())
        keys = curve_keys(info)
        self.server_key = keys[0] if keys is not None else None
        self.shell = self._connect(context, zmq.DEALER, "shell", identity)
        self.stdin = self._connect(context, zmq.DEALER, "stdin", identity)
        self.control = self._connect(context, zmq.DEALER, "control", identity)
        self.iopub = self._connect(context, zmq.SUB, "iopub", None)
        self.heartbeat = self._connect(context, zmq.DEALER, "hb", None)  # pings [b"", n] to the kernel's REP
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        # ZeroMQ queues this until the connection is up; its arrival tells the worker that it can route
        # stdin requests to us (a ROUTER drops messages for peers it has not yet seen)
        self.stdin.send_multipart(self.session.message("wb_stdin_hello", {})[1])
        # a worker that sends a frame over the cap is disconnected by ZeroMQ; this tells the broker it happened
        self.shell_events = self.shell.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _connect(self, context: zmq.Context, kind: int, channel: str, identity: bytes | None) -> zmq.Socket:
        sock = context.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        if self.server_key is not None:
            connect_curve(sock, self.server_key)
        transport = self.info.get("transport", "tcp")
        ip = self.info.get("ip", "127.0.0.1")
        port = self.info[f"{channel}_port"]
        sock.connect(f"tcp://{ip}:{port}" if transport == "tcp" else f"{transport}://{ip}-{port}")
        return sock

    @property
    def sockets(self) -> tuple[zmq.Socket, ...]:
        return (self.shell, self.stdin, self.control, self.iopub, self.heartbeat, self.shell_events)

    def close(self) -> None:
        self.shell.disable_monitor()
        for sock in self.sockets:
            sock.close(linger=CONTROL_LINGER_MS if sock is self.control else 0)


def pidfd(pid: int | None) -> int | None:
    """A file descriptor that turns readable when process ``pid`` ends (Linux 5.3+), or None."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def now() -> float:
    return time.monotonic()
