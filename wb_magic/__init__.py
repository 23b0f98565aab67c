"""wb-magic: run untrusted Python modules in isolated worker kernels that call each other with low latency.

``%load_ext wb_magic`` brings the IPython magics.
"""

from __future__ import annotations

from typing import Any

from worker_kernel.codec import register_marshaller
from worker_kernel.permissions import Permissions

from .broker import WorkerBroker
from .cleaner import WorkerCleaner, WorkerEvent
from .debug import enable_debugging
from .errors import CallTimeout, NoSuchFunction, RemoteError, WorkerBrokerError, WorkerDied, WorkerStartError
from .launcher import WorkerSpec
from .worker import WorkerInfo

__version__ = "0.1.0"


def get_broker() -> WorkerBroker:
    """The broker of this IPython session (one per process), started on first use and closed at exit."""
    from .magics import get_broker as session_broker

    return session_broker()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext wb_magic``: the ``%wb_*`` magics and the display of remote tracebacks."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "CallTimeout",
    "NoSuchFunction",
    "Permissions",
    "RemoteError",
    "WorkerBroker",
    "WorkerBrokerError",
    "WorkerCleaner",
    "WorkerDied",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerSpec",
    "WorkerStartError",
    "enable_debugging",
    "get_broker",
    "register_marshaller",
]
