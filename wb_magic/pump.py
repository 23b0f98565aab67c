"""The broker's message pump: one owner at a time for every worker socket, and no extra thread on the hot path.

ZeroMQ sockets must not be used by two threads at once. Rather than hand every call to an I/O thread (two
thread switches per call, which cost more than the ZeroMQ round trip itself), the thread that waits for a reply
*leads* the pump: it sends, polls every socket and dispatches whatever arrives, its own reply and everyone
else's. Other threads that wait meanwhile are *followers*: they queue what they need sent and sleep on a
condition until the leader has delivered their reply or has left, and then one of them leads.

Coroutines never block the event loop: while ``await``-ed calls are pending, a background thread leads the pump
and hands each result to the loop with ``call_soon_threadsafe``.

So a synchronous call from a notebook costs: one send, one ``zmq_poll``, one receive, on the caller's thread.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any

import zmq

log = logging.getLogger("wb_magic")


class Pump:
    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._leader: int | None = None
        self._followers = 0
        self._outbox: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poller = zmq.Poller()
        self._poller.register(self._wake_fd, zmq.POLLIN)
        self._handlers: dict[Any, Callable[[], None]] = {self._wake_fd: self._drain_wake}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = count()
        self._async_pending = 0
        self._async_thread: threading.Thread | None = None
        self.closed = False

    # -- what runs on the leader --------------------------------------------------------------------------

    def register(self, source: Any, handler: Callable[[], None]) -> None:
        """Call ``handler()`` on the leader whenever ``source`` (a socket or a file descriptor) is readable."""
        self._handlers[source] = handler
        self._poller.register(source, zmq.POLLIN)
        self._wake()

    def unregister(self, source: Any) -> None:
        if self._handlers.pop(source, None) is not None:
            self._poller.unregister(source)

    def soon(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the pump: now if this thread can lead, else by the leader at its next turn."""
        me = threading.get_ident()
        if self._leader == me:
            action()
            return
        with self._cv:
            lead = self._leader is None
            if lead:
                self._leader = me
            else:
                self._outbox.append(action)
        if not lead:
            self._wake()
            return
        try:
            action()
        finally:
            self._step_down()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the leader at ``when`` (time.monotonic) or soon after."""
        with self._cv:
            heapq.heappush(self._timers, (when, next(self._timer_ids), action))
        self._wake()

    # -- waiting ------------------------------------------------------------------------------------------------

    def wait(self, done: Callable[[], bool], deadline: float | None, first: Callable[[], None] | None = None) -> bool:
        """Block until ``done()`` or ``deadline``; lead the pump whenever nobody else does. ``first`` is sent
        before waiting. Returns ``done()``."""
        me = threading.get_ident()
        with self._cv:
            if self._leader == me:  # re-entered from a handler on the leader (a launch, say)
                lead = True
                nested = True
            else:
                nested = False
                if first is not None and self._leader is not None:
                    self._outbox.append(first)
                    first = None
                    self._wake()
                while self._leader is not None and not done():
                    remaining = None if deadline is None else deadline - _now()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._followers += 1
                    try:
                        self._cv.wait(remaining)
                    finally:
                        self._followers -= 1
                lead = self._leader is None
                if lead:
                    self._leader = me
        if not lead:
            return True
        try:
            if first is not None:
                first()
            return self._lead(done, deadline)
        finally:
            if not nested:
                self._step_down()

    def _step_down(self) -> None:
        with self._cv:
            self._leader = None
            self._cv.notify_all()
        if self._outbox:  # queued by someone who found us leading: make sure a leader takes it
            self._wake()

    def _lead(self, done: Callable[[], bool], deadline: float | None) -> bool:
        poll = self._poller.poll
        handlers = self._handlers
        while True:
            while self._outbox:
                self._outbox.popleft()()
            if self._timers:
                self._run_timers()
            if done():
                return True
            timeout = self._poll_timeout(deadline)
            if timeout == 0 and deadline is not None and _now() >= deadline:
                return done()
            for source, _ in poll(timeout):
                handler = handlers.get(source)
                if handler is not None:
                    handler()

    def _poll_timeout(self, deadline: float | None) -> int | None:
        when = deadline
        if self._timers and (when is None or self._timers[0][0] < when):
            when = self._timers[0][0]
        if when is None:
            return None
        return max(0, int((when - _now()) * 1000) + 1)

    def _run_timers(self) -> None:
        now = _now()
        while self._timers and self._timers[0][0] <= now:
            with self._cv:
                _, _, action = heapq.heappop(self._timers)
            action()

    def delivered(self) -> None:
        """Wake followers: a call they may wait on has ended."""
        if self._followers:
            with self._cv:
                self._cv.notify_all()

    # -- coroutines --------------------------------------------------------------------------------------------

    def async_started(self) -> None:
        with self._cv:
            self._async_pending += 1
            if self._async_thread is None or not self._async_thread.is_alive():
                self._async_thread = threading.Thread(target=self._serve_async, name="wb-pump", daemon=True)
                self._async_thread.start()
            self._cv.notify_all()
        self._wake()

    def async_ended(self) -> None:
        with self._cv:
            self._async_pending -= 1

    def _serve_async(self) -> None:
        while not self.closed:
            with self._cv:
                while self._async_pending <= 0 and not self.closed:
                    self._cv.wait()
            try:
                self.wait(lambda: self._async_pending <= 0 or self.closed, None)
            except Exception:  # pragma: no cover - a handler bug; keep serving the others
                log.exception("the broker's pump failed")

    # -- wake-ups ------------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except (BlockingIOError, OSError):
            pass

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()
        self._wake()


_now = time.monotonic
