"""Debug logging, as the seed's debug module: ``wb_magic.debug.enable()`` / ``disable()``.

Everything goes through the standard `logging` module, under the ``wb_magic`` logger (the host) and the
``worker_kernel`` logger (workers started after `enable` log to the host's stderr too).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_handler: logging.Handler | None = None


def enable(level: int = logging.DEBUG) -> None:
    """Log what the broker does to stderr, and have workers started from now on do the same."""
    global _handler
    logger = logging.getLogger("wb_magic")
    if _handler is None:
        _handler = _CurrentStderr()
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
