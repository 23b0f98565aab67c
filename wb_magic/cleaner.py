"""Worker lifecycle events, the cleaners that receive them, and the default LRU cleaner.

A `WorkerCleaner` is any callable that takes a `WorkerEvent`, as in the seed: ``"create"`` when a worker
starts, ``"get"`` on every access, ``"remove"`` when one ends, ``"terminate"`` when the broker ends. It is
called on the caller's thread, in the middle of a call, so it must be quick: anything slow (measuring memory,
shutting workers down) belongs on a thread of its own, as `LRUCleaner` does it.

The default cleaner (`cleaner(...)`) keeps workers in least-recently-used order and removes the oldest idle ones
while there are more than ``worker_count``, while the memory of the host and its workers is over
``memory_ceiling``, and once they have been idle for ``idle_timeout`` seconds. Memory is the sum of the PSS
(proportional set size) of the host and every worker: shared pages (the interpreter, the libraries) are counted
once, split among the processes that share them, so the sum is the memory the group really uses. RSS would
count the shared pages once per worker and evict for memory that is not there; USS would miss them entirely.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import psutil

from .connection import now

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("wb_magic")
EVICTED_KEPT = 1000  # keys a cleaner remembers of the workers it evicted, for people and tests

EventType = Literal["create", "get", "remove", "terminate"]


class Evictor(Protocol):
    """What a cleaner may ask of the broker that sends it events (`WorkerBroker` is one)."""

    closed: bool

    def evict(self, worker: Worker) -> bool:
        """Remove ``worker`` unless it has a call in flight; True if it was removed."""
        ...


@dataclass(frozen=True)
class WorkerEvent:
    """What happened to which worker. ``worker``, ``key``, ``module`` and ``segregation_id`` are None only for
    ``terminate``."""

    type: EventType
    broker: Evictor
    worker: Worker | None = None
    key: Any = None
    module: str | None = None
    segregation_id: str | None = None


WorkerCleaner = Callable[[WorkerEvent], None]


class LRUCleaner:
    """Removes least-recently-used idle workers under a count limit, a memory ceiling and an idle timeout.

    A worker with a call in flight is never removed, nor the one that the event is about (the worker a call is
    about to use). Events only update the LRU order and wake the cleaner's thread, which does the measuring and
    the removing, so the hot call path pays a dictionary move and a lock.
    """

    def __init__(
        self,
        memory_ceiling: int | None = None,
        worker_count: int | None = None,
        idle_timeout: float | None = None,
        *,
        check_interval: float = 1.0,
    ) -> None:
        if worker_count is not None and worker_count < 1:
            raise ValueError("worker_count must be at least 1")
        self.memory_ceiling = memory_ceiling
        self.worker_count = worker_count
        self.idle_timeout = idle_timeout
        self.check_interval = check_interval
        self._order: OrderedDict[int, Worker] = OrderedDict()  # id(worker) -> worker, least recent first
        self._protected: Worker | None = None
        self._broker: Evictor | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.evicted: list[Any] = []  # keys of the workers this cleaner removed, oldest first (the last EVICTED_KEPT)

    def __call__(self, event: WorkerEvent) -> None:
        worker = event.worker
        with self._lock:
            if event.type == "get" and worker is not None:
                self._order[id(worker)] = worker
                self._order.move_to_end(id(worker))
                return
            if event.type == "create" and worker is not None:
                self._broker = event.broker
                self._order[id(worker)] = worker
                self._protected = worker
                self._start()
            elif event.type == "remove" and worker is not None:
                self._order.pop(id(worker), None)
                return
            elif event.type == "terminate":
                self._order.clear()
                return
        self._wake.set()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="wb-cleaner", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:  # until its broker closes
            self._wake.wait(self.check_interval)
            self._wake.clear()
            broker = self._broker
            if broker is None or broker.closed:
                return
            try:
                self.clean(broker)
            except Exception:
                log.exception("the worker cleaner failed")

    def clean(self, broker: Evictor) -> None:
        """One pass: apply the count limit, the idle timeout and the memory ceiling."""
        if self.worker_count is not None:
            while len(self._live()) > self.worker_count and self._evict_one(broker, "over the worker count"):
                pass
        if self.idle_timeout is not None:
            cutoff = now() - self.idle_timeout
            for worker in self._live():
                if worker.last_used < cutoff and not worker.pending:
                    self._evict(broker, worker, f"idle for over {self.idle_timeout} s")
        if self.memory_ceiling is not None:
            while self.memory() > self.memory_ceiling and self._evict_one(broker, "over the memory ceiling"):
                pass

    def memory(self) -> int:
        """PSS of the host and its live workers, in bytes."""
        total = _pss(os.getpid())
        for worker in self._live():
            if worker.pid is not None:
                total += _pss(worker.pid)
        return total

    def _live(self) -> list[Worker]:
        with self._lock:
            return [w for w in self._order.values() if not w.dead]

    def _evict_one(self, broker: Evictor, why: str) -> bool:
        """Remove the least recently used worker that may go; False if none may."""
        for worker in self._live():
            if worker is not self._protected and not worker.pending:
                return self._evict(broker, worker, why)
        return False

    def _evict(self, broker: Evictor, worker: Worker, why: str) -> bool:
        if not broker.evict(worker):
            return False
        log.debug("cleaner removed worker %r: %s", worker.key, why)
        with self._lock:
            self._order.pop(id(worker), None)
            self.evicted.append(worker.key)
            del self.evicted[:-EVICTED_KEPT]
        return True


def cleaner(
    memory_ceiling: int | None = None,
    worker_count: int | None = None,
    idle_timeout: float | None = None,
    *,
    check_interval: float = 1.0,
) -> LRUCleaner:
    """The default `WorkerCleaner`: see `LRUCleaner`. ``memory_ceiling`` in bytes, ``idle_timeout`` in seconds;
    memory and idleness are checked every ``check_interval`` seconds, the count at every new worker."""
    return LRUCleaner(memory_ceiling, worker_count, idle_timeout, check_interval=check_interval)


def _pss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except (psutil.Error, AttributeError):
        return 0
