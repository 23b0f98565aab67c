"""RPyC: a ThreadedServer with a service exposing the work, on loopback."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..harness import Server, announce
from . import Peer


class RPyC(Peer):
    name = "rpyc"
    label = "RPyC"
    requires = ("rpyc",)

    def start(self) -> None:
        import rpyc

        self.server = Server(__name__)
        # the server announces its port before it listens (rpyc binds in __init__, listens in start())
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn = rpyc.connect("127.0.0.1", self.server.address["port"])
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.hello = self.conn.root.hello  # a netref to the remote method: each call is one round trip

    def call(self, name: str = "World") -> Any:
        return self.hello(name)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()
        if hasattr(self, "server"):
            self.server.close()


def serve() -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    from ..work import echo, hello

    class WorkService(rpyc.Service):
        exposed_hello = staticmethod(hello)
        exposed_echo = staticmethod(echo)

    server = ThreadedServer(WorkService, hostname="127.0.0.1", port=0)
    announce(port=server.listener.getsockname()[1])
    server.start()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve()
