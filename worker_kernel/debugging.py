"""A worker's debug switch, as the seed's ``enableDebugging`` is a switch of each realm.

``enable_debugging(True)`` logs what this worker does (the ``worker_kernel`` logger at DEBUG: calls received,
results sent, modules loaded) to its stderr, which reaches the host as the worker's output;
``enable_debugging(fn)`` hands each record's text to ``fn`` instead; ``enable_debugging(False)`` stops. Module
code or a hook may call it; the host turns it on with ``broker.enable_worker_debugging(target)``, and workers
launched while the host's own debugging is on (`wb_magic.enable_debugging`) start with it on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

on = False  # read on the hot path before anything is logged: a worker pays one global lookup a call when off
_handler: Any = None


def enable_debugging(enable: bool | Callable[..., Any] = True) -> None:
    """Turn this worker's debug log on (to stderr, or to ``enable`` if it is a function) or off."""
    global on, _handler
    import logging

    logger = logging.getLogger("worker_kernel")
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler = None
    if enable is False or enable is None:
        on = False
        logger.setLevel(logging.NOTSET)
        return
    _handler = handler_for(enable) if callable(enable) else logging.StreamHandler(_Stderr())
    _handler.setFormatter(logging.Formatter("worker %(process)d %(name)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG)
    on = True


class _Stderr:
    """Whatever ``sys.stderr`` is when a record is written (the worker's stream to the host)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _to_function_handler() -> type:
    import logging

    class ToFunction(logging.Handler):
        def __init__(self, fn: Callable[..., Any]) -> None:
            super().__init__()
            self.fn = fn

        def emit(self, record: logging.LogRecord) -> None:
            try:
                self.fn(self.format(record))
            except Exception:
                self.handleError(record)

    return ToFunction


def handler_for(fn: Callable[..., Any]) -> Any:
    """A `logging.Handler` that hands each record's text to ``fn``, as the seed's ``enableDebugging(fn)`` does
    (the host's `wb_magic.debug` uses it too). Its class is made when first needed: logging is imported lazily."""
    return _to_function_handler()(fn)
