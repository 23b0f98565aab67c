"""What the broker accepts of the spans a worker sends back with a traced call's reply.

A worker's spans are its word, and the broker does not trust its workers: they are checked like any other value
from a worker before they reach the host's tracer provider. A reply's spans are capped in count and every field
in size; ids must be well-formed, unique and belong to the trace and the call they came with (a worker cannot
add spans to another trace, nor hang them anywhere but under the span the broker gave it); attributes are
plain values under names a worker may set. The attributes the broker vouches for (which worker, its pid, its
segregation id, the caller it stamped) are removed from what the worker sent and set by the broker
(`wb_magic.telemetry`). Nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_SPANS = 128  # spans accepted from one reply
MAX_NAME = 128  # characters of a span's name
MAX_ATTRIBUTES = 16  # attributes of one span
MAX_VALUE = 256  # characters of an attribute's value
MAX_MESSAGE = 1024  # characters of an exception's message
MAX_STACK = 8192  # characters of an exception's traceback
KINDS = ("server", "client", "internal")
RESERVED = ("wb_magic.", "process.", "service.", "telemetry.", "otel.")  # set by the broker, or by no one

_ID = re.compile(r"[0-9a-f]{16}\Z")
_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}\Z")
_MAX_INT = 1 << 63


@dataclass
class WorkerSpan:
    """One span of a worker, checked. Ids are ints, as OpenTelemetry's SDK keeps them."""

    name: str
    kind: str
    span_id: int
    parent_id: int
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None


def accept(raw: Any, parent_id: int) -> tuple[list[WorkerSpan], int]:
    """The well-formed spans of a reply's ``spans`` and how many were refused or left out. ``parent_id`` is the
    span the broker made the parent of the call: every accepted span descends from it, through one SERVER span."""
    if not isinstance(raw, list):
        return [], 0 if raw is None else 1
    refused = max(0, len(raw) - MAX_SPANS - 1)
    checked: dict[int, WorkerSpan] = {}
    for item in raw[: MAX_SPANS + 1]:
        if isinstance(item, dict) and set(item) == {"dropped"}:  # the worker's own count of what it left out
            dropped = item["dropped"]
            refused += dropped if type(dropped) is int and 0 < dropped < _MAX_INT else 1
            continue
        span = _check(item)
        if span is None or span.span_id in checked or span.span_id == parent_id or len(checked) >= MAX_SPANS:
            refused += 1
            continue
        checked[span.span_id] = span
    server = next((s.span_id for s in checked.values() if s.parent_id == parent_id and s.kind == "server"), None)
    accepted = [span for span in checked.values() if server is not None and _descends(span, checked, server)]
    return accepted, refused + len(checked) - len(accepted)


def _descends(span: WorkerSpan, spans: dict[int, WorkerSpan], server: int) -> bool:
    """Whether ``span`` is the call's SERVER span (the first one sent under the broker's span) or hangs from it."""
    for _ in range(len(spans)):
        if span.span_id == server:
            return True
        parent = spans.get(span.parent_id)
        if parent is None:
            return False
        span = parent
    return False  # a cycle


def _check(item: Any) -> WorkerSpan | None:
    if not isinstance(item, dict):
        return None
    name, kind, span_id, parent_id = item.get("name"), item.get("kind"), item.get("span_id"), item.get("parent_id")
    start, end = item.get("start"), item.get("end")
    if not isinstance(name, str) or not name or kind not in KINDS:
        return None
    if not isinstance(span_id, str) or not isinstance(parent_id, str):
        return None
    if not _ID.match(span_id) or not _ID.match(parent_id) or int(span_id, 16) == 0:
        return None
    if type(start) is not int or type(end) is not int or not 0 < start <= end < _MAX_INT:
        return None
    attributes = _attributes(item.get("attributes"))
    if attributes is None:
        return None
    error = None
    if item.get("status") == "error":
        error = _error(item.get("error"))
    return WorkerSpan(name[:MAX_NAME], kind, int(span_id, 16), int(parent_id, 16), start, end, attributes, error)


def _attributes(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_ATTRIBUTES:
        return None
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _KEY.match(key) or key.startswith(RESERVED):
            continue
        if type(value) is str:
            clean[key] = value[:MAX_VALUE]
        elif type(value) is bool or (type(value) is int and -_MAX_INT <= value < _MAX_INT):
            clean[key] = value
        elif type(value) is float and math.isfinite(value):
            clean[key] = value
    return clean


def _error(raw: Any) -> dict[str, str]:
    raw = raw if isinstance(raw, dict) else {}

    def text(key: str, limit: int) -> str:
        value = raw.get(key)
        return value[:limit] if isinstance(value, str) else ""

    return {
        "type": text("type", MAX_NAME) or "Exception",
        "message": text("message", MAX_MESSAGE),
        "stacktrace": text("stacktrace", MAX_STACK),
    }
