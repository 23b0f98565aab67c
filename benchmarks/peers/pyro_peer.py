"""Pyro5: a daemon exposing the work on loopback, called through a bound proxy."""

from __future__ import annotations

import sys
from typing import Any

from ..harness import Server, announce
from . import Peer


class Pyro(Peer):
    name = "pyro5"
    label = "Pyro5"
    requires = ("Pyro5",)

    def start(self) -> None:
        import Pyro5.api

        self.server = Server(__name__)
        self.proxy = Pyro5.api.Proxy(self.server.address["uri"])
        self.proxy._pyroBind()

    def call(self, name: str = "World") -> Any:
        return self.proxy.hello(name)

    def close(self) -> None:
        if hasattr(self, "proxy"):
            self.proxy._pyroRelease()
        if hasattr(self, "server"):
            self.server.close()


def serve() -> None:
    import Pyro5.api

    from ..work import echo, hello

    @Pyro5.api.expose
    class Work:
        def hello(self, name: str) -> str:
            return hello(name)

        def echo(self, value: Any) -> Any:
            return echo(value)

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Work, "work")
    announce(uri=str(uri))
    daemon.requestLoop()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve()
