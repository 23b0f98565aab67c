"""A hostile worker: a fake kernel that binds the ports of its connection file and misbehaves on request.

``python hostile_kernel.py -f CONNECTION_FILE``. It holds the connection's key (every worker holds its own), so
what it sends may be well signed or not, as each behaviour chooses. The function named in a ``wb_call_request``
picks the behaviour; ``echo`` is an honest answer. It speaks only as much of the protocol as the broker needs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import zmq

from worker_kernel.codec import decode_value, encode_value
from worker_kernel.wire import DELIMITER, Session

BEHAVIOURS = (
    "echo", "garbage_then_echo", "double_reply", "forge", "flood_output", "orphan_output", "huge_reply",
    "pose_as", "route", "emit", "bad_outputs",
)  # fmt: skip


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


class Hostile:
    def __init__(self, connection: dict[str, Any]) -> None:
        self.session = Session(str(connection["key"]).encode(), username="hostile")
        self.context = zmq.Context()
        address = f"tcp://{connection['ip']}:"
        self.shell = self.context.socket(zmq.ROUTER)
        self.stdin = self.context.socket(zmq.ROUTER)
        self.control = self.context.socket(zmq.ROUTER)
        self.iopub = self.context.socket(zmq.XPUB)
        self.hb = self.context.socket(zmq.REP)
        for sock, channel in ((self.shell, "shell"), (self.stdin, "stdin"), (self.control, "control"),
                              (self.iopub, "iopub"), (self.hb, "hb")):  # fmt: skip
            sock.bind(address + str(connection[f"{channel}_port"]))
        self.broker_identity: bytes | None = None
        self.stdin_peers: set[bytes] = set()
        self.answers: dict[str, Any] = {}
        self.counter = 0

    # -- building messages, signed or not ----------------------------------------------------------------------

    def frames(
        self, msg_type: str, content: Any, parent: Any = None, idents: list[bytes] = (),  # type: ignore[assignment]
        buffers: list[bytes] = (), sign: bool = True, msg_id: str | None = None,  # type: ignore[assignment]
    ) -> list[bytes]:  # fmt: skip
        self.counter += 1
        header = {"msg_id": msg_id or f"hostile_{self.counter}", "msg_type": msg_type, "session": "hostile",
                  "username": "hostile", "date": "2024-01-01T00:00:00Z", "version": "5.3"}  # fmt: skip
        parts = [dumps(header), dumps(parent or {}), b"{}", dumps(content)]
        signature = self.session.sign(parts) if sign else b"0" * 64
        return [*idents, DELIMITER, signature, *parts, *buffers]

    def reply(self, request: Any, content: dict[str, Any], buffers: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.shell.send_multipart(self.frames("wb_call_reply", content, request.header, request.idents, buffers))

    def value_reply(self, request: Any, value: Any, outputs: int = 0) -> None:
        buffers: list[Any] = []
        encoded = encode_value(value, buffers, "the result")
        self.reply(request, {"status": "ok", "value": encoded, "outputs": outputs}, buffers)

    def stream(self, parent: Any, text: str, name: str = "stdout") -> None:
        self.iopub.send_multipart(self.frames("stream", {"name": name, "text": text}, parent))

    # -- serving ----------------------------------------------------------------------------------------------

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.shell, self.stdin, self.control, self.iopub, self.hb):
            poller.register(sock, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                if sock is self.hb:
                    self.hb.send(self.hb.recv())
                elif sock is self.iopub:
                    self.iopub.recv()  # subscriptions
                elif sock is self.control:
                    frames = self.control.recv_multipart()
                    msg = self.session.parse(frames)
                    if msg.msg_type == "shutdown_request":
                        self.control.send_multipart(self.frames("shutdown_reply", {"status": "ok"}, msg.header,
                                                                msg.idents))  # fmt: skip
                        os._exit(0)
                elif sock is self.stdin:
                    self.read_stdin()
                elif self.shell.poll(0):
                    self.handle(self.session.parse(self.shell.recv_multipart()))

    def read_stdin(self) -> None:
        # not blocking: the serve loop's poll result can be stale once broker_call has read stdin itself
        try:
            frames = self.stdin.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        msg = self.session.parse(frames)
        if msg.msg_type == "wb_stdin_hello":
            self.stdin_peers.add(msg.idents[0])
        else:
            self.answers[msg.parent_id] = msg

    def handle(self, msg: Any) -> None:
        self.broker_identity = msg.idents[0]
        if msg.msg_type == "wb_inspect_request":
            functions = {name: {"signature": "(*args)", "doc": "", "is_async": False} for name in BEHAVIOURS}
            self.reply(msg, {"status": "ok", "name": "hostile", "functions": functions})
            return
        if msg.msg_type != "wb_call_request":
            self.reply(msg, {"status": "ok"})
            return
        function = msg.content["function"]
        args = decode_value(msg.content.get("args", []), msg.buffers)
        getattr(self, "do_" + function)(msg, *args)

    # -- behaviours -------------------------------------------------------------------------------------------

    def do_echo(self, msg: Any, value: Any) -> None:
        self.value_reply(msg, value)

    def do_garbage_then_echo(self, msg: Any, value: Any) -> None:
        """Every malformed kind of message first, on every channel, then the honest reply."""
        good = self.frames("wb_call_reply", {"status": "ok", "value": "forged"}, msg.header, msg.idents)
        garbage = [
            [*msg.idents, b"no delimiter at all"],
            [*msg.idents, *[b"ident"] * 20, DELIMITER, *good[-5:]],  # too many routing ids
            [*msg.idents, DELIMITER, b"short"],
            self.frames("wb_call_reply", {"status": "ok", "value": "unsigned"}, msg.header, msg.idents, sign=False),
            [*good[:-5], b"bad signature", *good[-4:]],
            [*msg.idents, DELIMITER, self.session.sign([b"x", b"{}", b"{}", b"{}"]), b"x", b"{}", b"{}", b"{}"],
            [*msg.idents, DELIMITER, self.session.sign([b"[]", b"{}", b"{}", b"{}"]), b"[]", b"{}", b"{}", b"{}"],
            [
                *msg.idents,
                DELIMITER,
                self.session.sign([b"\xff", b"{}", b"{}", b"{}"]),
                b"\xff",
                b"{}",
                b"{}",
                b"{}",
            ],  # fmt: skip
            [
                *msg.idents,
                DELIMITER,
                self.session.sign([b"[" * 100000, b"{}", b"{}", b"{}"]),
                b"[" * 100000,
                b"{}",
                b"{}",
                b"{}",
            ],  # fmt: skip
        ]
        for frames in garbage:
            self.shell.send_multipart(frames)
            self.iopub.send_multipart(frames[len(msg.idents) :])
            self.stdin.send_multipart(frames)
        self.value_reply(msg, value)

    def do_double_reply(self, msg: Any, value: Any) -> None:
        """The honest reply, then more replies to the same call, and replies to calls that do not exist."""
        self.value_reply(msg, value)
        for i in range(3):
            self.value_reply(msg, "again")
            parent = {**msg.header, "msg_id": f"no_such_call_{i}"}
            self.shell.send_multipart(self.frames("wb_call_reply", {"status": "ok", "value": "stray"}, parent,
                                                  msg.idents))  # fmt: skip

    def do_forge(self, msg: Any, call_id: str, value: Any) -> None:
        """A well-signed reply (with this worker's key: the only one it has) to another worker's call."""
        parent = {"msg_id": call_id, "msg_type": "wb_call_request", "session": call_id.rpartition("_")[0]}
        self.shell.send_multipart(self.frames("wb_call_reply", {"status": "ok", "value": value}, parent,
                                              msg.idents))  # fmt: skip
        self.stream(parent, "forged output\n")
        self.value_reply(msg, "forged")

    def do_flood_output(self, msg: Any, count: int, size: int) -> None:
        line = "x" * (size - 1) + "\n"
        for _ in range(count):
            self.stream(msg.header, line)
        self.value_reply(msg, count, outputs=count)

    def do_orphan_output(self, msg: Any, count: int) -> None:
        for i in range(count):
            self.stream({"msg_id": f"nobody_{i}"}, f"orphan {i}\n")
        self.value_reply(msg, count)

    def do_huge_reply(self, msg: Any, size: int) -> None:
        self.value_reply(msg, b"\0" * size)

    def do_bad_outputs(self, msg: Any, outputs: Any) -> None:
        self.reply(msg, {"status": "ok", "value": "claimed", "outputs": outputs})

    def do_pose_as(self, msg: Any, target: str, function: str, module: str, segregation_id: Any) -> None:
        """Call another worker while claiming to be ``module`` (in segregation ``segregation_id``)."""
        content = {"target": target, "function": function, "args": [], "kwargs": {}, "timeout": 30,
                   "source_module": module, "source_segregation_id": segregation_id,
                   "source": {"module": module, "segregation_id": segregation_id}}  # fmt: skip
        self.value_reply(msg, self.broker_call(msg, content))

    def do_route(self, msg: Any, content: dict[str, Any], wait: bool) -> None:
        """Any wb_broker_request, and its answer (if it comes within 30 s)."""
        self.value_reply(msg, self.broker_call(msg, content, wait))

    def do_emit(self, msg: Any, channel: str, frames: list[bytes], sign: bool, parts: Any) -> None:
        """For the fuzz: raw frames, or a message built of fuzzed parts, on one channel; then the echo."""
        if parts is not None:
            msg_type, parent, content, buffers = parts
            if parent == "$current":
                parent = msg.header
            frames = self.frames(msg_type, content, parent, [], buffers, sign=sign)
        sock = {"shell": self.shell, "stdin": self.stdin, "iopub": self.iopub}[channel]
        if channel in ("shell", "stdin"):
            frames = [*msg.idents, *frames]
        try:
            sock.send_multipart(frames)
        except (zmq.ZMQError, IndexError):
            pass  # a ROUTER with no route for an empty frame list, or pyzmq refusing to send no frames at all
        self.value_reply(msg, "echo")

    def broker_call(self, msg: Any, content: dict[str, Any], wait: bool = True) -> Any:
        frames = self.frames("wb_broker_request", content, msg.header, msg.idents)
        request_id = json.loads(frames[len(msg.idents) + 2])["msg_id"]
        deadline = time.monotonic() + 30
        while msg.idents[0] not in self.stdin_peers:  # the broker's stdin hello says it can be routed to
            if not self.stdin.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                return "no stdin"
            self.read_stdin()
        self.stdin.send_multipart(frames)
        if not wait:
            return None
        while request_id not in self.answers:
            if not self.stdin.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                return "no answer"
            self.read_stdin()
        answer = self.answers.pop(request_id).content
        if answer.get("status") == "ok":
            return decode_value(answer.get("value"), [])
        return {"error": answer.get("ename"), "message": answer.get("evalue")}


def main() -> None:
    connection_file = sys.argv[sys.argv.index("-f") + 1]
    with open(connection_file, encoding="utf-8") as f:
        connection = json.load(f)
    Hostile(connection).serve()


if __name__ == "__main__":
    main()
