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
from collections.abc import Sequence
from datetime import datetime, timezone
from hashlib import sha256
from itertools import count
from typing import Any

PROTOCOL_VERSION = "5.3"
DELIMITER = b"<IDS|MSG>"

# Custom shell messages (broker -> worker) and the stdin message (worker -> broker).
WB_CALL = "wb_call_request"
WB_IMPORT = "wb_import_request"
WB_INSPECT = "wb_inspect_request"
WB_BROKER = "wb_broker_request"


class WireError(ValueError):
    """Frames that are not a well-formed, correctly signed Jupyter message."""


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)
_encode = _encoder.encode
_decode = json.JSONDecoder().decode


def reply_type(msg_type: str) -> str:
    """``foo_request`` -> ``foo_reply``."""
    return msg_type[: -len("_request")] + "_reply" if msg_type.endswith("_request") else msg_type + "_reply"


class Message:
    """A parsed message. ``content`` is a dict; ``buffers`` are memoryviews or bytes."""

    __slots__ = ("idents", "header", "parent_header", "metadata", "content", "buffers")

    def __init__(
        self,
        idents: list[bytes],
        header: dict[str, Any],
        parent_header: dict[str, Any],
        metadata: dict[str, Any],
        content: dict[str, Any],
        buffers: list[Any],
    ) -> None:
        self.idents = idents
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
        self._mac = hmac.new(key, digestmod=sha256) if key else None
        self._counter = count(1)

    # -- building --------------------------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"{self.session_id}_{next(self._counter)}"

    def header(self, msg_type: str, msg_id: str | None = None) -> dict[str, Any]:
        return {
            "msg_id": msg_id or self.new_id(),
            "msg_type": msg_type,
            "session": self.session_id,
            "username": self.username,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        }

    def sign(self, parts: Sequence[bytes]) -> bytes:
        if self._mac is None:
            return b""
        mac = self._mac.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def serialize(
        self,
        header: dict[str, Any],
        content: dict[str, Any],
        *,
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        idents: Sequence[bytes] = (),
    ) -> list[Any]:
        """The frames of one message, ready for ``send_multipart``."""
        parts = [
            _encode(header).encode(),
            _encode(parent or {}).encode(),
            _encode(metadata or {}).encode(),
            _encode(content).encode(),
        ]
        return [*idents, DELIMITER, self.sign(parts), *parts, *buffers]

    def message(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        idents: Sequence[bytes] = (),
        msg_id: str | None = None,
    ) -> tuple[str, list[Any]]:
        """Build a new message: returns its id and its frames."""
        header = self.header(msg_type, msg_id)
        frames = self.serialize(header, content, parent=parent, metadata=metadata, buffers=buffers, idents=idents)
        return header["msg_id"], frames

    # -- parsing ---------------------------------------------------------------------------------------------

    def parse(self, frames: Sequence[Any]) -> Message:
        """Check the signature and parse. Raises `WireError` for anything malformed or unsigned.

        ``frames`` may be bytes or `zmq.Frame`s; buffers keep the zero-copy view when frames are given.
        """
        idents: list[bytes] = []
        for frame in frames[:16]:
            part = _as_bytes(frame)
            if part == DELIMITER:
                break
            idents.append(part)
        else:
            raise WireError("no <IDS|MSG> delimiter in the first 16 frames")
        at = len(idents)
        if len(frames) < at + 6:
            raise WireError(f"a message needs 6 frames after the routing ids, got {len(frames) - at}")
        raw = [_as_bytes(f) for f in frames[at + 1 : at + 6]]
        signature, parts = raw[0], raw[1:]
        if self._mac is not None and not hmac.compare_digest(signature, self.sign(parts)):
            raise WireError("bad message signature")
        try:
            header, parent, metadata, content = (_decode(p.decode()) for p in parts)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise WireError(f"a message part is not JSON: {exc}") from None
        if not (isinstance(header, dict) and isinstance(parent, dict) and isinstance(content, dict)):
            raise WireError("header, parent header and content must be JSON objects")
        if not isinstance(metadata, dict):
            metadata = {}
        buffers = [f if isinstance(f, bytes) else f.buffer for f in frames[at + 6 :]]
        return Message(idents, header, parent, metadata, content, buffers)


def _as_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes
