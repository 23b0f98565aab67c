"""The API for code inside a worker: call other workers through the broker, and see who is calling.

::

    from worker_kernel import broker_proxy, current_call

    other = broker_proxy().worker_proxy("./other.py")   # relative to this module's file
    other.fn(1, 2)                                      # runs in other.py's worker, routed by the broker
    current_call()                                      # who called the function that is running

Targets are resolved by the broker, against the calling module's own file, and the broker stamps the true
caller on the call: a worker cannot pose as another.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .codec import encode_args
from .iopub import current_request
from .loader import split_target
from .proxy import ModuleProxy, make_function
from .runner import CallContext, current


def current_call() -> CallContext | None:
    """The call being served (its target, and the caller as the broker stamped it), or None outside a call."""
    return current.get()


class BrokerProxy:
    """The broker, as seen from inside a worker."""

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel

    def worker_proxy(self, target: Any, *, asynchronous: bool = False, timeout: float | None = None) -> ModuleProxy:
        return ModuleProxy(self, _target(target), asynchronous=asynchronous, timeout=timeout)

    def worker_fn_proxy(
        self, target: Any, name: str, *, asynchronous: bool = False, timeout: float | None = None
    ) -> Callable[..., Any]:
        return make_function(self, _target(target), name, asynchronous=asynchronous, timeout=timeout)

    # -- the Caller protocol ---------------------------------------------------------------------------------

    def _request(
        self, target: tuple[str, str | None], function: str, args: tuple, kwargs: dict, timeout: float | None
    ) -> tuple[dict[str, Any], list[Any]]:
        buffers: list[Any] = []
        context = current.get()
        encoded_args, encoded_kwargs = encode_args(list(args), kwargs, buffers)
        content = {
            "target": target[0],
            "segregation_id": target[1],
            "function": function,
            "args": encoded_args,
            "kwargs": encoded_kwargs,
            "timeout": timeout,
            "source_module": context.module if context is not None else None,
        }
        return content, buffers

    def invoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        content, buffers = self._request(target, function, args, kwargs, timeout)
        request = current_request.get()
        if request is None or request.trace is None:
            return self._kernel.broker_request(content, buffers, None)
        span = request.trace.client(content)  # a CLIENT span, its context in the request
        try:
            value = self._kernel.broker_request(content, buffers, None)
        except BaseException as exc:
            request.trace.end(span, exc)
            raise
        request.trace.end(span)
        return value

    async def ainvoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        content, buffers = self._request(target, function, args, kwargs, timeout)
        request = current_request.get()
        if request is None or request.trace is None:
            return await self._kernel.abroker_request(content, buffers, None)
        span = request.trace.client(content)
        try:
            value = await self._kernel.abroker_request(content, buffers, None)
        except BaseException as exc:
            request.trace.end(span, exc)
            raise
        request.trace.end(span)
        return value

    def describe(self, target: Any, timeout: float | None = None) -> None:
        return None

    def module_name(self, target: Any) -> str:
        return os.path.splitext(os.path.basename(str(target[0])))[0]


def _target(target: Any) -> tuple[str, str | None]:
    spec, segregation_id = split_target(target)  # resolved by the broker, against the calling module's file
    return os.fspath(spec), segregation_id


def broker_proxy() -> BrokerProxy:
    """The broker of the worker this code runs in. Raises `RuntimeError` outside a worker."""
    from . import kernel

    if kernel.running is None:
        raise RuntimeError("broker_proxy() works only inside a wb-magic worker")
    return BrokerProxy(kernel.running)
