"""concurrent.futures.ProcessPoolExecutor: submit and wait for the result."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Any

from ..work import hello
from . import Peer


class ProcessPool(Peer):
    name = "process_pool"
    label = "ProcessPoolExecutor"
    pipelines = True

    def __init__(self, servers: int = 1) -> None:
        self.count = servers

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"))
        # start every worker process now, not on the first measured call
        list(self.pool.map(hello, ["warm"] * (4 * self.count)))

    def call(self, name: str = "World") -> Any:
        return self.pool.submit(hello, name).result()

    def pipelined(self, n: int) -> None:
        futures = [self.pool.submit(hello, "World") for _ in range(n)]
        for future in futures:
            future.result()

    def close(self) -> None:
        if hasattr(self, "pool"):
            self.pool.shutdown(wait=True, cancel_futures=True)
