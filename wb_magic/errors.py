"""The exceptions wb-magic raises, re-exported for the host from `worker_kernel.errors` (code inside workers
meets them too), whose docstring describes them."""

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
