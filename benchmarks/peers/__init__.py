"""The peers: other ways to call a function in another Python process, each doing the same work.

Every peer is a small class with ``start()``, ``call()`` (one ``hello("World")`` round trip), ``close()``
and, where the peer can keep several calls in flight, ``pipelined(n)``. A peer whose package is not installed
is reported as skipped, never as a failure.
"""

from __future__ import annotations

import importlib.util
from typing import Any


class Peer:
    name = ""
    label = ""
    requires: tuple[str, ...] = ()
    pipelines = False  # has pipelined(n)

    @classmethod
    def missing(cls) -> str | None:
        """Why this peer cannot run here, or None."""
        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install -e '.[bench]')"
        return None

    def start(self) -> None:
        raise NotImplementedError

    def call(self) -> Any:
        raise NotImplementedError

    def pipelined(self, n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Peer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def all_peers() -> list[type[Peer]]:
    """The peers of the hot-call comparison, the floor first."""
    from .ipykernel_peer import IPyKernel
    from .ipyparallel_peer import IPyParallel
    from .mp_pipe import MPPipe
    from .process_pool import ProcessPool
    from .pyro_peer import Pyro
    from .rpyc_peer import RPyC
    from .wb import WBMagic, WBMagicJupyter
    from .zmq_json import ZmqJson
    from .zmq_jupyter import ZmqJupyter

    return [ZmqJson, ZmqJupyter, MPPipe, WBMagic, WBMagicJupyter, ProcessPool, RPyC, Pyro, IPyKernel, IPyParallel]
