"""The worker kernel's socket server: a lightweight Jupyter kernel (messaging protocol 5.3).

Five sockets, as the spec has them: shell (ROUTER) and stdin (ROUTER) are served on the main thread (by a plain
``zmq_poll`` loop; by an asyncio loop from the first ``async def`` call on, since importing asyncio costs more
than the rest of a worker's start-up),
loop, control (ROUTER) on a thread of its own so that ``interrupt_request`` and ``shutdown_request`` are heard
while a call runs, heartbeat (REP) echoed by ZeroMQ on a thread, iopub (XPUB) shared through `IOPub`.

Messages are dispatched through tables ``msg_type -> handler``; the call runner (`runner.py`) does the work of
wb-magic's own messages. A synchronous function that calls another worker waits for the broker's reply in a
nested loop that keeps serving shell requests, so a cycle A -> B -> A completes; ``async def`` functions run as
tasks on the loop and interleave.
"""

from __future__ import annotations

import atexit
import errno
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any

import zmq

from . import __version__, debugging, lane
from .codec import Unencodable, decode_args, decode_value, encode_value, exception_from_wire, exception_to_wire
from .connection_file import write_connection_file
from .errors import CallTimeout
from .iopub import IOPub, OutputStream, Request, current_request, flush_output
from .lazylog import LazyLogger
from .loader import expected_files, shipped
from .runner import CallContext, CallRunner, current
from .transport import check, serve_curve
from .wire import (
    WB_BROKER,
    Message,
    Session,
    WireError,
    recv_frames,
    reply_type,
    send_frames,
    use_orjson,
)

log = LazyLogger("worker_kernel")

Handler = Callable[[Any], None]  # takes a Message, or a LaneRequest shaped like one

# What a worker puts off to answer its first call sooner (importing orjson), it does once it has been quiet for
# IDLE_MS, or at the latest DEFERRED_S after it started serving, busy or not.
IDLE_MS = 20
MAX_EARLY_INTERRUPTS = 1024  # interrupted call ids remembered for calls that have not started yet
DEFERRED_S = 0.5
LOCK_TURN_S = 0.05  # how often the main thread, waiting for another thread's frame to leave, reads the lane

running: WorkerKernel | None = None  # the kernel of this process, once started (see `worker.broker_proxy`)


class WorkerKernel:
    """One worker process. ``connection`` is the connection-file dict; ``hooks`` see `CallRunner`.

    With CurveZMQ keys in ``connection`` every socket is encrypted (`transport`); without them a worker refuses
    to listen on a network address unless ``allow_plaintext``. ``broker_timeout`` (seconds): exit when no
    heartbeat came from the broker for that long (a worker on another host, where its broker cannot be watched
    as a process).
    """

    def __init__(
        self,
        connection: dict[str, Any],
        *,
        hooks: Any = None,
        allow_plaintext: bool = False,
        broker_timeout: float | None = None,
        connection_file: str | None = None,
    ) -> None:
        self.connection_file = connection_file
        scheme = connection.get("signature_scheme", "hmac-sha256")
        if scheme != "hmac-sha256":
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        self.curve = check(connection, allow_plaintext)
        self.broker_timeout = broker_timeout
        self.connection = connection
        self.session = Session(str(connection.get("key", "")).encode(), username="wb-worker")
        self.runner = CallRunner(hooks)
        self.context = zmq.Context()
        self.execution_count = 0
        self._sync_depth = 0  # > 0 while a synchronous call or execute runs on the main thread
        self._sync_calls: list[str] = []  # ids of the synchronous calls running, innermost last
        self._interrupt_target: str | int | None = None  # the call an interrupt_request (with wb_call_id) is for
        # ids of calls an interrupt named (oldest first, at most MAX_EARLY_INTERRUPTS): one that arrives before its
        # call has started (a timeout of a call still queued behind another) must stop it when it starts
        self._interrupted: dict[str | int, None] = {}
        self.loop: Any = None  # the asyncio event loop, once an ``async def`` function is called
        self._tasks: dict[str, Any] = {}  # call id -> the asyncio task running it
        self._held: list[Message] | None = None  # requests waiting for a coroutine initial_call to finish
        self._stopping = False
        self._waiting: dict[Any, Any] = {}  # broker request id -> asyncio future, or None for a sync wait
        self._answers: dict[Any, Any] = {}  # broker request id -> its answer (a Message, or a lane Frame)
        self._last_idents: list[bytes] = []
        self._stdin_peers: set[bytes] = set()
        self._fast_json = False  # the wire switches to orjson once the worker is first idle (see IDLE_MS)
        self._main_thread = threading.get_ident()
        # the lane (see lane.py), when the broker launched this worker with one: calls, output and broker
        # requests travel on it; the control pipe brings interrupts and shutdown to the control thread
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the control thread's way in
        self._lane_fd: int | None = None
        self._control_fd: int | None = None
        self._lane_reader: lane.LaneReader | None = None
        self._lane_poll: Any = None  # select.poll of the lane alone (see broker_request)
        # polling before a wait sleeps (lane.SPIN): between calls, and for an answer; set up in start()
        self._idle_spinner = self._answer_spinner = lane.Spinner(0.0)
        self._lane_writer: lane.LaneWriter | None = None
        self._max_json: int | None = None  # what the broker takes of one frame's JSON (a sandboxed worker's)
        self._lane_lock = threading.Lock()
        self._lane_queue: deque[lane.Frame] = deque()  # frames read but not yet handled, in order
        self._lane_requests = count(1)
        self._lane_writing = False  # lane I/O on the main thread is under way: an interrupt waits for its end
        self._lane_reading = False  # the main thread is inside LaneReader.read (see _read_ahead)
        self._zmq_quiet = False  # the ZeroMQ sockets are empty and untouched since zmq_poll said so (see _serve)
        self._deferred_interrupt: tuple[str | int | None] | None = None
        self.shell_handlers: dict[str, Handler] = {
            "kernel_info_request": self._kernel_info,
            "execute_request": self._execute,
            "is_complete_request": self._is_complete,
            "complete_request": self._complete,
            "inspect_request": self._inspect,
            "history_request": lambda m: self._reply(self.shell, m, {"status": "ok", "history": []}),
            "comm_info_request": lambda m: self._reply(self.shell, m, {"status": "ok", "comms": {}}),
            "shutdown_request": self._shutdown,
            "wb_call_request": self._wb_call,
            "wb_import_request": self._wb_import,
            "wb_inspect_request": self._wb_inspect,
            "wb_debug_request": self._wb_debug,
        }
        self.control_handlers: dict[str, Handler] = {
            "kernel_info_request": self._kernel_info,
            "shutdown_request": self._shutdown,
            "interrupt_request": self._interrupt,
        }

    # -- start-up -------------------------------------------------------------------------------------------

    def _bind(self, socket_type: int, channel: str) -> zmq.Socket:
        sock = self.context.socket(socket_type)
        sock.linger = 200
        if self.curve is not None:
            serve_curve(sock, self.curve)
        address = f"{self.connection.get('transport', 'tcp')}://{self.connection.get('ip', '127.0.0.1')}"
        port = self.connection.get(f"{channel}_port")
        tcp = self.connection.get("transport", "tcp") == "tcp"
        try:
            sock.bind(f"{address}:{port}" if tcp else f"{address}-{port}")
        except zmq.ZMQError as exc:
            # the port was free when the launcher chose it and taken since (another process bound it, or an
            # outgoing connection holds it as its source port). A worker with a lane does not need the broker to
            # know its Jupyter ports: it takes another and writes it in its connection file, for a console
            if exc.errno != errno.EADDRINUSE or not tcp or self._lane_fd is None:
                raise
            self.connection[f"{channel}_port"] = sock.bind_to_random_port(address)
            self._ports_moved = True
        return sock

    def start(self) -> None:
        global running
        running = self
        fds = lane.lane_fds(os.environ.pop(lane.ENV, None))
        if fds is not None:
            self._open_lane(*fds)
        max_json = os.environ.pop(lane.MAX_JSON_ENV, "")
        spin_us = os.environ.pop(lane.SPIN_ENV, "")
        spin = int(spin_us) / 1e6 if spin_us.isdigit() and self._lane_fd is not None else 0.0
        self._idle_spinner, self._answer_spinner = lane.Spinner(spin), lane.Spinner(spin)
        self._max_json = int(max_json) if max_json.isdigit() else None
        self._ports_moved = False
        self.shell = self._bind(zmq.ROUTER, "shell")
        self.stdin = self._bind(zmq.ROUTER, "stdin")
        self.stdin.router_mandatory = True
        self.control = self._bind(zmq.ROUTER, "control")
        iopub = self._bind(zmq.XPUB, "iopub")
        self.iopub = IOPub(iopub, self.session)
        # what a sync function waiting on the broker polls, and what it does with each ready socket
        self._nested = zmq.Poller()
        self._nested_handlers: dict[Any, Callable[[], None]] = {
            self.shell: self._next_shell,
            self.stdin: self._drain_stdin,
            self.iopub.socket: self.iopub.take_subscriptions,
        }
        if self._lane_fd is not None:
            self._nested_handlers[self._lane_fd] = self._drain_lane
        for sock in self._nested_handlers:
            self._nested.register(sock, zmq.POLLIN)
        heartbeat = self._bind(zmq.REP, "hb")
        if self._ports_moved and self.connection_file:
            write_connection_file(self.connection_file, self.connection)
        threading.Thread(target=_echo, args=(heartbeat, self.broker_timeout), name="wb-heartbeat", daemon=True).start()
        threading.Thread(target=self._serve_control, name="wb-control", daemon=True).start()
        to_lane = self._lane_output if self._lane_fd is not None else None
        sys.stdout = OutputStream("stdout", self.iopub, to_lane)
        sys.stderr = OutputStream("stderr", self.iopub, to_lane)
        signal.signal(signal.SIGINT, self._on_sigint)
        self.iopub.status("starting")

    def run(self) -> None:
        """Serve until shut down, or until the process that launched this worker ends."""
        _watch_parent()
        self.iopub.status("idle")
        try:
            self._serve()
            if self.loop is not None and not self._stopping:
                self._serve_asyncio()
        finally:
            self._close()

    def _serve(self) -> None:
        """The lean loop: poll the sockets and dispatch, until stopped or until a coroutine needs asyncio.

        zmq_poll asks every ZeroMQ socket for its events before it waits (a poll and a getpid system call each),
        which a lane call, touching none of them, need not pay for. So while the ZeroMQ sockets are known to be
        empty (`_zmq_quiet`: the last zmq_poll found nothing on them, and nothing has touched them since), the
        loop waits with a plain poll on the lane, the wake-up descriptor and the sockets' descriptors, which turn
        readable when something reaches a socket; then it goes back to zmq_poll until they are empty again."""
        poller = zmq.Poller()
        handlers: dict[Any, Callable[[], None]] = {
            self.shell: self._next_shell,  # zmq_poll is level-triggered: one message a turn, no draining
            self.stdin: self._drain_stdin,
            self.iopub.socket: self.iopub.take_subscriptions,
            self._wake_fd: self._drain_wake,
        }
        if self._lane_fd is not None:
            handlers[self._lane_fd] = self._drain_lane
        for source in handlers:
            poller.register(source, zmq.POLLIN)
        sockets = {sock for sock in handlers if isinstance(sock, zmq.Socket)}
        plain = select.poll()
        plain_handlers = {fd: handler for fd, handler in handlers.items() if isinstance(fd, int)}
        for fd in [*plain_handlers, *(sock.FD for sock in sockets)]:
            plain.register(fd, select.POLLIN)
        self._drain_all()
        deferred_until = time.monotonic() + DEFERRED_S
        while not self._stopping and self.loop is None:
            timeout = None if self._fast_json else IDLE_MS
            if self._zmq_quiet:
                events = self._idle_spinner.spin(plain.poll)
                if not events:
                    events = plain.poll(timeout)
                    self._idle_spinner.woke()
                ready = [(fd, 0) for fd, _ in events if fd in plain_handlers]
                if len(ready) < len(events):  # a ZeroMQ socket has news: zmq_poll tells which, from the next turn
                    self._zmq_quiet = False
            else:
                ready = poller.poll(timeout)
                self._zmq_quiet = not any(source in sockets for source, _ in ready)
            if not self._fast_json and (not ready or time.monotonic() > deferred_until):
                self._fast_json = True
                use_orjson()  # idle (the first call, if one was waiting, has had its answer), or busy for long
            for source, _ in ready:
                handler = handlers.get(source)
                if handler is not None:  # (the lane's, once it has closed: the loop is about to stop)
                    handler()

    def _serve_asyncio(self) -> None:
        loop = self.loop
        loop.add_reader(self.shell.FD, self._drain_shell)
        loop.add_reader(self.stdin.FD, self._drain_stdin)
        loop.add_reader(self.iopub.socket.FD, self.iopub.take_subscriptions)
        loop.add_reader(self._wake_fd, self._drain_wake)
        if self._lane_fd is not None:
            loop.add_reader(self._lane_fd, self._drain_lane)
        loop.call_soon(self._drain_all)
        if not self._fast_json:
            self._fast_json = True
            loop.call_later(IDLE_MS / 1000, use_orjson)
        loop.run_forever()

    def _event_loop(self) -> Any:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        if self._stopping:
            if self.loop is not None:
                self.loop.stop()
        elif self._lane_queue:  # frames read while a frame was written (`_lane_send`)
            self._serve_lane_queue()

    def _stop(self) -> None:
        """Stop serving; safe from any thread."""
        self._stopping = True
        os.eventfd_write(self._wake_fd, 1)

    # -- the shell and stdin channels ------------------------------------------------------------------------

    def _drain_all(self) -> None:
        self.iopub.take_subscriptions()
        self._drain_stdin()
        self._drain_shell()
        if self._lane_fd is not None:
            self._drain_lane()

    def _receive(self, sock: zmq.Socket, polled: bool = False) -> Message | None:
        """One message from ``sock`` if one is waiting; malformed or unsigned messages are dropped."""
        while (frames := recv_frames(sock, block=False, polled=polled)) is not None:
            try:
                return self.session.parse(frames)
            except WireError as exc:
                log.warning("dropped a message: %s", exc)
        return None

    def _drain_shell(self) -> None:
        """Take every waiting shell message (asyncio mode: the loop's reader, and after a nested wait)."""
        while (msg := self._receive(self.shell)) is not None:
            self._handle_shell(msg)
        if self.loop is not None and self.loop.is_running():
            import asyncio

            # we run in a callback of the loop: make sure it still counts as running, even if an interrupt
            # landed while a sync function ran outside it (see _outside_loop for why the private call)
            asyncio.events._set_running_loop(self.loop)

    def _next_shell(self) -> None:
        msg = self._receive(self.shell, polled=True)
        if msg is not None:
            self._handle_shell(msg)

    def _handle_shell(self, msg: Message | LaneRequest) -> None:
        if msg.idents:
            self._last_idents = msg.idents
        handler = self.shell_handlers.get(msg.msg_type, self._unknown)
        try:
            handler(msg)
        except (Exception, KeyboardInterrupt):  # a handler bug, or an interrupt that came late: serve on
            log.exception("handling %s failed", msg.msg_type)

    def _drain_stdin(self) -> None:
        while (msg := self._receive(self.stdin)) is not None:
            if msg.msg_type == "wb_stdin_hello":
                self._stdin_peers.add(msg.idents[0] if msg.idents else b"")
                continue
            key = msg.parent_id
            if key not in self._waiting:
                log.warning("dropped a %s for no pending request", msg.msg_type)
                continue
            waiter = self._waiting.pop(key)
            if waiter is None:
                self._answers[key] = msg
            elif not waiter.done():
                waiter.set_result(msg)

    def _reply(
        self,
        sock: zmq.Socket,
        request: Message,
        content: dict[str, Any],
        buffers: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if type(request) is LaneRequest:
            self._lane_reply(request, content, buffers or ())
            return
        msg_type = reply_type(request.msg_type)
        try:
            _, frames = self.session.message(
                msg_type,
                content,
                parent=request.raw_header,
                metadata=metadata,
                buffers=buffers or (),
                idents=request.idents,
            )
        except (TypeError, ValueError) as exc:
            # a str that JSON cannot carry (a lone surrogate): say so rather than leave the caller waiting
            error = {"status": "error", **exception_to_wire(TypeError(f"the reply could not be encoded: {exc}"), [])}
            if type(content.get("outputs")) is int:
                error["outputs"] = content["outputs"]
            _, frames = self.session.message(msg_type, error, parent=request.raw_header, idents=request.idents)
        send_frames(sock, frames)

    def _unknown(self, msg: Message) -> None:
        self._reply(
            self._channel(),
            msg,
            {
                "status": "error",
                "ename": "ValueError",
                "evalue": f"unknown message type {msg.msg_type!r}",
                "traceback": [],
            },
        )

    # -- the lane ---------------------------------------------------------------------------------------------

    def _open_lane(self, lane_fd: int, control_fd: int) -> None:
        os.set_blocking(lane_fd, False)
        self._lane_fd, self._control_fd = lane_fd, control_fd
        self._lane_reader = lane.LaneReader(lane_fd, lane.FROM_BROKER)
        self._lane_poll = select.poll()  # the lane alone, for the polling before a nested wait sleeps
        self._lane_poll.register(lane_fd, select.POLLIN)
        self._lane_writer = lane.LaneWriter(lane_fd)

    def _drain_lane(self) -> None:
        """Read what the lane holds, and serve it in order."""
        assert self._lane_reader is not None
        self._lane_writing = True  # an interrupt in the middle of a read would lose what it read: it waits
        self._lane_reading = True
        try:
            self._lane_queue.extend(self._lane_reader.read())
        except (lane.LaneClosed, lane.LaneError) as exc:  # the broker has gone (or is not the broker)
            log.warning("the lane ended: %s; exiting", exc)
            self._unregister_lane()
            self._stop()
            return
        finally:
            self._lane_reading = False
            self._lane_writing = False
            self._deliver_deferred_interrupt()
        self._serve_lane_queue()

    def _unregister_lane(self) -> None:
        fd, self._lane_fd = self._lane_fd, None
        if fd is None:
            return
        self._lane_poll = None
        self._nested.unregister(fd)
        self._nested_handlers.pop(fd, None)
        if self.loop is not None:
            self.loop.remove_reader(fd)

    def _serve_lane_queue(self) -> None:
        queue = self._lane_queue
        while queue:
            frame = queue.popleft()
            msg_type = _LANE_REQUESTS.get(frame.kind)
            if msg_type is not None:
                self._handle_shell(LaneRequest(msg_type, frame))
            elif frame.kind == lane.BROKER_REPLY and frame.id in self._waiting:
                waiter = self._waiting.pop(frame.id)
                if waiter is None:
                    self._answers[frame.id] = frame
                elif not waiter.done():
                    waiter.set_result(frame)
            else:
                log.warning("dropped a lane frame of kind %d", frame.kind)

    def _lane_send(self, parts: list[Any]) -> None:
        """Write one frame, waiting while the lane is full. An interrupt that arrives meanwhile is held until
        the frame is whole: a frame cut short would end the lane.

        The main thread reads while it waits (`_read_ahead`): the broker stops reading a worker that leaves
        more than a little of its answers unread, so a worker that only wrote would wait for the broker while the
        broker waits for it."""
        writer = self._lane_writer
        assert writer is not None
        on_main = threading.get_ident() == self._main_thread
        closed = False
        if on_main:
            self._lane_writing = True
            while not self._lane_lock.acquire(timeout=LOCK_TURN_S):  # another thread's frame waits for room
                closed = closed or not self._read_ahead()
        else:
            self._lane_lock.acquire()
        try:
            done = writer.send(parts)
            while not done and not closed:
                events = zmq.POLLOUT | zmq.POLLIN if on_main else zmq.POLLOUT
                for _, ready in zmq.zmq_poll([(writer.fd, events)], -1):
                    if ready & zmq.POLLIN and not self._read_ahead():
                        closed = True
                done = writer.flush()
        except lane.LaneClosed:
            closed = True
        finally:
            self._lane_lock.release()
            if on_main:
                self._lane_writing = False
        if closed:  # said outside the lock: the warning goes out through the worker's stderr, and so to this lane
            log.warning("the lane was closed; exiting")
            self._stop()
        if on_main:
            if self._lane_queue:  # read ahead: served by the loop, once what runs now has returned
                os.eventfd_write(self._wake_fd, 1)
            self._deliver_deferred_interrupt()

    def _read_ahead(self) -> bool:
        """Read what the broker has written into the lane's queue, without serving it (main thread, while
        waiting to write). False if the lane has ended."""
        assert self._lane_reader is not None
        if self._lane_reading:  # a write from inside a read (a finalizer that prints, say): read no further
            return True
        try:
            self._lane_queue.extend(self._lane_reader.read())
        except (lane.LaneClosed, lane.LaneError):
            return False
        return True

    def _deliver_deferred_interrupt(self) -> None:
        """Raise the interrupt that arrived during lane I/O on the main thread, now that the I/O is whole."""
        deferred, self._deferred_interrupt = self._deferred_interrupt, None
        if deferred is not None:
            self._interrupt_target = deferred[0]
            self._on_sigint(signal.SIGINT, None)

    def _lane_reply(self, request: LaneRequest, content: dict[str, Any], buffers: Any) -> None:
        try:
            parts = lane.encode(lane.REPLY, request.msg_id, content, buffers, self._max_json)
        except (TypeError, ValueError) as exc:  # a lone surrogate, say: say so rather than leave the caller waiting
            error = {"status": "error", **exception_to_wire(TypeError(f"the reply could not be encoded: {exc}"), [])}
            if type(content.get("outputs")) is int:
                error["outputs"] = content["outputs"]
            parts = lane.encode(lane.REPLY, request.msg_id, error)
        self._lane_send(parts)

    def _lane_output(self, call_id: int, name: str, text: str) -> None:
        for at in range(0, len(text), lane.OUTPUT_CHUNK):
            chunk = text[at : at + lane.OUTPUT_CHUNK]
            try:
                parts = lane.encode(lane.STREAM, call_id, {"name": name, "text": chunk})
            except (TypeError, ValueError):  # a lone surrogate
                fixed = chunk.encode(errors="replace").decode()
                parts = lane.encode(lane.STREAM, call_id, {"name": name, "text": fixed})
            self._lane_send(parts)

    def _read_control_pipe(self, fd: int, pending: bytearray) -> bool:
        """Interrupts and shutdown from the broker, on the control thread; False once the pipe has closed."""
        try:
            data = os.read(fd, lane.CONTROL.size * 64)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False
        pending += data
        while len(pending) >= lane.CONTROL.size:
            kind, call_id = lane.CONTROL.unpack_from(pending)
            del pending[: lane.CONTROL.size]
            if kind == lane.INTERRUPT:
                self._interrupt_call(call_id or None)
            elif kind == lane.SHUTDOWN:
                self._stop()
        return True

    # -- wb-magic's messages ----------------------------------------------------------------------------------

    def _error_reply(self, sock: zmq.Socket, msg: Message, exc: BaseException, request: Request | None) -> None:
        buffers: list[Any] = []
        content = {"status": "error", **exception_to_wire(exc, buffers)}
        if request is not None:
            content["outputs"] = request.outputs
            if request.trace is not None:
                content["spans"] = request.trace.finish(exc)
        self._reply(sock, msg, content, buffers)

    def _traced(self, msg: Message, request: Request) -> Any:
        """The recorder of a request that carries a trace context, its SERVER span begun (see `tracing`)."""
        from .tracing import server_for

        request.trace = server_for(msg.msg_type, msg.content)
        return request.trace

    def _take_source(self, content: dict[str, Any]) -> None:
        """Keep what the broker sends of the request's module: its source, if it shipped it (a worker on
        another host, where the module's file is not), which the loader uses in place of the file; and for a
        dotted name the file the broker found for it, which the loader insists on finding too."""
        source = content.get("module_source")
        if isinstance(source, str):
            shipped[str(content.get("module"))] = source
        origin = content.get("origin", False)
        if origin is None or isinstance(origin, str):
            expected_files[str(content.get("module"))] = origin

    def _waits_for_initial_call(self, msg: Message) -> bool:
        """Run the hooks' ``initial_call`` before the first request imports anything. A coroutine
        ``initial_call`` is awaited on the worker's loop, and the requests that come meanwhile are held and
        handled after it, in order. True when ``msg`` is held."""
        if self._held is not None:
            self._held.append(msg)
            return True
        if not self.runner.initial_is_async:
            try:
                self.runner.run_initial()
            except BaseException as exc:
                self._error_reply(self.shell, msg, exc, None)
                return True
            return False
        self._held = [msg]
        self._event_loop().create_task(self._initial_call())
        return True

    async def _initial_call(self) -> None:
        try:
            await self.runner.initial()  # type: ignore[misc]
        except BaseException as exc:
            self.runner.initial_done(exc)
            first = self._held.pop(0) if self._held else None
            if first is not None:  # the request that started it fails with the hook's own error
                self._error_reply(self.shell, first, exc, None)
        else:
            self.runner.initial_done(None)
        held, self._held = self._held or [], None
        for msg in held:
            self._handle_shell(msg)

    def _wb_call(self, msg: Message) -> None:
        if self.runner.initial_pending and self._waits_for_initial_call(msg):
            return
        c = msg.content
        request = _request(msg)
        token: Any = current_request.set(request)  # what the module prints or calls as it is imported is this call's
        try:
            self._take_source(c)
            if "trace" in c and self._traced(msg, request) is not None:
                module = _load_traced(request.trace, self.runner, str(c["module"]), c.get("cache_buster"))
            else:
                module = self.runner.module(str(c["module"]), c.get("cache_buster"))
            current_request.reset(token)
            token = None
            fn, is_async = self.runner.function(module, str(c["function"]))
            args, kwargs = decode_args(c.get("args", []), c.get("kwargs", {}), msg.buffers)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("a call's args must be a list and its kwargs a dict")
            source = c.get("source") or {}
            context = CallContext(
                module=str(c["module"]),
                function=str(c["function"]),
                segregation_id=c.get("segregation_id"),
                source_module=source.get("module"),
                source_segregation_id=source.get("segregation_id"),
                call_id=msg.msg_id,
            )
        except BaseException as exc:
            self._error_reply(self.shell, msg, exc, request)
            return
        finally:
            if token is not None:
                current_request.reset(token)
        if debugging.on:
            log.debug("call %s() of %s from %s", context.function, context.module, context.source_module or "the host")
        if is_async or self.runner.async_hooks:
            task = self._event_loop().create_task(self._run_async(msg, request, context, fn, is_async, args, kwargs))
            self._tasks[msg.msg_id] = task
            return
        self._run_sync(msg, request, context, fn, args, kwargs)

    def _run_sync(
        self, msg: Message, request: Request, context: CallContext, fn: Callable[..., Any], args: list, kwargs: dict
    ) -> None:
        request_token = current_request.set(request)
        call_token = current.set(context)
        self._sync_depth += 1
        self._sync_calls.append(msg.msg_id)
        error: BaseException | None = None
        trace = request.trace
        try:
            # after the append: an interrupt either saw this call running (and signals it) or is seen here
            if msg.msg_id in self._interrupted:
                raise KeyboardInterrupt
            try:
                _hook(trace, self.runner, "before_call", context) if trace else self.runner.before(context)
                value = fn(*args, **kwargs) if self.loop is None else self._outside_loop(fn, args, kwargs)
            finally:
                _hook(trace, self.runner, "after_call", context) if trace else self.runner.after(context)
        except BaseException as exc:
            error = exc
        finally:
            self._interrupted.pop(msg.msg_id, None)
            self._sync_calls.pop()
            self._sync_depth -= 1
            current.reset(call_token)
            current_request.reset(request_token)
        if error is not None:
            flush_output()
            self._error_reply(self.shell, msg, error, request)
            return
        self._send_value(msg, request, value)

    def _sync_in_task(self, call_id: str, fn: Callable[..., Any], args: list, kwargs: dict) -> Any:
        """A sync function called from a task (its hooks are coroutines): it holds the main thread as a sync
        call does, so an interrupt for it raises KeyboardInterrupt there, as for a sync call."""
        self._sync_depth += 1
        self._sync_calls.append(call_id)
        try:
            return self._outside_loop(fn, args, kwargs)
        finally:
            self._sync_calls.pop()
            self._sync_depth -= 1

    def _outside_loop(self, fn: Callable[..., Any], args: list, kwargs: dict) -> Any:
        """Run a sync function as if no event loop ran on this thread, so that it may use ``asyncio.run()`` as
        it could before the worker's first ``async def`` call started the loop. The loop cannot run meanwhile
        anyway: a sync call holds the worker's main thread."""
        import asyncio

        # asyncio has no public way to step out of a running loop on its thread: _get/_set_running_loop are the
        # hooks it exports (asyncio.events.__all__) for event loops written outside it, such as uvloop.
        # tests/test_broker.py::test_sync_functions_may_use_asyncio_run_after_the_worker_started_its_loop fails
        # if they change.
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return fn(*args, **kwargs)
        finally:
            asyncio.events._set_running_loop(running)
            asyncio.set_event_loop(running or self.loop)  # asyncio.run() leaves the thread without one

    async def _run_async(
        self,
        msg: Message,
        request: Request,
        context: CallContext,
        fn: Callable[..., Any],
        is_async: bool,
        args: list,
        kwargs: dict,
    ) -> None:
        """A call of a coroutine function, or of any function when a hook is a coroutine function."""
        current_request.set(request)
        current.set(context)
        trace = request.trace
        try:
            if msg.msg_id in self._interrupted:  # interrupted before its task was registered
                import asyncio

                raise asyncio.CancelledError
            try:
                await _ahook(trace, self.runner, "before_call", context)
                value = await fn(*args, **kwargs) if is_async else self._sync_in_task(msg.msg_id, fn, args, kwargs)
            finally:
                await _ahook(trace, self.runner, "after_call", context)
        except BaseException as exc:  # CancelledError included: an interrupted call still gets its reply
            flush_output()
            self._error_reply(self.shell, msg, exc, request)
        else:
            self._send_value(msg, request, value)
        finally:
            self._interrupted.pop(msg.msg_id, None)
            self._tasks.pop(msg.msg_id, None)
            self.loop.call_soon(self._drain_all)

    def _send_value(self, msg: Message, request: Request, value: Any) -> None:
        flush_output()
        buffers: list[Any] = []
        try:
            encoded = encode_value(value, buffers, "the result")
        except (Unencodable, TypeError) as exc:
            self._error_reply(self.shell, msg, exc, request)
            return
        content = {"status": "ok", "value": encoded, "outputs": request.outputs}
        if request.trace is not None:
            content["spans"] = request.trace.finish()
        self._reply(self.shell, msg, content, buffers)

    def _wb_import(self, msg: Message) -> None:
        if self.runner.initial_pending and self._waits_for_initial_call(msg):
            return
        c = msg.content
        request = _request(msg)
        token = current_request.set(request)  # what the module prints or calls as it is imported is this request's
        try:
            self._take_source(c)
            if "trace" in c:
                self._traced(msg, request)
            self.runner.module(str(c["module"]), c.get("cache_buster"))
        except BaseException as exc:
            self._error_reply(self.shell, msg, exc, request)
            return
        finally:
            current_request.reset(token)
        content: dict[str, Any] = {"status": "ok"}
        if request.trace is not None:
            content["spans"] = request.trace.finish()
        self._reply(self.shell, msg, content)

    def _wb_debug(self, msg: Message) -> None:
        """The host turns this worker's debug switch on or off (`debugging`)."""
        try:
            debugging.enable_debugging(bool(msg.content.get("enable", True)))
        except BaseException as exc:
            self._error_reply(self.shell, msg, exc, None)
            return
        self._reply(self.shell, msg, {"status": "ok", "value": None})

    def _wb_inspect(self, msg: Message) -> None:
        if self.runner.initial_pending and self._waits_for_initial_call(msg):
            return
        c = msg.content
        request = _request(msg)
        token = current_request.set(request)  # what the module prints or calls as it is imported is this request's
        try:
            self._take_source(c)
            if "trace" in c and self._traced(msg, request) is not None:
                module = _load_traced(request.trace, self.runner, str(c["module"]), c.get("cache_buster"))
            else:
                module = self.runner.module(str(c["module"]), c.get("cache_buster"))
            description = self.runner.describe(module)
        except BaseException as exc:
            self._error_reply(self.shell, msg, exc, request)
            return
        finally:
            current_request.reset(token)
        content = {"status": "ok", **description}
        if request.trace is not None:
            content["spans"] = request.trace.finish()
        self._reply(self.shell, msg, content)

    # -- worker-to-worker calls, through the broker on the stdin channel --------------------------------------

    def _broker_message(self, content: dict[str, Any], buffers: list[Any]) -> str | int:
        request = current_request.get()
        if self._lane_writer is not None:  # the broker reads nothing else from a worker with a lane
            request_id = next(self._lane_requests)
            content["parent"] = request.lane_id if request is not None else None
            parts = lane.encode(lane.BROKER, request_id, content, buffers, self._max_json)
            self._waiting[request_id] = None
            self._lane_send(parts)
            return request_id
        idents = request.idents if request is not None else self._last_idents
        msg_id, frames = self.session.message(
            WB_BROKER, content, parent=request.header if request else None, buffers=buffers, idents=idents
        )
        self._waiting[msg_id] = None
        try:
            send_frames(self.stdin, frames)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # the broker's stdin connection is still being made: its hello tells us when it is up
            self._await_stdin_peer(idents[0] if idents else b"")
            send_frames(self.stdin, frames)
        return msg_id

    def _await_stdin_peer(self, identity: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while identity not in self._stdin_peers:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.stdin.poll(int(remaining * 1000) + 1):
                raise ConnectionError("the broker's stdin channel did not connect")
            self._drain_stdin()

    def broker_request(self, content: dict[str, Any], buffers: list[Any], timeout: float | None) -> Any:
        """Send a ``wb_broker_request`` and wait for its answer, serving incoming calls meanwhile."""
        if threading.get_ident() != self._main_thread:
            raise RuntimeError("worker-to-worker calls are made from the worker's main thread (or its event loop)")
        msg_id = self._broker_message(content, buffers)
        deadline = None if timeout is None else time.monotonic() + timeout
        polled_sockets = self._lane_fd is None  # the request went on the stdin socket
        try:
            while msg_id not in self._answers:
                if self._lane_queue:  # frames read earlier (calls of a cycle, say) are served first
                    self._serve_lane_queue()
                    continue
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if wait == 0.0:
                    self._waiting.pop(msg_id, None)
                    raise CallTimeout(f"no answer from the broker within {timeout} s")
                if self._lane_poll is not None and self._answer_spinner.spin(self._lane_poll.poll):
                    self._drain_lane()  # the answer (or a call of a cycle) came while we polled: no sleep
                    continue
                polled_sockets = True
                ready = self._nested.poll(None if wait is None else int(wait * 1000) + 1)
                self._answer_spinner.woke()
                for sock, _ in ready:
                    self._nested_handlers[sock]()
        finally:
            if polled_sockets:  # polling the sockets took wake-ups that their descriptors would have given
                self._zmq_quiet = False
            if self.loop is not None:  # and that the loop's (edge-triggered) readers wait for
                self.loop.call_soon(self._drain_all)
        return _answer(self._answers.pop(msg_id))

    async def abroker_request(self, content: dict[str, Any], buffers: list[Any], timeout: float | None) -> Any:
        import asyncio

        msg_id = self._broker_message(content, buffers)
        future = self.loop.create_future()
        self._waiting[msg_id] = future
        self._drain_stdin()  # the answer may already be here: the socket's edge-triggered fd won't tell again
        try:
            return _answer(await asyncio.wait_for(future, timeout))
        except TimeoutError:
            raise CallTimeout(f"no answer from the broker within {timeout} s") from None
        finally:
            self._waiting.pop(msg_id, None)

    # -- standard requests -----------------------------------------------------------------------------------

    def _kernel_info(self, msg: Message) -> None:
        sock = self._channel()
        self._with_status(msg, lambda: self._reply(sock, msg, kernel_info()))

    def _channel(self) -> zmq.Socket:
        """The socket to answer on: shell when serving on the main thread, control on the control thread."""
        return self.shell if threading.get_ident() == self._main_thread else self.control

    def _with_status(self, msg: Message, action: Callable[[], None]) -> None:
        self.iopub.status("busy", msg.header)
        try:
            action()
        finally:
            self.iopub.status("idle", msg.header)

    def _execute(self, msg: Message) -> None:
        from .execute import execute

        content = msg.content
        silent = bool(content.get("silent", False))
        if not silent and content.get("store_history", True):
            self.execution_count += 1

        def publish(kind: str, data: dict[str, Any]) -> None:
            self.iopub.publish(kind, data, msg.header)

        def run() -> None:
            code = str(content.get("code", ""))
            self._reply(self.shell, msg, execute(code, self.namespace, self.execution_count, publish, silent=silent))

        request = Request(msg.raw_header, msg.idents)  # a console's: its output stays on iopub
        token = current_request.set(request)
        self._sync_depth += 1
        try:
            self._with_status(msg, run)
        finally:
            self._sync_depth -= 1
            current_request.reset(token)

    def _is_complete(self, msg: Message) -> None:
        from .execute import is_complete

        self._reply(self.shell, msg, is_complete(str(msg.content.get("code", ""))))

    def _complete(self, msg: Message) -> None:
        from .execute import complete

        self._reply(self.shell, msg, complete(self.namespace, msg.content))

    def _inspect(self, msg: Message) -> None:
        self._reply(self.shell, msg, {"status": "ok", "found": False, "data": {}, "metadata": {}})

    @property
    def namespace(self) -> dict[str, Any]:
        """Where ``execute_request`` runs: the worker's first target module, so a console sees its state."""
        if self.runner.primary is None:
            import types

            self.runner.primary = types.ModuleType("__main__")
        return self.runner.primary.__dict__

    # -- the control channel (its own thread) -----------------------------------------------------------------

    def _serve_control(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        pipe, pending = self._control_fd, bytearray()
        if pipe is not None:
            poller.register(pipe, zmq.POLLIN)
        while True:
            try:
                ready = dict(poller.poll())
                if pipe is not None and pipe in ready and not self._read_control_pipe(pipe, pending):
                    poller.unregister(pipe)
                    pipe = None
                if self.control not in ready:
                    continue
                frames = recv_frames(self.control)
            except (zmq.ZMQError, OSError, ValueError):  # closed as the worker ends
                return
            try:
                msg = self.session.parse(frames or [])
            except WireError as exc:
                log.warning("dropped a control message: %s", exc)
                continue
            handler = self.control_handlers.get(msg.msg_type)
            if handler is None:
                self._unknown(msg)
                continue
            try:
                handler(msg)
            except Exception:
                log.exception("handling %s failed", msg.msg_type)

    def _interrupt(self, msg: Message) -> None:
        """Interrupt everything running, or with ``wb_call_id`` (our extension) that one call only."""
        self._reply(self.control, msg, {"status": "ok"})
        self._interrupt_call(msg.content.get("wb_call_id"))

    def _interrupt_call(self, call_id: str | int | None) -> None:
        if call_id is not None:  # first: a call that starts after this look finds it (see _run_sync)
            self._interrupted[call_id] = None
            if len(self._interrupted) > MAX_EARLY_INTERRUPTS:
                del self._interrupted[next(iter(self._interrupted))]
        running = self._sync_calls[-1] if self._sync_calls else None
        if self.loop is not None and (call_id is None or call_id != running):
            # (a sync function running in its call's task, because its hooks are coroutines, is interrupted
            # below; cancelling the task too would cut its after_call short)
            self.loop.call_soon_threadsafe(self._cancel_tasks, call_id)
        if self._sync_depth > 0 and (call_id is None or call_id == running):
            self._interrupt_target = call_id  # the handler checks it again: that call may have ended meanwhile
            signal.pthread_kill(self._main_thread, signal.SIGINT)

    def _cancel_tasks(self, call_id: str | None) -> None:
        for key, task in list(self._tasks.items()):
            if call_id is None or key == call_id:
                task.cancel()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        target, self._interrupt_target = self._interrupt_target, None
        if self._lane_writing:
            self._deferred_interrupt = (target,)
            return
        if self._sync_depth > 0 and (target is None or (self._sync_calls and self._sync_calls[-1] == target)):
            raise KeyboardInterrupt
        log.info("interrupt with no call running: ignored")

    def _shutdown(self, msg: Message) -> None:
        restart = bool(msg.content.get("restart", False))
        self._reply(self._channel(), msg, {"status": "ok", "restart": restart})
        self.iopub.publish("shutdown_reply", {"status": "ok", "restart": restart}, msg.header)
        self._stop()

    def _close(self) -> None:
        flush_output()
        try:
            # the worker ends with os._exit, without Python's finalisation (its heartbeat and control threads sit
            # in ZeroMQ calls), which skips atexit: the modules' handlers are run here, by the one way Python
            # offers short of exiting. tests/test_lifecycle.py::test_a_workers_atexit_handlers_run_at_shutdown
            atexit._run_exitfuncs()
        finally:
            self.iopub.close()
            os._exit(0)


def _load_traced(trace: Any, runner: CallRunner, module: str, cache_buster: Any) -> Any:
    from .tracing import load

    return load(trace, runner, module, cache_buster)


def _hook(trace: Any, runner: CallRunner, name: str, context: CallContext) -> None:
    """Run an entry hook (``before_call``, ``after_call``) in a span of its own inside the SERVER span."""
    hook = runner.before if name == "before_call" else runner.after
    if getattr(runner.hooks, name, None) is None:
        hook(context)
    else:
        trace.run(name, "internal", {"rpc.system": "wb_magic"}, hook, context)


async def _ahook(trace: Any, runner: CallRunner, name: str, context: CallContext) -> None:
    """`_hook` for a call that runs as a coroutine: a hook's awaitable is awaited (inside its span)."""
    hook = runner.before if name == "before_call" else runner.after
    if trace is None or getattr(runner.hooks, name, None) is None:
        result = hook(context)
        if result is not None and hasattr(result, "__await__"):
            await result
        return
    span = trace.start(name, "internal", {"rpc.system": "wb_magic"})
    outer, trace.current = trace.current, span["span_id"]
    try:
        result = hook(context)
        if result is not None and hasattr(result, "__await__"):
            await result
    except BaseException as exc:
        trace.end(span, exc)
        raise
    finally:
        trace.current = outer
    trace.end(span)


class LaneRequest:
    """A request that came on the lane, shaped as the handlers of Jupyter messages expect one."""

    __slots__ = ("msg_type", "msg_id", "content", "buffers")
    idents: list[bytes] = []
    raw_header = None
    header = None

    def __init__(self, msg_type: str, frame: lane.Frame) -> None:
        self.msg_type = msg_type
        self.msg_id = frame.id
        self.content = frame.content
        self.buffers = frame.buffers


def _request(msg: Message | LaneRequest) -> Request:
    """What the output streams see of a request: a lane request's output goes back on the lane."""
    return Request(msg.raw_header, msg.idents, msg.msg_id if type(msg) is LaneRequest else None)


_LANE_REQUESTS = {
    lane.CALL: "wb_call_request",
    lane.IMPORT: "wb_import_request",
    lane.INSPECT: "wb_inspect_request",
    lane.DEBUG: "wb_debug_request",
}


def _answer(msg: Message | lane.Frame) -> Any:
    """The value of a ``wb_broker_reply``, or the exception it carries, raised."""
    content = msg.content
    if content.get("status") == "ok":
        return decode_value(content.get("value"), msg.buffers)
    raise exception_from_wire(content, msg.buffers)


def _echo(sock: zmq.Socket, broker_timeout: float | None = None) -> None:
    """Answer heartbeats; with ``broker_timeout``, end the process when none came for that long."""
    try:
        if broker_timeout is None:
            zmq.proxy(sock, sock)
            return
        while sock.poll(int(broker_timeout * 1000)):
            sock.send_multipart(sock.recv_multipart())
    except zmq.ZMQError:
        return
    log.warning("no heartbeat from the broker for %s s: it is gone or cut off; exiting", broker_timeout)
    os._exit(0)


def _watch_parent() -> None:
    """End this process when the one that launched it ends, so a worker never outlives its host.

    A thread waits on a pidfd of the parent: it works even while the main thread is stuck in a long call.
    """
    pid = int(os.environ.get("JPY_PARENT_PID", "0") or 0) or os.getppid()
    if pid <= 1:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # it ended while this worker started (a warm worker of a host that quit, say)
        log.warning("the process that launched this worker (%d) has already ended; exiting", pid)
        os._exit(0)
    except (OSError, AttributeError):
        log.warning("cannot watch the parent process %d; this worker may outlive it", pid)
        return

    def wait() -> None:
        import select

        select.select([fd], [], [])
        try:  # to the process's own stderr: sys.stderr may be a lane whose reader has gone with the host
            os.write(2, b"the process that launched this worker has ended; exiting\n")
        finally:
            os._exit(0)

    threading.Thread(target=wait, name="wb-parent-watch", daemon=True).start()


def kernel_info() -> dict[str, Any]:
    return {
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "wb-worker",
        "implementation_version": __version__,
        "language_info": {
            "name": "python",
            "version": ".".join(map(str, sys.version_info[:3])),
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "python3",
            "codemirror_mode": {"name": "python", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": f"wb-magic worker kernel {__version__} (Python {sys.version.split()[0]})",
        "help_links": [],
    }
