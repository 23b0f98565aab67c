"""The worker's logger, without importing `logging` when a worker starts.

`logging` (and the traceback, tokenize and linecache modules behind it) costs a new worker some 7 ms, and a
healthy worker logs nothing. Debug and info records are dropped while nobody has imported `logging`: unconfigured,
it would drop them too (its default level is WARNING). Anything louder imports it and goes through as usual.
"""

from __future__ import annotations

import sys
from typing import Any

_QUIET = frozenset({"debug", "info", "isEnabledFor"})


class LazyLogger:
    """Stands for ``logging.getLogger(name)``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        if attr in _QUIET and "logging" not in sys.modules:
            return _nothing
        import logging

        return getattr(logging.getLogger(self.name), attr)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None
