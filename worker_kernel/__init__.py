"""The worker side of wb-magic: a lightweight Jupyter kernel that runs one untrusted module's functions.

Imported by every worker at start-up, so it imports only pyzmq and the standard library, and little of that.
Code inside a worker uses `broker_proxy`, `current_call` and `enable_debugging`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from .errors import CallTimeout, RemoteError, WorkerBrokerError, WorkerDied

__all__ = [
    "CallTimeout",
    "RemoteError",
    "WorkerBrokerError",
    "WorkerDied",
    "broker_proxy",
    "current_call",
    "enable_debugging",
]


def __getattr__(name: str) -> Any:
    # the API for code inside workers is imported when that code asks for it, not at every worker's start
    if name in ("broker_proxy", "current_call"):
        from . import worker

        return getattr(worker, name)
    if name == "enable_debugging":
        from .debugging import enable_debugging

        return enable_debugging
    raise AttributeError(f"module 'worker_kernel' has no attribute {name!r}")
