"""The public names: other code depends on them, so a change here is a change of the API."""

from __future__ import annotations

import wb_magic
import worker_kernel


def test_wb_magic_exports():
    assert wb_magic.__all__ == [
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
        "get_broker",
        "register_marshaller",
    ]
    assert all(hasattr(wb_magic, name) for name in wb_magic.__all__)


def test_worker_kernel_exports():
    assert sorted(worker_kernel.__all__) == worker_kernel.__all__
    assert all(getattr(worker_kernel, name) is not None for name in worker_kernel.__all__)
    assert {"broker_proxy", "current_call"} <= set(worker_kernel.__all__)


def test_errors_keep_their_builtin_meaning():
    assert issubclass(wb_magic.CallTimeout, TimeoutError)
    assert issubclass(wb_magic.NoSuchFunction, AttributeError)
    for name in ("RemoteError", "WorkerDied", "WorkerStartError", "CallTimeout", "NoSuchFunction"):
        assert issubclass(getattr(wb_magic, name), wb_magic.WorkerBrokerError)
