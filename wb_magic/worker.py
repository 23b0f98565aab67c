"""One worker as the broker sees it: its key, its link, its process and the calls in flight."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from worker_kernel.permissions import REFUSED_EXIT_CODE, refusal_file

from .launcher import WorkerSpec
from .links import Link, ProcessWatch
from .stdio import WorkerOutput


class Call:
    """One request in flight to a worker. Ended by the pump with a reply message or an exception."""

    __slots__ = (
        "msg_id", "worker", "function", "reply", "error", "done", "outputs", "stdout", "stderr",
        "future", "loop", "on_done", "unsent", "output_bytes", "trace",
    )  # fmt: skip

    def __init__(
        self, msg_id: Any, worker: Worker, function: str, stdout: TextIO | None, stderr: TextIO | None
    ) -> None:
        self.msg_id = msg_id
        self.worker = worker
        self.function = function
        self.reply: Any = None  # the reply (a Message or a messages.Reply: its content and buffers) once it arrived
        self.error: BaseException | None = None
        self.done = False
        self.outputs = 0  # stream messages seen for this call
        self.stdout = stdout
        self.stderr = stderr
        self.future: Any = None
        self.loop: Any = None
        self.on_done: Callable[[Call], None] | None = None
        self.unsent = False
        self.output_bytes = 0  # stream text shown for this call, capped at MAX_OUTPUT_BYTES
        self.trace: Any = None  # its `tracing.CallTrace` while telemetry is on

    def is_done(self) -> bool:
        return self.done


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker, as ``broker.workers`` lists them."""

    key: Any
    module: str
    segregation_id: str | None
    pid: int | None
    state: str
    calls: int
    pending: int
    last_used: float  # wall-clock time (time.time()) of the last call or lookup
    # the Jupyter connection file of a worker the broker launched: ``jupyter console --existing FILE`` attaches
    connection_file: str | None = None


class Worker:
    """A live worker kernel. ``state`` is ``starting`` (no reply yet), ``idle``, ``busy``, or ``dead``.

    ``link`` carries its requests and what it sends back (the lane or the Jupyter channels); ``process`` watches
    its process, when this host launched it (an attached worker has none: its link's heartbeat watches it)."""

    def __init__(
        self,
        key: Any,
        module: str,
        segregation_id: str | None,
        spec: WorkerSpec,
        link: Link,
        process: ProcessWatch | None,
    ) -> None:
        self.key = key
        self.module = module
        self.modules = {module}
        self.segregation_id = segregation_id
        self.spec = spec
        self.link = link
        self.process = process
        self.pid: int | None = process.pid if process is not None else None
        self.pending: dict[Any, Call] = {}
        self.answered = False
        self.dead = False
        self.exit_reason: str | None = None
        self.output: WorkerOutput | None = None  # a sandboxed worker's stdout and stderr
        self.sponsor: Any = None  # the key of the sandboxed worker on whose behalf this one was started
        self.remote = False  # on another host (or attached): gets its modules' source from the broker
        self.shipped: set[tuple[Any, Any]] = set()  # (module, cache buster) whose source it was sent
        self.attached_from: str | None = None  # the connection file an attached worker was adopted from
        self.stray_output = 0.0  # output budget for streams that belong to no call (a leaky bucket, in bytes)
        self.stray_checked = 0.0
        self.calls = 0
        # its worker-to-worker requests (the broker's _request_arrived): how many were handled, how many wait for
        # their answer, and for backpressure, the bytes of its routed calls still queued toward their targets and
        # of its answers queued toward it
        self.requests_handled = 0
        self.requests_in_flight = 0
        self.routed_bytes = 0
        self.unread_answers = 0
        self.created = time.time()  # wall clock, for people
        self.last_used = time.monotonic()  # monotonic, for idle timeouts
        self.lock = threading.Lock()

    @property
    def manager(self) -> Any:
        """The `KernelManager` that launched the worker (None for an attached worker)."""
        return self.process.manager if self.process is not None else None

    @property
    def state(self) -> str:
        if self.dead:
            return "dead"
        if self.pending:
            return "busy"
        return "idle" if self.answered else "starting"

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            self.key, self.module, self.segregation_id, self.pid, self.state, self.calls, len(self.pending),
            time.time() - (time.monotonic() - self.last_used), self.connection_file,
        )  # fmt: skip

    @property
    def connection_file(self) -> str | None:
        """Where the worker's ports and key are written (for an attached worker, the file it was attached from,
        if it was given as one)."""
        return getattr(self.manager, "connection_file", None) or self.attached_from

    def exit_status(self) -> str:
        """How the process ended, for error messages: an exit code or a signal name, and why when we know: the
        reason a sandboxed worker gave for refusing to start, or the limit of its `WorkerSpec` that killed it."""
        if self.exit_reason:  # the broker ended it, and knows why
            return self.exit_reason
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return "it stopped answering"
        if code == REFUSED_EXIT_CODE and self.spec.sandboxed:
            reason = self._refusal() or "its sandbox could not be applied (its stderr says why)"
            return f"it refused to start: {reason}"
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                return f"killed by signal {-code}"
            return f"killed by {name}{self._limit(name)}"
        return f"exit code {code}"

    def _refusal(self) -> str:
        """The one line a worker that refused to start left beside its connection file (read once)."""
        connection_file = getattr(self.process.manager, "connection_file", None) if self.process else None
        if not connection_file:
            return ""
        path = refusal_file(connection_file)
        try:
            with open(path, encoding="utf-8") as f:
                reason = f.read(4000).strip()
            os.unlink(path)
        except OSError:
            return ""
        return reason

    def _limit(self, signal_name: str) -> str:
        spec = self.spec
        if signal_name == "SIGXCPU" and spec.cpu_seconds is not None:
            return f": it used up its CPU time limit (cpu_seconds={spec.cpu_seconds})"
        if signal_name == "SIGKILL" and spec.cpu_seconds is not None:
            return f" (its CPU time limit, cpu_seconds={spec.cpu_seconds}, ends in SIGKILL if SIGXCPU is blocked)"
        if signal_name == "SIGXFSZ" and spec.file_size_limit is not None:
            return f": it wrote past its file size limit (file_size_limit={spec.file_size_limit})"
        if signal_name in ("SIGABRT", "SIGSEGV", "SIGBUS") and spec.memory_limit is not None:
            return f" (perhaps from its memory limit, memory_limit={spec.memory_limit})"
        if signal_name == "SIGSYS" and spec.permissions is not None:
            return ": a system call its sandbox kills for"
        return ""

    def __repr__(self) -> str:
        return f"<Worker {self.key!r} pid={self.pid} {self.state}>"
