"""The broker's link to one worker: how requests reach it and how what it sends comes back, built connected.

Two kinds, one interface (`Link`):

- `LaneLink`: the lane (worker_kernel/lane.py), a socketpair the worker inherited at launch, plus a pipe for
  interrupts and shutdown. The broker reads nothing else from such a worker: its Jupyter sockets stay bound for
  a user's ``jupyter console --existing``, but the broker does not connect to them.
- `JupyterLink`: the five Jupyter channels over ZeroMQ (shell, iopub, stdin, control, heartbeat), for workers
  launched with ``WorkerSpec(lane=False)``, through a kernel spec, or adopted with ``attach``.

A link does I/O only: it parses and checks the format of what arrives and hands calls' replies, their output and
worker-to-worker requests to its `LinkEvents` (the broker), which keeps the policy. `ProcessWatch` is the one
place that looks at a worker's process: a pidfd where there is one, the provisioner's ``poll()`` otherwise.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import socket
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from worker_kernel import lane
from worker_kernel.messages import LANE_KIND, WB_BROKER, BrokerRequest, Reply
from worker_kernel.wire import Message, WireError, has_message, recv_frames, send_frames

from .connection import WorkerConnection, now, pidfd
from .launcher import process_id
from .pump import Pump

if TYPE_CHECKING:
    from jupyter_client.manager import KernelManager

    from .provisioned import ProvisionedKernel

log = logging.getLogger("wb_magic")

MAX_DRAIN = 256  # messages taken from one socket per turn, so that one chatty worker cannot starve the rest
MAX_FRAMES = 64  # frames taken from one lane per turn, for the same reason ...
MAX_REQUESTS = 8  # ... of which worker-to-worker requests (each costs the broker more than a reply)
DISCONNECT_GRACE = 0.5  # how long a dropped connection waits for the worker's exit before it counts as misconduct
HEARTBEAT_INTERVAL = 0.5  # seconds between pings to a worker whose process we cannot watch
HEARTBEAT_TIMEOUT = 3.0  # silence after which such a worker counts as dead
EXIT_SHOWS = 0.1  # how long a closed lane waits for its process's exit to show, to report how it ended


class Worker(Protocol):
    """What a link knows of the worker it serves (`wb_magic.worker.Worker`)."""

    key: Any
    dead: bool
    remote: bool
    pending: dict[Any, Any]
    process: ProcessWatch | None


class LinkEvents(Protocol):
    """What a link hands on (the broker implements it), about the worker it serves. Everything runs on the
    pump's leader."""

    def _reply_arrived(self, worker: Any, call_id: Any, reply: Reply | Message) -> None: ...

    def _output_arrived(self, worker: Any, call_id: Any, content: dict[str, Any]) -> None: ...

    def _request_arrived(self, worker: Any, request: BrokerRequest) -> None: ...

    def _end_worker(self, worker: Any, why: str) -> None: ...

    def _discard(self, worker: Any, why: str) -> None: ...

    def _on_exit(self, worker: Any) -> None: ...


class ProcessWatch:
    """A worker's process, as far as this host can see it: through a pidfd (Linux 5.3+) and the provisioner.

    A local process is watched with its pidfd and ended through its ``Popen``. A kernel on another host
    (``elsewhere``: a `ProvisionedKernel` whose provisioner is not local) has no process here: its link's
    heartbeat tells when it is gone, and it is ended through its provisioner's contract (a signal through the
    remote launcher), in the background, since the pump must never wait on another host.
    """

    def __init__(self, manager: KernelManager | ProvisionedKernel) -> None:
        self.manager = manager
        self.pid: int | None = process_id(manager)
        self.fd: int | None = pidfd(self.pid)
        self.elsewhere = bool(getattr(manager, "remote", False))  # a ProvisionedKernel on another host

    @property
    def _process(self) -> Any:
        return getattr(self.manager.provisioner, "process", None)  # a local provisioner's Popen

    def poll(self) -> int | None:
        """The exit code (negative: the signal) once the process has ended; None while it runs or if unknown."""
        process = self._process
        return process.poll() if process is not None else None

    def ended(self, wait: float = 0.0) -> bool:
        """Whether the process has ended (waiting up to ``wait`` seconds for it to show)."""
        if self.fd is not None:  # poll, not select: a busy host has descriptors past select's 1024
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(wait * 1000))
        return self.poll() is not None

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        elif self.elsewhere:
            self.manager.end_soon()  # type: ignore[union-attr]

    def wait(self, timeout: float) -> None:
        """Wait for the process to end; kill it if it has not within ``timeout``."""
        process = self._process
        if process is None:
            self.manager.shutdown_kernel(now=True)
            return
        try:
            process.wait(max(0.0, timeout))
        except Exception:
            process.kill()
            process.wait()

    def release(self) -> None:
        """Reap the process and free what its launch held (connection file, ports, the pidfd)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        self.poll()
        try:
            self.manager.cleanup_resources()
        except Exception:
            log.debug("cleaning up after a worker failed", exc_info=True)


class Link(abc.ABC):
    """One worker's connection. Built connected; `open` hands it to the pump."""

    kind = ""

    @abc.abstractmethod
    def new_id(self) -> Any:
        """A fresh id for a call on this link."""

    @abc.abstractmethod
    def open(self, pump: Pump, events: LinkEvents, worker: Worker) -> None:
        """Register with ``pump``: what arrives from the worker is handed to ``events``."""

    @abc.abstractmethod
    def request(self, msg_type: str, call_id: Any, content: dict[str, Any], buffers: list[Any]) -> Any:
        """Encode a request now (raises TypeError/ValueError if it cannot be); `send` sends it on the pump."""

    @abc.abstractmethod
    def send(self, encoded: Any, on_written: Callable[[], None] | None = None) -> None:
        """Send (on the pump). ``on_written()`` is called once the message has left the host's queue for the
        worker (at once where the link cannot tell)."""

    @abc.abstractmethod
    def answer(
        self,
        request: BrokerRequest,
        content: dict[str, Any],
        buffers: Any = (),
        account: Callable[[int], bool] | None = None,
    ) -> bool:
        """Answer a worker's broker request (on the pump). Raises TypeError/ValueError if it cannot be encoded.
        ``account(n)`` is asked before an answer of ``n`` bytes is queued (False: the host will not hold it for
        this worker, and nothing is sent: the caller answers with an error instead), and told ``account(-n)``
        once it has left the host's queue (not at all where the link cannot tell). True if it was sent."""

    @property
    def queued(self) -> int:
        """Bytes the host holds for the worker that it has not taken yet."""
        return 0

    def pause(self, paused: bool) -> None:
        """Stop reading what the worker sends (or read on): backpressure for a worker that does not read."""
        return None  # a link that cannot stop reading (ZeroMQ's queues bound what it holds) does nothing

    @abc.abstractmethod
    def interrupt(self, call_id: Any) -> None:
        """Interrupt one call (or, with None, all the worker runs). On the pump."""

    @abc.abstractmethod
    def request_shutdown(self) -> None:
        """Ask the worker to exit (on the pump)."""

    def call_sent(self) -> None:
        """A call has left (the Jupyter link watches a worker without a process by its heartbeat meanwhile)."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the link's sockets and descriptors (idempotent)."""


class LaneLink(Link):
    """The lane: a socketpair and a control pipe, made before launch (`LaneLink.pair`)."""

    kind = "lane"

    def __init__(self, max_message_bytes: int, max_json: int | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control_read, control_write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(control_write, False)
        ours.setblocking(False)
        self._sock = ours
        self.fd = ours.fileno()
        self.child_fds = (theirs.detach(), control_read)  # inherited by the worker (pass_fds), closed here after
        self._control = control_write
        self.reader = lane.LaneReader(self.fd, max_message_bytes, max_json)
        self.writer = lane.LaneWriter(self.fd)
        self._ids = count(1)
        self._pump: Pump | None = None
        self._events: LinkEvents | None = None
        self._worker: Worker | None = None
        self._writing = False
        self.paused = False  # not read until the worker takes what it asked for (see `pause`)
        self._held: deque[lane.Frame] = deque()  # frames read but not handled yet (at most MAX_FRAMES a turn)
        self.closed = False

    def launched(self) -> None:
        """The worker has its ends: close ours of them."""
        for fd in self.child_fds:
            _close(fd)
        self.child_fds = (-1, -1)

    def new_id(self) -> int:
        return next(self._ids)

    def open(self, pump: Pump, events: LinkEvents, worker: Worker) -> None:
        self._pump, self._events, self._worker = pump, events, worker
        pump.register(self.fd, self._on_ready)

    def request(self, msg_type: str, call_id: Any, content: dict[str, Any], buffers: list[Any]) -> list[Any]:
        return lane.encode(LANE_KIND[msg_type], call_id, content, buffers)

    def send(self, encoded: Any, on_written: Callable[[], None] | None = None) -> None:
        if self.closed:
            if on_written is not None:
                on_written()
            return
        self._write(self.writer.send, encoded, on_written)

    def answer(
        self,
        request: BrokerRequest,
        content: dict[str, Any],
        buffers: Any = (),
        account: Callable[[int], bool] | None = None,
    ) -> bool:
        parts = lane.encode(lane.BROKER_REPLY, request.reply_to, content, buffers)
        if account is None:
            self.send(parts)
            return True
        n = lane.size(parts)
        if not account(n):
            return False
        self.send(parts, lambda: _ignore(account(-n)))
        return True

    @property
    def queued(self) -> int:
        return self.writer.queued

    def pause(self, paused: bool) -> None:
        if paused == self.paused or self.closed:
            return
        self.paused = paused
        assert self._pump is not None
        self._pump.want_read(self.fd, not paused)

    def interrupt(self, call_id: Any) -> None:
        self._control_record(lane.INTERRUPT, call_id or 0)

    def request_shutdown(self) -> None:
        self._control_record(lane.SHUTDOWN)

    def _control_record(self, kind: int, call_id: int = 0) -> None:
        if self.closed:
            return
        try:
            os.write(self._control, lane.control_record(kind, call_id))
        except OSError:  # full (a worker that reads none of them) or closed: the process watch decides
            pass

    def _write(self, action: Callable[..., bool], *args: Any) -> None:
        if self.closed:
            return
        try:
            done = action(*args)
        except lane.LaneClosed:
            self._closed_by_worker()
            return
        if done == self._writing:  # flushed what waited, or began to wait: have the pump watch for room
            self._writing = not done
            assert self._pump is not None
            self._pump.want_write(self.fd, self._writing)

    def _on_ready(self) -> None:
        if self._writing:
            self._write(self.writer.flush)
        if self.closed:
            return
        if self.paused:  # called because the lane turned writable, or the worker hung up
            if _hung_up(self.fd):
                self._closed_by_worker()
            return
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        held = self._held
        if not held:
            try:
                held.extend(self.reader.read(MAX_FRAMES))
            except lane.LaneError as exc:
                events._end_worker(worker, f"it broke the lane's format ({exc})")
                return
            except lane.LaneClosed:
                self._closed_by_worker()
                return
        requests = 0
        while held and requests < MAX_REQUESTS and not self.paused:
            if worker.dead:
                return
            frame = held.popleft()
            kind = frame.kind
            if kind == lane.REPLY:
                events._reply_arrived(worker, frame.id, Reply(frame.content, frame.buffers))
            elif kind == lane.STREAM:
                events._output_arrived(worker, frame.id or None, frame.content)
            elif kind == lane.BROKER:
                requests += 1
                events._request_arrived(
                    worker, BrokerRequest(frame.content, frame.buffers, frame.content.get("parent"), frame.id)
                )
            else:
                events._end_worker(worker, f"it sent a lane frame of an unknown kind ({kind})")
                return
        if (held or self.reader.buffered) and not self.closed and not self.paused:
            assert self._pump is not None
            self._pump.mark(self.fd)  # frames read but not handled: the next turn, after the other workers'

    def _closed_by_worker(self) -> None:
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        if worker.process is not None and worker.process.ended(EXIT_SHOWS):
            events._on_exit(worker)  # it crashed or exited: say how
        else:
            events._end_worker(worker, "it closed its lane")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pump is not None:
            self._pump.unregister(self.fd)
        self.writer.discard()
        self._sock.close()
        _close(self._control)
        self.launched()  # if the launch failed, our copies of the worker's ends are still open


class JupyterLink(Link):
    """The Jupyter channels (`WorkerConnection`): requests on shell, output on iopub, broker requests on stdin,
    interrupts and shutdown on control; the heartbeat for a worker whose process cannot be watched."""

    kind = "jupyter"

    def __init__(
        self,
        context: zmq.Context,
        info: dict[str, Any],
        identity: bytes,
        max_message_bytes: int,
        holds_output: bool = False,
    ) -> None:
        """``holds_output``: the worker is our own kernel, which holds its iopub messages until a subscriber shows
        (an XPUB socket drops what it publishes before). A call waits here until its first iopub message has
        arrived: else what a call prints before the subscription reaches the worker (a slow start) would wait
        in the worker until the call has returned, and the output of a call that waits on something stays unseen.
        An attached kernel (any kernel) may publish nothing until asked: its calls leave at once."""
        self.connection = WorkerConnection(context, info, identity, max_message_bytes)
        self.session = self.connection.session
        self._subscribed = not holds_output
        self._unsent: list[list[Any]] = []  # calls waiting for the subscription (see above)
        self._pump: Pump | None = None
        self._events: LinkEvents | None = None
        self._worker: Worker | None = None
        self.dropped = 0  # malformed or unsigned messages dropped
        self.beating = False  # a heartbeat timer runs (for workers whose process we cannot watch)
        self.last_beat = 0.0

    def new_id(self) -> str:
        return self.session.new_id()

    def open(self, pump: Pump, events: LinkEvents, worker: Worker) -> None:
        self._pump, self._events, self._worker = pump, events, worker
        conn = self.connection
        pump.register(conn.shell, self._on_shell)
        pump.register(conn.iopub, self._on_iopub)
        pump.register(conn.stdin, self._on_stdin)
        pump.register(conn.control, lambda: _ignore(self._drain(conn.control)))
        pump.register(conn.heartbeat, self._on_heartbeat)
        pump.register(conn.shell_events, self._on_disconnect)

    def request(self, msg_type: str, call_id: Any, content: dict[str, Any], buffers: list[Any]) -> list[Any]:
        return self.session.message(msg_type, content, buffers=buffers, msg_id=call_id)[1]

    def send(self, encoded: Any, on_written: Callable[[], None] | None = None) -> None:
        if self._subscribed:
            self._send(self.connection.shell, encoded)
        else:
            self._unsent.append(encoded)
        if on_written is not None:
            on_written()

    def answer(
        self,
        request: BrokerRequest,
        content: dict[str, Any],
        buffers: Any = (),
        account: Callable[[int], bool] | None = None,
    ) -> bool:
        _, frames = self.session.message("wb_broker_reply", content, parent=request.reply_to, buffers=buffers)
        self._send(self.connection.stdin, frames)  # ZeroMQ's queue: a worker that lets it fill up is ended
        return True

    def interrupt(self, call_id: Any) -> None:
        content = {"wb_call_id": call_id} if call_id is not None else {}
        self._send(self.connection.control, self.session.message("interrupt_request", content)[1])

    def request_shutdown(self) -> None:
        self._send(self.connection.control, self.session.message("shutdown_request", {"restart": False})[1])

    def call_sent(self) -> None:
        worker = self._worker
        if worker is None or worker.dead or self.beating:
            return
        if worker.process is None or worker.process.fd is None:  # no process of this host to watch
            self.beating = True
            self.last_beat = now()
            self._beat()

    def close(self) -> None:
        self._unsent.clear()
        if self._pump is not None:
            for sock in self.connection.sockets:
                self._pump.unregister(sock)
        self.connection.close()

    # -- on the pump ------------------------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket, frames: list[Any]) -> None:
        """Send (on the pump's leader), and have the pump look at the socket again. A worker that lets its
        queue fill up (it stopped reading) is ended: the pump must never block on one."""
        assert self._pump is not None and self._events is not None and self._worker is not None
        if self._worker.dead:
            return
        try:
            send_frames(sock, frames, block=False)
        except zmq.Again:
            self._events._end_worker(self._worker, "it stopped reading what the broker sends it")
            return
        if has_message(sock):  # the send may have taken the descriptor's wake-up for it
            self._pump.mark(sock)

    def _receive(self, sock: zmq.Socket) -> Iterator[Message]:
        assert self._pump is not None and self._worker is not None
        for _ in range(MAX_DRAIN):
            frames = recv_frames(sock, block=False)
            if frames is None:
                return
            try:
                yield self.session.parse(frames)
            except WireError as exc:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:  # a hostile worker must not flood the log
                    log.warning("dropped a message from worker %r (%d so far): %s", self._worker.key, self.dropped, exc)
        self._pump.mark(sock)  # more may be waiting: come back after the others had a turn

    def _on_shell(self) -> None:
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        for msg in self._receive(self.connection.shell):
            if worker.dead:
                return
            events._reply_arrived(worker, msg.parent_id, msg)

    def _on_iopub(self) -> None:
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        for msg in self._receive(self.connection.iopub):
            if not self._subscribed:  # the worker knows of our subscription now: its held messages have come
                self._subscribed = True
                unsent, self._unsent = self._unsent, []
                for encoded in unsent:
                    self._send(self.connection.shell, encoded)
            if msg.msg_type == "stream":  # text only: a worker never gets to put HTML or JavaScript before the user
                events._output_arrived(worker, msg.parent_id, msg.content)

    def _on_stdin(self) -> None:
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        for msg in self._receive(self.connection.stdin):
            if msg.msg_type == WB_BROKER:
                events._request_arrived(worker, BrokerRequest(msg.content, msg.buffers, msg.parent_id, msg.raw_header))
            else:
                log.debug("dropped a %s on stdin from worker %r", msg.msg_type, worker.key)

    def _beat(self) -> None:
        """Ping a worker we cannot watch as a process, while it has calls; no answer for a while means dead."""
        events, worker, pump = self._events, self._worker, self._pump
        assert events is not None and worker is not None and pump is not None
        if worker.dead or not (worker.pending or worker.remote):  # a remote worker exits when our beats stop
            self.beating = False
            return
        if now() - self.last_beat > HEARTBEAT_TIMEOUT:
            events._discard(worker, f"it stopped answering heartbeats for {HEARTBEAT_TIMEOUT} s")
            return
        self._send(self.connection.heartbeat, [b"", b"ping"])
        pump.at(now() + HEARTBEAT_INTERVAL, self._beat)

    def _on_heartbeat(self) -> None:
        if self._drain(self.connection.heartbeat):
            self.last_beat = now()

    def _on_disconnect(self) -> None:
        """ZeroMQ dropped the shell connection. A worker whose process lives on sent a frame over the size cap
        (a process that ended closes its connection too: that is for the process watch, with its exit status)."""
        worker, pump = self._worker, self._pump
        assert worker is not None and pump is not None
        if not self._drain(self.connection.shell_events):
            return  # handlers may be called with nothing to read (see Pump.mark)
        if worker.dead or worker.process is None:
            return  # an attached worker may reconnect after a network blip: its heartbeat decides
        # a dying process closes its sockets a moment before it can be waited for: give its exit a moment to show
        pump.at(now() + DISCONNECT_GRACE, self._disconnected)

    def _disconnected(self) -> None:
        events, worker = self._events, self._worker
        assert events is not None and worker is not None
        if worker.dead:
            return
        if worker.process is not None and worker.process.poll() is not None:
            events._on_exit(worker)
            return
        limit = self.connection.max_message_bytes
        if worker.process is not None and worker.process.elsewhere:  # no process of this host to look at
            why = f"its connection was dropped: it ended on its host, or sent a message larger than {limit} bytes"
        else:
            why = f"it sent a message larger than {limit} bytes, and its connection was dropped"
        events._end_worker(worker, why)

    def _drain(self, sock: zmq.Socket) -> int:
        """Read and drop what waits on ``sock`` (MAX_DRAIN at most; the pump comes back for the rest)."""
        for count_ in range(MAX_DRAIN):
            if recv_frames(sock, block=False) is None:
                return count_
        assert self._pump is not None
        self._pump.mark(sock)
        return MAX_DRAIN


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _hung_up(fd: int) -> bool:
    """Whether the peer of a socket has closed it (without reading what it holds)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _ignore(_: object) -> None:
    return None
