"""The worker side of wb-magic: a lightweight Jupyter kernel that runs one untrusted module's functions.

Imported by every worker at start-up, so it imports only pyzmq and the standard library, and little of that.
Code inside a worker uses `broker_proxy` and `current_call`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CallTimeout, RemoteError, WorkerBrokerError, WorkerDied
from .worker import broker_proxy, current_call

__all__ = ["CallTimeout", "RemoteError", "WorkerBrokerError", "WorkerDied", "broker_proxy", "current_call"]
