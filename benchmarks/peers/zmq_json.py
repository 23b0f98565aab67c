"""Raw pyzmq, JSON-encoded requests: a DEALER talking to a ROUTER server. The floor for any ZeroMQ design.

The server answers ``{"fn": name, "args": [...]}`` with ``{"value": ...}``, and echoes the frames of an
``{"fn": "frames"}`` request back as they came (the large-payload benchmark).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import zmq

from ..harness import Server, announce
from ..work import FUNCTIONS
from . import Peer


class ZmqJson(Peer):
    name = "pyzmq"
    label = "raw pyzmq + JSON"
    requires = ("zmq",)
    pipelines = True

    def __init__(self, servers: int = 1) -> None:
        self.count = servers
        self.servers: list[Server] = []

    def start(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        for _ in range(self.count):
            server = Server(__name__)
            self.servers.append(server)
            self.socket.connect(f"tcp://127.0.0.1:{server.address['port']}")

    def call(self, name: str = "World") -> Any:
        self.socket.send(json.dumps({"fn": "hello", "args": [name]}).encode())
        return json.loads(self.socket.recv())["value"]

    def pipelined(self, n: int) -> None:
        """n requests in flight at once; a DEALER spreads them over the servers in turn."""
        send, recv = self.socket.send, self.socket.recv
        for _ in range(n):
            send(json.dumps({"fn": "hello", "args": ["World"]}).encode())
        for _ in range(n):
            json.loads(recv())

    def frames(self, payload: Any) -> Any:
        """Send one large frame and get it back, without a copy on either side: a memoryview of the reply."""
        self.socket.send_multipart([b'{"fn":"frames"}', payload], copy=False)
        reply = self.socket.recv_multipart(copy=False)
        return reply[1].buffer

    def close(self) -> None:
        if hasattr(self, "socket"):
            self.socket.close(linger=0)
            self.context.term()
        for server in self.servers:
            server.close()


def serve() -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    announce(port=port)
    while True:
        ident, request, *rest = sock.recv_multipart(copy=False)
        message = json.loads(request.bytes)
        if message["fn"] == "frames":
            sock.send_multipart([ident, b"{}", *rest], copy=False)
        else:
            value = FUNCTIONS[message["fn"]](*message["args"])
            sock.send_multipart([ident, json.dumps({"value": value}).encode()])


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve()
