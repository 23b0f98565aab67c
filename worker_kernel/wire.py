"""The Jupyter wire format, and the message types wb-magic adds to it.

A message on a ZeroMQ socket is a list of frames::

    [routing ids..., b"<IDS|MSG>", signature, header, parent_header, metadata, content, buffers...]

``signature`` is the hex HMAC-SHA256 of the four JSON frames (messaging spec 5.x, "The Wire Protocol").
Buffers are raw frames after the content: that is how large binary values travel without a copy into JSON.

This module holds no logic beyond building, signing and parsing frames; the worker kernel and the broker
both use it. It is on the hot path of every call, so it avoids what `jupyter_client.Session` spends time on:
no date parsing, no deep copies, one HMAC over the frames.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Callable, Sequence
from itertools import count
from typing import Any

import zmq
from zmq.backend import Socket as _RawSocket

PROTOCOL_VERSION = "5.3"
DELIMITER = b"<IDS|MSG>"

# Custom shell messages (broker -> worker) and the stdin message (worker -> broker).
WB_CALL = "wb_call_request"
WB_IMPORT = "wb_import_request"
WB_INSPECT = "wb_inspect_request"
WB_DEBUG = "wb_debug_request"
WB_BROKER = "wb_broker_request"


class WireError(ValueError):
    """Frames that are not a well-formed, correctly signed Jupyter message."""


try:  # OpenSSL's HMAC object directly: copy/update/hexdigest without the Python-level wrapper of `hmac`
    from _hashlib import hmac_new as _openssl_hmac

    def _hmac_new(key: bytes) -> Any:
        return _openssl_hmac(key, digestmod="sha256")
except ImportError:  # pragma: no cover - CPython built without OpenSSL

    def _hmac_new(key: bytes) -> Any:
        return hmac.new(key, digestmod="sha256")


_stdlib_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_stdlib_decode = json.JSONDecoder().decode


def _dumps_stdlib(obj: Any) -> bytes:
    try:
        return _stdlib_encode(obj).encode()
    except UnicodeEncodeError:  # as orjson says it
        raise TypeError("str is not valid UTF-8: surrogates not allowed") from None


def _loads_stdlib(data: bytes | bytearray | memoryview) -> Any:
    return _stdlib_decode(str(data, "utf-8"))


dumps: Callable[[Any], bytes] = _dumps_stdlib
loads: Callable[[bytes | bytearray | memoryview], Any] = _loads_stdlib


def use_orjson() -> bool:
    """Switch the wire to orjson, several times faster than the standard library's json (which pyzmq imports
    anyway). The broker switches at once; a worker once it is idle, since importing orjson (and the datetime,
    uuid and dataclasses it imports) would add some 8 ms to its first call. Both encoders write plain JSON, and
    the codec keeps values within what orjson carries (finite floats, 64-bit ints). Returns whether it switched."""
    global dumps, loads
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency, but the wire works without it
        return False

    def _loads_orjson(data: bytes | bytearray | memoryview) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return _loads_stdlib(data)  # NaN and friends, from a client that allows them

    dumps = orjson.dumps
    loads = _loads_orjson
    return True


def reply_type(msg_type: str) -> str:
    """``foo_request`` -> ``foo_reply``."""
    return msg_type[: -len("_request")] + "_reply" if msg_type.endswith("_request") else msg_type + "_reply"


class Message:
    """A parsed message. ``content`` is a dict; ``buffers`` are memoryviews or bytes."""

    __slots__ = ("idents", "raw_header", "header", "parent_header", "metadata", "content", "buffers")

    def __init__(
        self,
        idents: list[bytes],
        raw_header: bytes,
        header: dict[str, Any],
        parent_header: dict[str, Any],
        metadata: dict[str, Any],
        content: dict[str, Any],
        buffers: list[Any],
    ) -> None:
        self.idents = idents
        self.raw_header = raw_header  # the header exactly as signed: a reply's parent header, with no re-encoding
        self.header = header
        self.parent_header = parent_header
        self.metadata = metadata
        self.content = content
        self.buffers = buffers

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def parent_id(self) -> str:
        return str(self.parent_header.get("msg_id", ""))

    def __repr__(self) -> str:
        return f"<Message {self.msg_type} {self.msg_id}>"


class Session:
    """Signs, builds and parses messages for one connection key.

    Message ids are ``<session>_<n>``: unique within the session and cheaper than a uuid per message.
    """

    def __init__(self, key: bytes, *, username: str = "wb-magic", session_id: str | None = None) -> None:
        self.key = key
        self.session_id = session_id or os.urandom(8).hex()
        self.username = username
        self._mac = _hmac_new(key) if key else None
        self._counter = count(1)
        self._template = (
            b'{"msg_id":"%s","msg_type":"%s","date":"%s",'
            + f'"session":"{self.session_id}","username":"{username}","version":"{PROTOCOL_VERSION}"}}'.encode()
        )

    # -- building --------------------------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"{self.session_id}_{next(self._counter)}"

    def header(self, msg_type: str, msg_id: str) -> bytes:
        """A header's JSON. Built from a template: ids and types are ours, plain ASCII with nothing to escape."""
        return self._template % (msg_id.encode(), msg_type.encode(), _utc_now())

    def sign(self, parts: Sequence[bytes]) -> bytes:
        if self._mac is None:
            return b""
        mac = self._mac.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def message(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        parent: bytes | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        idents: Sequence[bytes] = (),
        msg_id: str | None = None,
    ) -> tuple[str, list[Any]]:
        """Build a new message: returns its id and its frames, ready for `send_frames`.

        ``parent`` is the request's `Message.raw_header` (or a header dict, or None).
        """
        msg_id = msg_id or self.new_id()
        parts = [
            self.header(msg_type, msg_id),
            parent if type(parent) is bytes else dumps(parent) if parent else b"{}",
            dumps(metadata) if metadata else b"{}",
            dumps(content),
        ]
        return msg_id, [*idents, DELIMITER, self.sign(parts), *parts, *buffers]

    # -- parsing ---------------------------------------------------------------------------------------------

    def parse(self, frames: Sequence[Any]) -> Message:
        """Check the signature and parse. Raises `WireError` for anything malformed or unsigned.

        ``frames`` may be bytes or `zmq.Frame`s; buffers keep the zero-copy view when frames are given.
        """
        count = len(frames)
        if count and frames[0] == DELIMITER:  # from a DEALER: no routing ids
            at = 0
        elif count > 1 and frames[1] == DELIMITER:  # on a ROUTER: one routing id
            at = 1
        else:
            at = next((i for i, frame in enumerate(frames[:16]) if _as_bytes(frame) == DELIMITER), -1)
            if at < 0:
                raise WireError("no <IDS|MSG> delimiter in the first 16 frames")
        if count < at + 6:
            raise WireError(f"a message needs 6 frames after the routing ids, got {count - at}")
        signature, h, p, m, c = frames[at + 1 : at + 6]
        if not type(signature) is type(h) is type(p) is type(m) is type(c) is bytes:  # zmq.Frames, say
            signature, h, p, m, c = map(_as_bytes, (signature, h, p, m, c))
        if self._mac is not None:
            mac = self._mac.copy()
            mac.update(h)
            mac.update(p)
            mac.update(m)
            mac.update(c)
            if not hmac.compare_digest(signature, mac.hexdigest().encode()):
                raise WireError("bad message signature")
        try:
            header = loads(h)
            parent = loads(p) if p != b"{}" else {}
            metadata = loads(m) if m != b"{}" else {}
            content = loads(c)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise WireError(f"a message part is not JSON: {exc}") from None
        if type(header) is not dict or type(parent) is not dict or type(content) is not dict:
            raise WireError("header, parent header and content must be JSON objects")
        if type(metadata) is not dict:
            metadata = {}
        idents = [_as_bytes(f) for f in frames[:at]] if at else []
        buffers = [f if isinstance(f, bytes) else f.buffer for f in frames[at + 6 :]] if count > at + 6 else []
        return Message(idents, h, header, parent, metadata, content, buffers)


_second = -1
_second_text = b""


def _utc_now() -> bytes:
    """The time as ISO 8601 in UTC, as the spec's headers want it; the date part is formatted once a second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        _second = second
    return b"%s.%06dZ" % (_second_text, int((now - second) * 1_000_000))


def _as_bytes(frame: Any) -> bytes:
    return frame if type(frame) is bytes else frame.bytes


# -- sending and receiving ---------------------------------------------------------------------------------------
# pyzmq's send_multipart/recv_multipart spend most of their time in Python-level flag arithmetic (enum objects);
# with six or more frames a message, calling the Cython socket methods with plain ints is three times cheaper.

_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_DONTWAIT = int(zmq.DONTWAIT)
_POLLIN = int(zmq.POLLIN)
_send = _RawSocket.send
_recv = _RawSocket.recv
_get = _RawSocket.get
ZERO_COPY_BYTES = 65536  # frames at least this large are sent and received without a copy


def send_frames(sock: zmq.Socket, frames: Sequence[Any], block: bool = True) -> None:
    """Send one multipart message. With ``block=False``, raise `zmq.Again` rather than wait when the peer's
    queue is full (once the first frame is queued, ZeroMQ takes the whole message)."""
    last = len(frames) - 1
    first = 0 if block else _DONTWAIT
    for i, frame in enumerate(frames):
        flags = (_SNDMORE if i < last else 0) | first
        first = 0
        if type(frame) is bytes and len(frame) < ZERO_COPY_BYTES:
            _send(sock, frame, flags)
        else:  # large, or a buffer (memoryview, zmq.Frame, numpy): ZeroMQ keeps a reference instead of a copy
            _send(sock, frame, flags, copy=False)


def has_message(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock``. Asking also re-arms the socket's edge-triggered descriptor, which a
    send on the socket may have consumed."""
    return bool(_get(sock, _EVENTS) & _POLLIN)  # type: ignore[operator]


def recv_frames(sock: zmq.Socket, block: bool = True, *, polled: bool = False) -> list[Any] | None:
    """Receive one multipart message, or None if ``block`` is false and none is waiting.

    ``polled``: a level-triggered ``zmq_poll`` has just said that ``sock`` is readable, so ZeroMQ is not asked
    again (None all the same if it was wrong).
    The routing ids and the five message parts arrive as bytes; the buffers after them as `zmq.Frame`s, so that
    a large value is never copied on its way in.
    """
    if not block and not polled and not _get(sock, _EVENTS) & _POLLIN:  # type: ignore[operator]  # cheaper than zmq.Again
        return None
    frames: list[Any] = []
    after = -1  # message parts still to come after the delimiter; -1 until it is seen
    flags = _DONTWAIT if polled else 0  # the rest of a message is there once its first frame is
    while True:
        try:
            frame = _recv(sock, flags, copy=False)
        except zmq.Again:
            return None
        flags = 0
        if after == 0:
            frames.append(frame)  # a buffer: kept as a zmq.Frame, never copied
        else:
            part = frame.bytes
            frames.append(part)
            if after > 0:
                after -= 1
            elif part == DELIMITER:
                after = 5
        if not frame.more:
            return frames
