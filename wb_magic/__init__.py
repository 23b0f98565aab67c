"""wb-magic: run untrusted Python modules in isolated worker kernels that call each other with low latency.

``%load_ext wb_magic`` brings the IPython magics.
"""

from __future__ import annotations

from worker_kernel.codec import register_marshaller

from .broker import WorkerBroker
from .cleaner import WorkerCleaner, WorkerEvent
from .errors import CallTimeout, RemoteError, WorkerBrokerError, WorkerDied, WorkerStartError
from .launcher import WorkerSpec
from .worker import WorkerInfo

__version__ = "0.1.0"

__all__ = [
    "CallTimeout",
    "RemoteError",
    "WorkerBroker",
    "WorkerBrokerError",
    "WorkerCleaner",
    "WorkerDied",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerSpec",
    "WorkerStartError",
    "register_marshaller",
]
