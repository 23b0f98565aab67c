"""The broker's message pump: one owner at a time for every worker socket, and no extra thread on the hot path.

ZeroMQ sockets must not be used by two threads at once. Rather than hand every call to an I/O thread (two
thread switches per call, which cost more than the ZeroMQ round trip itself), the thread that waits for a reply
*leads* the pump: it sends, polls every socket and dispatches whatever arrives, its own reply and everyone
else's. Other threads that wait meanwhile are *followers*: they queue what they need sent and sleep on a
condition until the leader has delivered their reply or has left, and then one of them leads.

Coroutines never block the event loop: the loop itself takes turns at leading, from readers on every socket's
file descriptor (`serve_loop`), so an ``await``-ed call costs no thread switch either. When another thread
leads while coroutines wait, it hands their results to the loop in batches, and has the loops look again when
it leaves.

The leader waits with epoll on the sockets' descriptors: a turn costs O(ready sockets), not O(workers).

So a synchronous call from a notebook costs: one send, one ``epoll_wait``, one receive, on the caller's thread.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any

from worker_kernel.lane import Spinner

log = logging.getLogger("wb_magic")

BATCH_SENDS = 16  # coroutines' sends queued before they go out together (see Pump.batch)


class Pump:
    def __init__(self, spin: float = 0.0) -> None:
        """``spin``: seconds that a thread waiting for a reply polls before it sleeps (see lane.SPIN)."""
        self._spinner = Spinner(spin)
        self._cv = threading.Condition(threading.Lock())
        self._leader: int | None = None
        self._followers = 0
        self._outbox: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # epoll over the sockets' descriptors, so that a turn costs O(ready), not O(workers) as zmq_poll would.
        # A ZeroMQ socket's descriptor only says "look at me": its events are read with ZMQ_EVENTS (the
        # handlers do), and a send on a socket can swallow that signal, hence `mark` and the dirty set.
        self._epoll = select.epoll()
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._fds: dict[Any, int] = {}  # a socket's descriptor, looked up once (``sock.FD`` is a getsockopt)
        self._by_fd: dict[int, Callable[[], None]] = {}
        self._dirty: set[int] = set()  # descriptors of sockets to look at whether or not epoll says so
        self._writers: set[int] = set()  # descriptors watched for room to write too (see want_write)
        self._muted: set[int] = set()  # descriptors not watched for reading (see want_read)
        self._timers: list[list[Any]] = []  # a heap of [when, id, action, loop handles]; cancelled: action None
        self._cancelled = 0
        self._ended_calls = False  # a call ended during the leader's last turn
        self._timer_ids = count()
        self._async_pending = 0
        self._loops: list[Any] = []  # event loops that take turns through readers (see serve_loop)
        self._batches: dict[Any, list[Callable[[], None]]] = {}  # event loop -> sends queued by its coroutines
        self.closed = False
        self.register(self._wake_fd, self._drain_wake)

    # -- what runs on the leader --------------------------------------------------------------------------

    def register(self, source: Any, handler: Callable[[], None]) -> None:
        """Call ``handler()`` on the leader whenever ``source`` (a socket or a file descriptor) is readable.
        Any thread may register (a launch runs beside the leader), so the tables change under the lock."""
        fd = _fd(source)
        with self._cv:
            self._handlers[source] = handler
            self._fds[source] = fd
            self._by_fd[fd] = handler
            self._epoll.register(fd, select.EPOLLIN)
            if not isinstance(source, int):
                self._dirty.add(fd)  # a socket may hold messages already (a plain descriptor's handler must
                # only run when epoll says it is readable: a pidfd's means "the process has ended")
        self._wake()
        self._on_loops(lambda loop: loop.add_reader(fd, self.turn, fd))

    def unregister(self, source: Any) -> None:
        with self._cv:
            if self._handlers.pop(source, None) is None:
                return
            fd = self._fds.pop(source)
            self._by_fd.pop(fd, None)
            self._dirty.discard(fd)
            self._writers.discard(fd)
            self._muted.discard(fd)
            self._epoll.unregister(fd)
        self._on_loops(lambda loop: _forget(loop, fd))

    def want_write(self, source: int, wanted: bool) -> None:
        """Also call the handler of a registered descriptor when it turns writable (while ``wanted``): a lane
        whose peer has not yet taken all that was written to it."""
        with self._cv:
            fd = self._fds.get(source)
            if fd is None:
                return
            if wanted:
                self._writers.add(fd)
            else:
                self._writers.discard(fd)
            self._epoll.modify(fd, self._events(fd))
        if wanted:
            self._wake()  # the leader may be asleep in epoll_wait with the old mask
            self._on_loops(lambda loop: loop.add_writer(fd, self.turn, fd))
        else:
            self._on_loops(lambda loop: loop.remove_writer(fd))

    def want_read(self, source: int, wanted: bool) -> None:
        """Stop (or resume) calling the handler of a registered descriptor when it is readable: a worker that
        does not read what it asked for is not read either until it does (backpressure). Its handler is still
        called when the descriptor turns writable (`want_write`), or hangs up."""
        with self._cv:
            fd = self._fds.get(source)
            if fd is None or (fd not in self._muted) == wanted:
                return
            if wanted:
                self._muted.discard(fd)
                self._dirty.add(fd)  # what was read already may hold frames
            else:
                self._muted.add(fd)
            self._epoll.modify(fd, self._events(fd))
        if wanted:
            self._wake()
            self._on_loops(lambda loop: loop.add_reader(fd, self.turn, fd))
        else:
            self._on_loops(lambda loop: loop.remove_reader(fd))

    def _events(self, fd: int) -> int:
        return (0 if fd in self._muted else select.EPOLLIN) | (select.EPOLLOUT if fd in self._writers else 0)

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
                was_empty = not self._outbox
                self._outbox.append(action)
        if not lead:
            if was_empty:  # else the leader has been woken already and will take the whole queue
                self._wake()
            return
        try:
            action()
            self._dispatch(self._ready(0, dirty_only=True))  # what the action sent may have hidden a wake-up
        finally:
            self._step_down()

    def mark(self, sock: Any) -> None:
        """After a send on ``sock`` (on the leader): look at it at the next turn, whatever epoll says."""
        fd = self._fds.get(sock)
        if fd is not None:  # else it has been unregistered (its worker is gone): nothing to look at
            self._dirty.add(fd)

    def at(self, when: float, action: Callable[[], None]) -> list[Any]:
        """Run ``action`` on the leader at ``when`` (time.monotonic) or soon after; returns the timer, for
        `cancel`."""
        if not math.isfinite(when):
            raise ValueError(f"a timer needs a finite time, not {when!r}")
        handles: list[tuple[Any, Any]] = []  # the turns it schedules on event loops (see cancel)
        timer: list[Any] = [when, next(self._timer_ids), action, handles]

        def on_loop(loop: Any) -> None:
            if timer[2] is not None:  # (cancelled already: nothing to schedule)
                handles.append((loop, loop.call_later(max(0.0, when - _now()), self.turn)))

        with self._cv:
            heapq.heappush(self._timers, timer)
        self._wake()
        self._on_loops(on_loop)
        return timer

    def cancel(self, timer: list[Any]) -> None:
        """Forget a timer that has not run (a routed call's timeout, once the call is over): its action is
        dropped at once, and the heap is rebuilt once half of it is cancelled timers, so that calls with long
        timeouts do not pile up in it."""
        with self._cv:
            if timer[2] is None:
                return
            timer[2] = None
            self._cancelled += 1
            if self._cancelled * 2 > len(self._timers):
                self._timers = [live for live in self._timers if live[2] is not None]
                heapq.heapify(self._timers)
                self._cancelled = 0
            scheduled, timer[3] = timer[3], []
        for loop, handle in scheduled:  # the turns the timer scheduled on event loops go too
            try:
                loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:  # that loop has closed
                pass

    # -- waiting ------------------------------------------------------------------------------------------------

    def wait(self, done: Callable[[], bool], deadline: float | None, first: Callable[[], None] | None = None) -> bool:
        """Block until ``done()`` or ``deadline``; lead the pump whenever nobody else does. ``first`` is sent
        before waiting. Returns ``done()``."""
        me = threading.get_ident()
        self.send_queued()
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
                if self._async_pending and self._loops:
                    # we may have taken the sockets' wake-ups while coroutines wait: let their loops look again
                    self._on_loops(lambda loop: self.turn())

    def _step_down(self) -> None:
        """Leave the lead, first running what others queued meanwhile: nobody else may be there to run it."""
        while True:
            with self._cv:
                if not self._outbox:
                    self._leader = None
                    if self._followers:  # only followers wait on the condition
                        self._cv.notify_all()
                    return
                action = self._outbox.popleft()
            try:
                action()
            except Exception:
                log.exception("a queued action of the broker's pump failed")
            except BaseException:  # Ctrl-C: leave the lead all the same
                with self._cv:
                    self._leader = None
                    self._cv.notify_all()
                raise

    def _lead(self, done: Callable[[], bool], deadline: float | None) -> bool:
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
            self._ended_calls = False
            self._dispatch(self._ready(timeout))
            if self._ended_calls:  # a call ended (ours, another thread's, or one routed between workers)
                self._spinner.hit()
            else:
                self._spinner.miss()  # what came ended no call: a worker's noise, say (see lane.Spinner)

    def _ready(self, timeout: int | None, dirty_only: bool = False) -> set[int]:
        """The descriptors to look at: what epoll reports within ``timeout`` ms, and the dirty ones."""
        fds: set[int] = set()
        if not dirty_only:
            wait = 0 if self._dirty else (-1 if timeout is None else timeout / 1000)
            events = self._spinner.spin(self._epoll.poll) if wait else None
            if not events:
                events = self._epoll.poll(wait)
                if wait:
                    self._spinner.woke()
            fds = {fd for fd, _ in events}
        if self._dirty:
            with self._cv:
                fds |= self._dirty
                self._dirty = set()
        return fds

    def _dispatch(self, fds: set[int]) -> None:
        # looked up one by one: a handler may unregister others (a worker's exit closes its sockets)
        for fd in fds:
            handler = self._by_fd.get(fd)
            if handler is not None:
                try:
                    handler()
                except Exception:  # a bug, or a worker's bytes that got past the checks: never the caller's problem
                    log.exception("handling a worker's message failed")

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
                timer = heapq.heappop(self._timers)
                action, timer[2] = timer[2], None
                if action is None:
                    self._cancelled = max(0, self._cancelled - 1)
            if action is not None:
                action()

    def delivered(self) -> None:
        """Wake followers: a call they may wait on has ended. Under the lock, always: a follower checks its call
        and goes to sleep atomically under it, so a wake-up sent meanwhile cannot be lost."""
        self._ended_calls = True  # the turn was worth polling for (see _lead)
        with self._cv:
            if self._followers:
                self._cv.notify_all()

    # -- event loops ------------------------------------------------------------------------------------------

    def serve_loop(self, loop: Any) -> None:
        """Have the running event ``loop`` lead the pump in turns, from readers on every source's descriptor.

        Called on the loop's thread before a coroutine awaits a reply. ZeroMQ's descriptors are edge-triggered,
        which is why a turn drains everything that is ready, and why a send looks at its socket again.
        """
        if loop in self._loops:
            return
        with self._cv:
            self._loops = [known for known in self._loops if not known.is_closed()] + [loop]
        for fd in list(self._fds.values()):
            if fd not in self._muted:
                loop.add_reader(fd, self.turn, fd)
        for fd in list(self._writers):
            loop.add_writer(fd, self.turn, fd)

    def batch(self, loop: Any, action: Callable[[], None]) -> None:
        """Run ``action`` (a send) on the pump: the first of a pass of the running ``loop`` at once, the
        others in batches of BATCH_SENDS, and what is left when the loop's pass ends.

        Calls that coroutines make together (``asyncio.gather``) leave together, so that ZeroMQ's I/O thread,
        once woken (a good part of what a send costs), finds several messages waiting; and the worker has work
        from the first call on.
        """
        queued = self._batches.get(loop)
        if queued is None:
            self._batches[loop] = []
            loop.call_soon(self._send_batch, loop, True)
            self.soon(action)
            return
        queued.append(action)
        if len(queued) >= BATCH_SENDS:
            self._send_batch(loop)

    def send_queued(self) -> None:
        """Send now what coroutines of this thread's running loop have queued: the thread is about to block (a
        sync call from a coroutine), and a call it waits on may depend on them."""
        # the non-raising form of asyncio.get_running_loop(), exported for event loops written outside asyncio
        # (a sync call from a coroutine runs this on every call; tests/test_broker.py's async tests use it)
        loop = asyncio.events._get_running_loop()
        if loop is not None and self._batches.get(loop):
            self._send_batch(loop)

    def _send_batch(self, loop: Any, last: bool = False) -> None:
        actions = self._batches.pop(loop, None) if last else self._batches.get(loop)
        if actions:
            if not last:
                self._batches[loop] = []
            self.soon(lambda: _run_all(actions))

    def turn(self, fd: int | None = None) -> None:
        """One non-blocking pass, on an event loop: lead if nobody does, take what is ready, step down.

        ``fd`` is a descriptor the loop's own selector found readable: it is dispatched without asking the
        pump's epoll again (the loop calls a turn for each readable one). Without it, every source is polled.
        """
        me = threading.get_ident()
        with self._cv:
            if self._leader is not None:
                return  # the leader dispatches everything, and has the loops look again when it leaves
            self._leader = me
        try:
            for _ in range(64):
                while self._outbox:
                    self._outbox.popleft()()
                if self._timers:
                    self._run_timers()
                if fd is None:
                    ready = self._ready(0)
                else:  # later passes need only what this turn's sends marked
                    ready = self._ready(0, dirty_only=True)
                    if fd >= 0:
                        ready.add(fd)
                        fd = -1
                if not ready:
                    break
                self._dispatch(ready)
            else:  # still busy after 64 passes: let the loop run its other callbacks, then come back
                loop = asyncio.events._get_running_loop()
                if loop is not None:
                    loop.call_soon(self.turn)
        finally:
            self._step_down()

    def _on_loops(self, action: Callable[[Any], None]) -> None:
        for loop in list(self._loops):
            try:
                loop.call_soon_threadsafe(action, loop)
            except RuntimeError:  # closed
                with self._cv:
                    self._loops = [known for known in self._loops if known is not loop]

    def async_started(self) -> None:
        with self._cv:
            self._async_pending += 1

    def async_ended(self) -> None:
        with self._cv:
            self._async_pending -= 1

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
            idle = self._leader is None
        self._wake()
        if idle:
            self._epoll.close()


_now = time.monotonic


def _run_all(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # one call's send failing must not stop the others'
            log.exception("a queued send of the broker's pump failed")


def _forget(loop: Any, fd: int) -> None:
    loop.remove_reader(fd)
    loop.remove_writer(fd)


def _fd(source: Any) -> int:
    return source if isinstance(source, int) else int(source.FD)
