"""Raw pyzmq speaking the Jupyter wire format by hand: the floor for any design that keeps the protocol.

Each message is ``<IDS|MSG>``, an HMAC-SHA256 signature and four JSON frames (header with a date, parent header,
metadata, content), as the messaging spec has it; the server checks the signature and answers in kind. No
jupyter_client and no wb-magic, and written as lean as Python allows: pyzmq's Cython socket methods with plain
int flags, OpenSSL's HMAC object, orjson, a header built from a template. Beside `zmq_json`'s one frame, it shows
what the protocol's extra frames, JSON and signing cost on their own.
"""

from __future__ import annotations

import hmac
import os
import sys
import time
from itertools import count
from typing import Any

import orjson
import zmq
from zmq.backend import Socket as RawSocket

from ..harness import Server, announce
from ..work import FUNCTIONS
from . import Peer

DELIMITER = b"<IDS|MSG>"
SNDMORE = int(zmq.SNDMORE)
_send = RawSocket.send
_recv = RawSocket.recv


class Wire:
    """Just enough of the wire format: build signed frames, check and parse them."""

    def __init__(self, key: bytes) -> None:
        self.mac = hmac.new(key, digestmod="sha256")
        session = os.urandom(8).hex()
        self.prefix = session.encode() + b"_"
        self.template = b'{"msg_id":"%s%d","msg_type":"%s","date":"%s","session":"' + session.encode()
        self.template += b'","username":"bench","version":"5.3"}'
        self.ids = count()

    def frames(self, msg_type: bytes, content: dict[str, Any], parent: bytes = b"{}") -> list[bytes]:
        now = time.time()
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%06dZ" % (now % 1 * 1e6)
        parts = [self.template % (self.prefix, next(self.ids), msg_type, date), parent, b"{}", orjson.dumps(content)]
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        return [DELIMITER, mac.hexdigest().encode(), *parts]

    def parse(self, frames: list[bytes]) -> tuple[list[bytes], bytes, dict[str, Any]]:
        """Routing ids, the raw header (a reply's parent) and the content of a signed message."""
        at = frames.index(DELIMITER)
        signature, header, parent, metadata, content = frames[at + 1 : at + 6]
        mac = self.mac.copy()
        for part in (header, parent, metadata, content):
            mac.update(part)
        if not hmac.compare_digest(signature, mac.hexdigest().encode()):
            raise ValueError("bad signature")
        orjson.loads(header)  # a receiver reads the header (msg_type, msg_id) and the parent's msg_id
        orjson.loads(parent)
        return frames[:at], header, orjson.loads(content)


def send(sock: zmq.Socket, frames: list[bytes]) -> None:
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, SNDMORE if i < last else 0)


def recv(sock: zmq.Socket) -> list[bytes]:
    frames = []
    while True:
        frame = _recv(sock, 0, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


class ZmqJupyter(Peer):
    name = "pyzmq_jupyter"
    label = "raw pyzmq, Jupyter wire by hand"
    requires = ("zmq", "orjson")

    def start(self) -> None:
        key = os.urandom(32).hex()
        self.wire = Wire(key.encode())
        self.server = Server(__name__, key)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(f"tcp://127.0.0.1:{self.server.address['port']}")

    def call(self, name: str = "World") -> Any:
        send(self.socket, self.wire.frames(b"call_request", {"function": "hello", "args": [name], "kwargs": {}}))
        _, _, content = self.wire.parse(recv(self.socket))
        return content["value"]

    def close(self) -> None:
        if hasattr(self, "socket"):
            self.socket.close(linger=0)
            self.context.term()
        if hasattr(self, "server"):
            self.server.close()


def serve(key: str) -> None:
    wire = Wire(key.encode())
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    announce(port=port)
    while True:
        idents, header, content = wire.parse(recv(sock))
        value = FUNCTIONS[content["function"]](*content["args"], **content["kwargs"])
        send(sock, [*idents, *wire.frames(b"call_reply", {"status": "ok", "value": value}, header)])


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
