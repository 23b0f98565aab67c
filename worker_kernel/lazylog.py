"""The worker's logger, without importing `logging` when a worker starts.

`logging` (and the traceback, tokenize and linecache modules behind it) costs a new worker some 7 ms, and a
healthy worker logs nothing. Debug and info records are dropped while nobody has imported `logging`: unconfigured,
it would drop them too (its default level is WARNING). Anything louder imports it and goes through as usual.

Imported late, ``logging`` may be a target module's own ``logging.py`` (its folder comes first on ``sys.path``,
as when Python runs a script): then records go to stderr as plain lines, and a log call never raises.
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
        logger = _standard_logger(self.name)
        if logger is None:
            return _nothing if attr in _QUIET else _Plain(self.name)
        return getattr(logger, attr)


def _standard_logger(name: str) -> Any:
    try:
        import logging

        return logging.getLogger(name) if callable(getattr(logging, "Logger", None)) else None
    except Exception:
        return None


class _Plain:
    """A record written to the real stderr, when the ``logging`` module is not the standard library's."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        try:
            text = str(msg) % args if args else str(msg)
            if kwargs.get("exc_info") or sys.exc_info()[0] is not None:
                text += f" ({sys.exc_info()[1]!r})"
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"{self.name}: {text}\n")
        except Exception:
            pass


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None
