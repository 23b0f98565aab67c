"""wb-magic itself, as one of the peers: a sync module proxy of benchmarks/modules/target.py."""

from __future__ import annotations

import asyncio
from typing import Any

from ..harness import MODULES, new_broker
from . import Peer


class WBMagic(Peer):
    name = "wb_magic"
    label = "wb-magic sync proxy"
    requires = ("wb_magic",)
    pipelines = True

    lane = True

    def __init__(self, servers: int = 1) -> None:
        self.count = servers

    def start(self) -> None:
        self.broker = new_broker(call_timeout=120, lane=self.lane)
        target = str(MODULES / "target.py")
        self.proxy = self.broker.worker_proxy(target)
        self.hello = self.proxy.hello
        # pipelined calls go to `servers` workers: segregated workers of the same module
        self.async_hellos = [
            self.broker.worker_proxy((target, f"p{i}") if i else target, asynchronous=True).hello
            for i in range(self.count)
        ]
        self.loop = asyncio.new_event_loop()
        self.hello("warm")
        self.pipelined(2 * self.count)

    def call(self, name: str = "World") -> Any:
        return self.hello(name)

    def pipelined(self, n: int) -> None:
        hellos = self.async_hellos

        async def batch() -> None:
            await asyncio.gather(*(hellos[i % len(hellos)]("World") for i in range(n)))

        self.loop.run_until_complete(batch())

    def worker_pid(self) -> int:
        worker = self.broker.worker_for(str(MODULES / "target.py"))
        assert worker is not None and worker.pid is not None
        return worker.pid

    def close(self) -> None:
        if hasattr(self, "loop"):
            self.loop.close()
        if hasattr(self, "broker"):
            self.broker.close()


class WBMagicJupyter(WBMagic):
    """wb-magic with its workers on the Jupyter channels (``WorkerSpec(lane=False)``), beside the lane."""

    name = "wb_magic_jupyter"
    label = "wb-magic sync proxy, lane=False"
    lane = False
