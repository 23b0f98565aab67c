"""Debug logging, as the seed's debug module: ``enable_debugging(True | False | fn)``, or ``enable()`` / ``disable()``.

Everything goes through the standard `logging` module, under the ``wb_magic`` logger (the host) and the
``worker_kernel`` logger (workers started after `enable` log to the host's stderr too; a running worker's switch
is ``broker.enable_worker_debugging(target)``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from worker_kernel.debugging import handler_for

_handler: logging.Handler | None = None


def enable_debugging(enable: bool | Callable[[str], Any] = True) -> None:
    """The seed's ``enableDebugging``: ``True`` logs what the broker does to stderr, a function gets each log
    line instead (``enable_debugging(print)``), ``False`` stops. Workers started while it is on log too."""
    if enable is False or enable is None:
        disable()
    else:
        enable_to(enable if callable(enable) else None)


def enable(level: int = logging.DEBUG) -> None:
    """Log what the broker does to stderr, and have workers started from now on do the same."""
    enable_to(None, level)


def enable_to(fn: Callable[[str], Any] | None, level: int = logging.DEBUG) -> None:
    """Log what the broker does to ``fn`` (each line's text), or to stderr if it is None."""
    global _handler
    logger = logging.getLogger("wb_magic")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = _CurrentStderr() if fn is None else handler_for(fn)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(level)
    os.environ["WB_DEBUG"] = "1"


def disable() -> None:
    global _handler
    logger = logging.getLogger("wb_magic")
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler = None
    logger.setLevel(logging.NOTSET)
    os.environ.pop("WB_DEBUG", None)


def enabled() -> bool:
    return _handler is not None


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (in a notebook: the cell that is running)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass
