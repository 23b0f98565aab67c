"""Raw pyzmq speaking the Jupyter wire format by hand: the floor for any design that keeps the protocol.

Each message is ``<IDS|MSG>``, an HMAC-SHA256 signature and four JSON frames (header with a date, parent header,
metadata, content), as the messaging spec has it; the server checks the signature and answers in kind. No
jupyter_client, no wb-magic: what the protocol's extra frames, JSON and signing cost over `zmq_json`'s one
frame.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from datetime import datetime, timezone
from hashlib import sha256
from itertools import count
from typing import Any

import zmq

from ..harness import Server, announce
from ..work import FUNCTIONS
from . import Peer

DELIMITER = b"<IDS|MSG>"


class Wire:
    """Just enough of the wire format: build signed frames, check and parse them."""

    def __init__(self, key: bytes) -> None:
        self.mac = hmac.new(key, digestmod=sha256)
        self.session = os.urandom(8).hex()
        self.ids = count()

    def frames(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None = None) -> list[bytes]:
        header = {
            "msg_id": f"{self.session}_{next(self.ids)}",
            "msg_type": msg_type,
            "session": self.session,
            "username": "bench",
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        parts = [json.dumps(p).encode() for p in (header, parent or {}, {}, content)]
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        return [DELIMITER, mac.hexdigest().encode(), *parts]

    def parse(self, frames: list[bytes]) -> tuple[list[bytes], dict[str, Any], dict[str, Any]]:
        """Routing ids, header and content of a signed message."""
        at = frames.index(DELIMITER)
        signature, parts = frames[at + 1], frames[at + 2 : at + 6]
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        if not hmac.compare_digest(signature, mac.hexdigest().encode()):
            raise ValueError("bad signature")
        return frames[:at], json.loads(parts[0]), json.loads(parts[3])


class ZmqJupyter(Peer):
    name = "pyzmq_jupyter"
    label = "raw pyzmq, Jupyter wire by hand"
    requires = ("zmq",)

    def start(self) -> None:
        key = os.urandom(32).hex()
        self.wire = Wire(key.encode())
        self.server = Server(__name__, key)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(f"tcp://127.0.0.1:{self.server.address['port']}")

    def call(self, name: str = "World") -> Any:
        request = {"function": "hello", "args": [name], "kwargs": {}}
        self.socket.send_multipart(self.wire.frames("call_request", request))
        _, _, content = self.wire.parse(self.socket.recv_multipart())
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
        idents, header, content = wire.parse(sock.recv_multipart())
        value = FUNCTIONS[content["function"]](*content["args"], **content["kwargs"])
        sock.send_multipart([*idents, *wire.frames("call_reply", {"status": "ok", "value": value}, header)])


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
