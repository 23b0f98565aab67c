"""The exceptions wb-magic raises. They are defined in `worker_kernel.errors` (code inside workers meets them
too) and re-exported here for the host::

    WorkerBrokerError              root of everything wb-magic raises on its own account
    ├── RemoteError                the worker raised an exception of a type that is not a Python built-in
    ├── NoSuchFunction             the module has no such exported function (also an `AttributeError`)
    ├── WorkerDied                 the worker process ended (or was removed) while a call was pending
    ├── WorkerStartError           a worker could not be launched
    └── CallTimeout                the call took longer than its timeout (also a `TimeoutError`)

Built-in exception types raised in a worker arrive as themselves (``ValueError``, ``PermissionError``, ...),
with ``remote_traceback`` set. A value the codec cannot carry fails the call with `TypeError`.
"""

from __future__ import annotations

from worker_kernel.errors import (
    CallTimeout,
    NoSuchFunction,
    RemoteError,
    WorkerBrokerError,
    WorkerDied,
    WorkerStartError,
)

__all__ = ["CallTimeout", "NoSuchFunction", "RemoteError", "WorkerBrokerError", "WorkerDied", "WorkerStartError"]
