"""wb-magic's messages, whichever way they travel (the lane or the Jupyter channels), and the checks of what a
worker sends: one place for their fields, shared by the broker's links and by its sync and async paths.

Contents are plain dicts (JSON objects), so a new field (trace context, say) is one more key: readers ignore
keys they do not know.
"""

from __future__ import annotations

import math
from typing import Any

from . import lane
from .wire import WB_BROKER, WB_CALL, WB_DEBUG, WB_IMPORT, WB_INSPECT

__all__ = ["WB_BROKER", "WB_CALL", "WB_DEBUG", "WB_IMPORT", "WB_INSPECT"]

# the lane frame kind of each request the broker sends
LANE_KIND = {WB_CALL: lane.CALL, WB_IMPORT: lane.IMPORT, WB_INSPECT: lane.INSPECT, WB_DEBUG: lane.DEBUG}

# what of a callee's reply is passed on to the worker that called it
RELAYED = ("status", "value", "ename", "emodule", "evalue", "eargs", "traceback", "wb_exception")
MAX_FUNCTIONS = 10_000  # functions kept from a module's description


def call(
    module: str,
    cache_buster: str | None,
    function: str,
    args: Any,
    kwargs: Any,
    segregation_id: str | None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A call's content (``args`` and ``kwargs`` already encoded by the codec)."""
    return {
        "module": module,
        "cache_buster": cache_buster,
        "function": function,
        "args": args,
        "kwargs": kwargs,
        "segregation_id": segregation_id,
        "source": source,
    }


def module_request(module: str, cache_buster: str | None) -> dict[str, Any]:
    """An import's or an inspection's content."""
    return {"module": module, "cache_buster": cache_buster}


def error(exc_fields: dict[str, Any]) -> dict[str, Any]:
    return {"status": "error", **exc_fields}


class Reply:
    """A worker's reply to a call: its content and its buffers (what `_outcome` decodes)."""

    __slots__ = ("content", "buffers")

    def __init__(self, content: dict[str, Any], buffers: list[Any]) -> None:
        self.content = content
        self.buffers = buffers


def output_count(content: dict[str, Any]) -> int | None:
    """How many stream messages a reply says its call produced; None if it says nothing sensible."""
    expected = content.get("outputs", 0)
    return expected if type(expected) is int else None


def stream(content: dict[str, Any]) -> tuple[str, str] | None:
    """A stream message's (name, text), or None if it is not one we show (text only, never HTML)."""
    text, name = content.get("text"), content.get("name")
    if not isinstance(text, str):
        return None
    return ("stderr" if name == "stderr" else "stdout"), text


class BrokerRequest:
    """A worker's request to call another worker, checked. ``parent`` is the id of the call it was made in (if
    it was made in one); ``reply_to`` is what the link needs to address the answer."""

    __slots__ = ("target", "segregation_id", "function", "timeout", "source_module", "args", "kwargs", "buffers",
                 "parent", "reply_to", "trace")  # fmt: skip

    def __init__(self, content: dict[str, Any], buffers: list[Any], parent: Any, reply_to: Any) -> None:
        self.parent = parent
        self.reply_to = reply_to
        self.buffers = buffers
        self.target = content.get("target")
        self.function = content.get("function")
        self.segregation_id = content.get("segregation_id")
        self.timeout = content.get("timeout")
        self.source_module = content.get("source_module")
        self.args = content.get("args", [])
        self.kwargs = content.get("kwargs", {})
        self.trace = content.get("trace")  # the caller's trace context, if it is traced

    def check(self) -> None:
        """Raise TypeError for a request that is not well formed."""
        if not isinstance(self.target, str) or not isinstance(self.function, str):
            raise TypeError("a worker-to-worker call needs a target and a function name")
        timeout = self.timeout
        if timeout is not None and (type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0):
            raise TypeError(f"timeout must be a positive number of seconds, not {timeout!r}")


def clean_description(content: dict[str, Any]) -> dict[str, Any]:
    """Keep only well-formed entries of a worker's module description: it is not trusted."""
    functions = {}
    raw = content.get("functions")
    for name, info in list(raw.items())[:MAX_FUNCTIONS] if isinstance(raw, dict) else ():
        if isinstance(name, str) and name.isidentifier() and isinstance(info, dict):
            functions[name] = {
                "signature": str(info.get("signature", ""))[:10_000],
                "doc": str(info.get("doc", ""))[:100_000],
                "is_async": bool(info.get("is_async", False)),
            }
    return {"name": str(content.get("name", "")), "functions": functions}
