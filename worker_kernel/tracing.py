"""The worker's span recorder: spans of a traced call, recorded with the standard library alone.

A worker imports this module only when a call arrives carrying a W3C trace context (``traceparent``, and
``tracestate``), so an untraced worker pays nothing for it and imports nothing of OpenTelemetry, ever: the worker
has no exporter of its own (a sandboxed one has no network). It records its spans as plain data, with ids of its
own and their parents, and sends them back with the call's reply; the broker checks them (they are a worker's
word) and hands them to the host's tracer provider, which exports them with the host's spans as one trace.

Span names and attributes follow OpenTelemetry's RPC semantic conventions (v1.37.0): ``rpc.system`` is
``"wb_magic"``, ``rpc.service`` the module's name, ``rpc.method`` the function's name; a span is named
``service/method``.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from .loader import module_name_for

MAX_SPANS = 128  # spans one call records; the rest are counted, not kept (the broker caps what it accepts too)
MAX_TEXT = 1024  # characters kept of an exception message
MAX_STACK = 8192  # characters kept of an exception's traceback

Span = dict[str, Any]


def parse_traceparent(value: Any) -> tuple[str, str, int] | None:
    """``(trace_id, parent_span_id, flags)`` of a W3C ``traceparent`` header (version 00), or None if it is not
    one (https://www.w3.org/TR/trace-context/#traceparent-header)."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:]
    if value[2] != "-" or value[35] != "-" or value[52] != "-" or version != "00":
        return None
    try:
        if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
            return None
        flag_bits = int(flags, 16)
    except ValueError:
        return None
    if trace_id != trace_id.lower() or span_id != span_id.lower() or flags != flags.lower():
        return None
    return trace_id, span_id, flag_bits


def new_span_id() -> str:
    while True:
        span_id = os.urandom(8).hex()
        if span_id != "0000000000000000":
            return span_id


def rpc_attributes(module: str, function: str) -> dict[str, Any]:
    return {"rpc.system": "wb_magic", "rpc.service": module_name_for(module), "rpc.method": function}


class Recorder:
    """The spans of one traced call in this worker: its SERVER span and what happens inside it (the module's
    import, the hooks, calls to other workers). ``current`` is the span new spans are children of."""

    def __init__(self, trace_id: str, parent_id: str, flags: int, tracestate: str | None) -> None:
        self.trace_id = trace_id
        self.flags = flags
        self.tracestate = tracestate
        self.spans: list[Span] = []
        self.dropped = 0
        self.current = parent_id
        self.server: Span | None = None

    def start(self, name: str, kind: str, attributes: dict[str, Any]) -> Span:
        span = {
            "name": name,
            "kind": kind,
            "span_id": new_span_id(),
            "parent_id": self.current,
            "start": time.time_ns(),
            "end": None,
            "attributes": attributes,
            "status": "unset",
        }
        return span

    def end(self, span: Span, error: BaseException | None = None) -> None:
        span["end"] = time.time_ns()
        if error is not None:
            span["status"] = "error"
            span["error"] = _error(error)
        if len(self.spans) < MAX_SPANS:
            self.spans.append(span)
        else:
            self.dropped += 1

    def run(self, name: str, kind: str, attributes: dict[str, Any], action: Callable[..., Any], *args: Any) -> Any:
        """Run ``action(*args)`` in a span of its own (a child of the current one)."""
        span = self.start(name, kind, attributes)
        outer, self.current = self.current, span["span_id"]
        try:
            result = action(*args)
        except BaseException as exc:
            self.end(span, exc)
            raise
        finally:
            self.current = outer
        self.end(span)
        return result

    def client(self, request: dict[str, Any]) -> Span:
        """Begin the CLIENT span of a call to another worker, and put its context in the ``wb_broker_request``."""
        module, function = str(request.get("target", "")), str(request.get("function", ""))
        span = self.start(f"{module_name_for(module)}/{function}", "client", rpc_attributes(module, function))
        request["trace"] = self.carrier(span)
        return span

    def carrier(self, span: Span) -> dict[str, str]:
        """The W3C headers that make ``span`` the parent of what the receiver does."""
        carrier = {"traceparent": f"00-{self.trace_id}-{span['span_id']}-{self.flags:02x}"}
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        return carrier

    def finish(self, error: BaseException | None = None) -> list[Span]:
        """End the SERVER span; every span recorded, for the reply."""
        if self.server is not None and self.server["end"] is None:
            self.end(self.server, error)
        if self.dropped:
            self.spans.append({"dropped": self.dropped})
        spans, self.spans = self.spans, []
        return spans


def server(trace: Any, name: str, attributes: dict[str, Any]) -> Recorder | None:
    """A recorder whose SERVER span has begun, for a request that carries ``trace`` ({traceparent,
    tracestate}); None when it carries none, or one that is not sampled."""
    if not isinstance(trace, dict):
        return None
    parsed = parse_traceparent(trace.get("traceparent"))
    if parsed is None or not parsed[2] & 1:
        return None
    state = trace.get("tracestate")
    recorder = Recorder(*parsed, state if isinstance(state, str) and len(state) <= 512 else None)
    recorder.server = recorder.start(name, "server", attributes)
    recorder.current = recorder.server["span_id"]
    return recorder


def server_for(msg_type: str, content: dict[str, Any]) -> Recorder | None:
    """The recorder of a ``wb_call_request``, ``wb_import_request`` or ``wb_inspect_request`` that carries a trace
    context, its SERVER span begun: ``module/function`` for a call, ``import module`` or ``inspect module``."""
    module = str(content.get("module", ""))
    service = module_name_for(module)
    if msg_type == "wb_call_request":
        function = str(content.get("function", ""))
        return server(content.get("trace"), f"{service}/{function}", rpc_attributes(module, function))
    what = "import" if msg_type == "wb_import_request" else "inspect"
    return server(content.get("trace"), f"{what} {service}", rpc_attributes(module, f"<{what}>"))


def load(recorder: Recorder, runner: Any, module: str, cache_buster: Any) -> Any:
    """``runner.module(...)`` with a span when it imports (or re-imports) the module, not when it has it."""
    loaded = runner.modules.get(module)
    if loaded is not None and (not cache_buster or loaded[1] == cache_buster):
        return loaded[0]
    name = "reload" if loaded is not None or cache_buster else "import"
    attributes = {"rpc.system": "wb_magic", "rpc.service": module_name_for(module)}
    return recorder.run(
        f"{name} {module_name_for(module)}", "internal", attributes, runner.module, module, cache_buster
    )


def _error(exc: BaseException) -> dict[str, str]:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)[:MAX_TEXT]
    except Exception:
        message = ""
    stack = "".join(traceback.format_exception(kind, exc, exc.__traceback__))[-MAX_STACK:]
    return {"type": name, "message": message, "stacktrace": stack}
