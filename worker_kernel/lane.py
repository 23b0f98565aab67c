"""The lane: a private byte stream between the broker and a worker it launched (a socketpair inherited at launch).

It carries calls, their output, replies, and worker-to-worker requests and their answers, in order. One frame::

    header (16 bytes, little-endian): kind u8, 0 u8, count u16, json length u32, id u64
    count buffer lengths, u64 each
    the JSON body (a JSON object), then the buffers, back to back

``kind`` says what the frame is (the constants below), ``id`` which call or request it belongs to; the JSON body
is a message's content, with values encoded by the codec, whose bytes and arrays travel as the raw buffers.

A lane is as hostile as a socket: `LaneReader` checks every length against its caps before it allocates
anything (at most `MAX_BUFFERS` buffers, and the whole frame, JSON and buffers together, within
``max_message_bytes`` plus `JSON_ALLOWANCE`, so that a value of ``max_message_bytes`` fits), and anything
malformed raises `LaneError`, which ends that worker only. The reader and writer work on a file descriptor with
``os.read``/``os.readv``/``os.write``/``os.writev`` alone, so a confined worker uses no system call it did not
use before.

Interrupts and shutdown travel the other way on a pipe of their own (``CONTROL``), which the worker's control
thread reads while its main thread is busy: one fixed 9-byte record each (kind u8, call id u64).
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import wire

HEADER = struct.Struct("<BBHIQ")
HEADER_SIZE = HEADER.size
CONTROL = struct.Struct("<BQ")
LENGTH = 8  # bytes per buffer length
MAX_BUFFERS = 4096  # buffers in one frame
MAX_MESSAGE_BYTES = 64 << 20  # the default cap on one frame's buffers
JSON_ALLOWANCE = 1 << 20  # what a frame may hold beyond ``max_message_bytes``: a value of that size, and its JSON
# the JSON of one frame from a sandboxed worker: decoded, JSON grows up to some 25 times (``[{},{},...]``), so its
# cap, not ``max_message_bytes``, bounds what decoding a hostile frame makes the host hold (bytes and arrays travel
# as raw buffers, which do not grow)
SANDBOXED_MAX_JSON = 2 << 20
FROM_BROKER = 1 << 40  # a worker's cap on what its broker sends: the broker is trusted, the check is of the format
CHUNK = 256 * 1024  # bytes read at a time; a frame larger than this is read straight into its own block
MAX_READS = 64  # reads per `LaneReader.read`, so that one chatty worker cannot starve the others
IOV_MAX = 512  # buffers given to one writev
ENV = "WB_LANE"  # "LANE_FD,CONTROL_FD" in a worker's environment
MAX_JSON_ENV = "WB_LANE_MAX_JSON"  # the JSON a sandboxed worker's broker takes in one frame (SANDBOXED_MAX_JSON)
SPIN_ENV = "WB_LANE_SPIN_US"  # how long a lane worker polls for the next frame before it sleeps (see SPIN)
# A side that waits (the host for a reply, a lane worker for its next call) polls for this long before it sleeps.
# On a virtual machine a sleeping CPU is halted, and waking it costs an interrupt across CPUs and a trip through
# the hypervisor, tens of µs each way: most of a hot call's time on this project's VM (docs/benchmarks.md).
SPIN = 100e-6
SPIN_MISSES = 16  # waits in a row that brought a waiter something else, after which it stops spinning (Spinner)
OUTPUT_CHUNK = 256 * 1024  # characters of output per frame: within any JSON cap, however the text is escaped

# what a frame is (host -> worker: CALL, IMPORT, INSPECT, DEBUG, BROKER_REPLY; worker -> host: REPLY, STREAM, BROKER)
CALL, IMPORT, INSPECT, REPLY, STREAM, BROKER, BROKER_REPLY, DEBUG = range(1, 9)
# on the control pipe (host -> worker)
INTERRUPT, SHUTDOWN = 1, 2


class LaneError(ValueError):
    """A frame that breaks the lane's format or caps: the lane (and its worker) cannot be trusted any more."""


class LaneClosed(EOFError):
    """The other end closed the lane."""


class Frame:
    """One frame as read: its kind, id, JSON content (a dict) and buffers (memoryviews)."""

    __slots__ = ("kind", "id", "content", "buffers")

    def __init__(self, kind: int, id: int, content: dict[str, Any], buffers: list[Any]) -> None:
        self.kind = kind
        self.id = id
        self.content = content
        self.buffers = buffers

    def __repr__(self) -> str:
        return f"<lane Frame kind={self.kind} id={self.id}>"


def encode(
    kind: int, id: int, content: dict[str, Any], buffers: Sequence[Any] = (), max_json: int | None = None
) -> list[Any]:
    """The parts of one frame, for `LaneWriter.send`. Raises TypeError/ValueError if ``content`` is not JSON, or
    its JSON is over ``max_json`` bytes (what the broker of a sandboxed worker takes)."""
    body = wire.dumps(content)
    if max_json is not None and len(body) > max_json:
        raise ValueError(
            f"its JSON is {len(body)} bytes, over the {max_json} a sandboxed worker may send in one message"
            " (bytes, bytearrays and numpy arrays travel beside the JSON, up to max_message_bytes)"
        )
    if not buffers:
        return [HEADER.pack(kind, 0, 0, len(body), id) + body]
    views = [_view(b) for b in buffers]
    if len(views) > MAX_BUFFERS:
        raise ValueError(f"a message carries at most {MAX_BUFFERS} buffers, not {len(views)}")
    lengths = struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    return [HEADER.pack(kind, 0, len(views), len(body), id) + lengths + body, *views]


def size(parts: Sequence[Any]) -> int:
    return sum(len(p) if type(p) is bytes else p.nbytes for p in parts)


def _view(buffer: Any) -> memoryview:
    view = buffer if type(buffer) is memoryview else memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class LaneReader:
    """Reads frames from a non-blocking descriptor, checking every length against the caps first."""

    def __init__(self, fd: int, max_message_bytes: int = MAX_MESSAGE_BYTES, max_json: int | None = None) -> None:
        self.fd = fd
        self.max_message_bytes = max_message_bytes
        self.max_frame = max_message_bytes + JSON_ALLOWANCE
        self.max_json = self.max_frame if max_json is None else max_json
        self._buf = bytearray()
        # every read lands here first: os.read(fd, CHUNK) would allocate (mmap) a fresh CHUNK-sized bytes object
        # and then shrink and free it, three system calls and a page fault on every small frame
        self._scratch = bytearray(CHUNK)
        self._scratch_view = memoryview(self._scratch)
        self._block: bytearray | None = None  # a large frame's body, read into place
        self._got = 0
        self._pending: tuple[int, int, int, list[int]] | None = None  # kind, id, json length, buffer lengths
        self._limit = 0  # frames per `read` (0: no limit)

    def read(self, max_frames: int = 0) -> list[Frame]:
        """The frames that are complete now (perhaps none). Raises `LaneClosed` at the end of the stream and
        `LaneError` for a malformed frame. What it returns holds at most one frame larger than `CHUNK`, so that
        what one worker makes the host hold stays within ``max_message_bytes`` and a chunk; and, with
        ``max_frames``, at most that many frames: the rest wait, read already, for the next call (`buffered`)."""
        if not self._buf and self._block is None and self._pending is None:
            fast = self._read_one()  # the common case: nothing left over, one small frame waiting, read whole
            if fast is not None:
                return fast
        frames: list[Frame] = []
        self._limit = max_frames
        if self._buf and self._block is None:
            self._parse(frames)  # frames left from the last read come first
            if self._full(frames):
                return frames
        for _ in range(MAX_READS):
            block = self._block
            try:
                if block is not None:
                    n = os.readv(self.fd, [memoryview(block)[self._got :]])
                    if n == 0:
                        raise LaneClosed("the lane was closed in the middle of a frame")
                    self._got += n
                    if self._got == len(block):
                        self._block = None
                        frames.append(self._frame(block))
                        return frames  # one large frame at a time: the caller lets go of it before the next
                    continue
                data = self._scratch_view[: os.readv(self.fd, (self._scratch,))]
            except (BlockingIOError, InterruptedError):
                return frames
            except ConnectionResetError:  # closed with our data unread
                raise LaneClosed("the lane was closed") from None
            if not data:
                raise LaneClosed("the lane was closed" + (" in the middle of a frame" if self._buf else ""))
            self._buf += data
            self._parse(frames)
            if self._full(frames):
                return frames
            if len(data) < CHUNK and self._block is None:
                return frames  # the stream is drained (a short read); no need to ask again
        return frames

    def _read_one(self) -> list[Frame] | None:
        """One read; the frame if it is exactly one frame without buffers, else None with what was read kept
        in ``_buf`` for the general path. The same checks as `_parse` and `_frame`, in fewer steps."""
        try:
            data = self._scratch_view[: os.readv(self.fd, (self._scratch,))]
        except (BlockingIOError, InterruptedError):
            return []
        except ConnectionResetError:  # closed with our data unread
            raise LaneClosed("the lane was closed") from None
        if not data:
            raise LaneClosed("the lane was closed")
        if len(data) >= HEADER_SIZE:
            kind, zero, count, json_length, id = HEADER.unpack_from(data)
            if not count and len(data) == HEADER_SIZE + json_length and not zero and kind:
                if json_length > self.max_json:  # the caps of `_parse`, though one read holds at most CHUNK
                    raise LaneError(f"a lane frame's JSON of {json_length} bytes is over the cap of {self.max_json}")
                if json_length > self.max_frame:
                    raise LaneError(f"a lane frame of {json_length} bytes is over the cap of {self.max_frame}")
                try:
                    content = wire.loads(data[HEADER_SIZE:])
                except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
                    raise LaneError(f"a lane frame's body is not JSON: {exc}") from None
                if type(content) is not dict:
                    raise LaneError("a lane frame's body must be a JSON object")
                return [Frame(kind, id, content, [])]
        self._buf += data
        return None

    @property
    def buffered(self) -> bool:
        """Whether bytes already read wait to be parsed (`read` stopped at ``max_frames``)."""
        return bool(self._buf) and self._block is None

    def _full(self, frames: list[Frame]) -> bool:
        return 0 < self._limit <= len(frames)

    def _parse(self, frames: list[Frame]) -> None:
        buf = self._buf
        while not self._full(frames):
            if self._pending is None:
                if len(buf) < HEADER.size:
                    return
                kind, zero, count, json_length, id = HEADER.unpack_from(buf)
                if zero or not kind:
                    raise LaneError("a lane frame's header is malformed")
                if count > MAX_BUFFERS:
                    raise LaneError(f"a lane frame announces {count} buffers (at most {MAX_BUFFERS})")
                if json_length > self.max_json:
                    raise LaneError(f"a lane frame's JSON of {json_length} bytes is over the cap of {self.max_json}")
                start = HEADER.size + LENGTH * count
                if len(buf) < start:
                    return
                lengths = list(struct.unpack_from(f"<{count}Q", buf, HEADER.size)) if count else []
                total = json_length + sum(lengths)
                if total > self.max_frame:
                    raise LaneError(f"a lane frame of {total} bytes is over the cap of {self.max_frame}")
                del buf[:start]
                self._pending = (kind, id, json_length, lengths)
            kind, id, json_length, lengths = self._pending
            total = json_length + sum(lengths)
            if len(buf) >= total:
                body = bytes(buf[:total])
                del buf[:total]
                frames.append(self._frame(body))
                continue
            if total > CHUNK:  # read the rest straight into a block of its own (its size is within the cap)
                block = bytearray(total)
                block[: len(buf)] = buf
                self._got = len(buf)
                buf.clear()
                self._block = block
            return

    def _frame(self, body: Any) -> Frame:
        assert self._pending is not None
        kind, id, json_length, lengths = self._pending
        self._pending = None
        view = memoryview(body)
        try:
            content = wire.loads(body if not lengths and type(body) is bytes else bytes(view[:json_length]))
        except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
            raise LaneError(f"a lane frame's body is not JSON: {exc}") from None
        if type(content) is not dict:
            raise LaneError("a lane frame's body must be a JSON object")
        buffers = []
        at = json_length
        for length in lengths:
            buffers.append(view[at : at + length])
            at += length
        return Frame(kind, id, content, buffers)


class LaneWriter:
    """Writes frames to a descriptor. What the descriptor cannot take now waits in order (`pending`) until
    `flush`: the broker's end is non-blocking, and its pump flushes when the descriptor turns writable.

    ``queued`` counts the bytes that wait, so that the broker can bound what it holds toward a worker; a frame
    sent with ``on_written`` has it called once its last byte has left (or the lane has closed)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: deque[Any] = deque()
        self.queued = 0  # bytes waiting to be written
        self._written = 0  # bytes written so far, for the marks
        self._marks: deque[tuple[int, Callable[[], None]]] = deque()  # (end of a frame in bytes, on_written)

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def send(self, parts: Sequence[Any], on_written: Callable[[], None] | None = None) -> bool:
        """Queue one frame's parts and write what the descriptor takes; True if all of it has left."""
        if not self._queue and len(parts) == 1 and type(parts[0]) is bytes:
            try:
                done = self._send_one(parts[0])  # the common case: one small frame, nothing waiting before it
            except LaneClosed:
                if on_written is not None:
                    on_written()  # as `discard` does for what waits: the lane has closed
                raise
            if on_written is not None:
                if done:
                    on_written()
                else:
                    self._marks.append((self._written + self.queued, on_written))
            return done
        self._queue.extend(parts)
        self.queued += size(parts)
        if on_written is not None:
            self._marks.append((self._written + self.queued, on_written))
        return self.flush()

    def _send_one(self, part: bytes) -> bool:
        try:
            written = os.write(self.fd, part)
        except (BlockingIOError, InterruptedError):
            written = 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.discard()
            raise LaneClosed(f"the lane was closed: {exc}") from None
        self._written += written  # nothing waited: every earlier frame's mark has been called
        if written == len(part):
            return True
        self._queue.append(memoryview(part)[written:])
        self.queued += len(part) - written
        return False

    def flush(self) -> bool:
        """Write what waits; True if nothing is left. Raises `LaneClosed` if the other end has gone."""
        queue = self._queue
        while queue:
            batch = [queue[i] for i in range(min(len(queue), IOV_MAX))]
            try:
                written = os.writev(self.fd, batch)
            except (BlockingIOError, InterruptedError):
                return False
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.discard()
                raise LaneClosed(f"the lane was closed: {exc}") from None
            self.queued -= written
            self._written += written
            while queue:
                part = queue[0]
                n = len(part) if type(part) is bytes else part.nbytes
                if written >= n:  # an empty buffer too: writev never makes progress on one
                    queue.popleft()
                    written -= n
                else:
                    if written:
                        queue[0] = memoryview(part)[written:] if type(part) is bytes else part[written:]
                    break
            marks = self._marks
            while marks and marks[0][0] <= self._written:
                marks.popleft()[1]()
        return True

    def discard(self) -> None:
        """Drop what waits (the lane has closed): every frame's ``on_written`` is called."""
        self._queue.clear()
        self.queued = 0
        marks, self._marks = self._marks, deque()
        for _, on_written in marks:
            on_written()


class Spinner:
    """Polls for up to ``seconds`` before a wait sleeps (see SPIN), while that pays.

    `spin` polls without waiting, again and again, yielding the CPU between polls to any thread or process that
    is ready to run, and returns what it found; if nothing came, the caller sleeps and then calls `woke`. A wait
    that took more than twice ``seconds`` would not have been saved by spinning: the next wait sleeps at once
    (polling would only take CPU from the others, the worse on a busy machine), until a wait is short again.

    A waiter that can tell whether a wait was worth it says so: `hit` (the broker's pump: the turn ended a call)
    or `miss`. After SPIN_MISSES misses in a row it stops spinning until a hit. Else a worker that writes a small
    frame every 100 µs, which the host drops, would keep the host's waiting thread polling all the time.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.paying = True
        self.misses = 0
        self._start = 0.0

    def spin(self, poll: Callable[[int], list[Any]]) -> list[Any]:
        self._start = start = time.perf_counter()
        if not self.seconds or not self.paying or self.misses >= SPIN_MISSES:
            return []
        events = poll(0)
        until = start + self.seconds
        while not events and time.perf_counter() < until:
            os.sched_yield()
            events = poll(0)
        return events

    def woke(self) -> None:
        """After a sleep that `spin` did not spare: was it short enough for spinning to pay next time?"""
        if self.seconds:
            self.paying = time.perf_counter() - self._start <= 2 * self.seconds

    def hit(self) -> None:
        self.misses = 0

    def miss(self) -> None:
        self.misses += 1


def control_record(kind: int, call_id: int = 0) -> bytes:
    return CONTROL.pack(kind, call_id)


def lane_fds(value: str | None) -> tuple[int, int] | None:
    """The (lane, control) descriptors named by a worker's ``WB_LANE`` variable, or None."""
    if not value:
        return None
    lane, _, control = value.partition(",")
    try:
        return int(lane), int(control)
    except ValueError:
        return None
