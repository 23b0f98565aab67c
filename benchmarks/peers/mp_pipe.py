"""multiprocessing.Pipe to a child process (pickle over a Unix socket pair): the floor for any design."""

from __future__ import annotations

import multiprocessing
from typing import Any

from ..work import FUNCTIONS
from . import Peer


def _child(conn: Any) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        fn, args = message
        conn.send(FUNCTIONS[fn](*args))


class MPPipe(Peer):
    name = "mp_pipe"
    label = "multiprocessing.Pipe"
    pipelines = True

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_child, args=(theirs,), daemon=True)
        self.process.start()
        theirs.close()

    def call(self, name: str = "World") -> Any:
        self.conn.send(("hello", (name,)))
        return self.conn.recv()

    def pipelined(self, n: int) -> None:
        send, recv = self.conn.send, self.conn.recv
        for _ in range(n):
            send(("hello", ("World",)))
        for _ in range(n):
            recv()

    def close(self) -> None:
        if not hasattr(self, "process"):
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
