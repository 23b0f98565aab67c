"""ipyparallel: a local cluster of one engine (or two), ``apply_sync`` on a direct view."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from ..work import hello
from . import Peer


class IPyParallel(Peer):
    name = "ipyparallel"
    label = "ipyparallel apply_sync"
    requires = ("ipyparallel",)

    def __init__(self, servers: int = 1) -> None:
        self.count = servers

    def start(self) -> None:
        import ipyparallel

        self.home = tempfile.mkdtemp(prefix="wb-bench-ipython-")  # profile and security files, removed at close
        self.saved = os.environ.get("IPYTHONDIR")
        os.environ["IPYTHONDIR"] = self.home
        self.cluster = ipyparallel.Cluster(n=self.count, log_level=40)
        self.client = self.cluster.start_and_connect_sync(activate=False)
        self.client.wait_for_engines(self.count, timeout=120)
        self.view = self.client[0]
        self.view.apply_sync(hello, "warm")

    def call(self, name: str = "World") -> Any:
        return self.view.apply_sync(hello, name)

    def close(self) -> None:
        try:
            if hasattr(self, "client"):
                self.client.close()
            if hasattr(self, "cluster"):
                self.cluster.stop_cluster_sync()
        finally:
            if self.saved is None:
                os.environ.pop("IPYTHONDIR", None)
            else:
                os.environ["IPYTHONDIR"] = self.saved
            shutil.rmtree(self.home, ignore_errors=True)
