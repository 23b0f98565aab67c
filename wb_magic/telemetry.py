"""OpenTelemetry for wb-magic: one trace across the host and every worker (``pip install wb-magic[otel]``).

::

    from wb_magic.telemetry import WorkerBrokerInstrumentor

    WorkerBrokerInstrumentor().instrument(tracer_provider=provider)   # default: the global tracer provider
    ...
    WorkerBrokerInstrumentor().uninstrument()

or with no code change, ``opentelemetry-instrument python app.py`` (the ``opentelemetry_instrumentor`` entry
point ``wb_magic``). Every call gets a CLIENT span where it is made, in the host or in a worker, and a SERVER span
in the worker that runs it; a worker-to-worker call shows the broker's routing between the two; imports and
reloads are spans, and so are the entry hooks, inside the SERVER span. The W3C trace context (``traceparent``,
``tracestate``) travels in each request, so a trace the user started (a web request, say) is the parent of all.

Workers do not export anything: each records its spans with the standard library (`worker_kernel.tracing`) and
sends them back with its reply; the broker checks them (`wb_magic.worker_spans`), sets the attributes it vouches
for, and hands them to the host's tracer provider, so the host's exporters see one trace. That needs the SDK's
tracer provider (``opentelemetry-sdk``); with another, only the host's spans are recorded.

Spans follow the RPC semantic conventions of OpenTelemetry semantic conventions v1.37.0 (the last before their
stable RPC revision): ``rpc.system`` = ``"wb_magic"``, ``rpc.service`` = the module's name, ``rpc.method`` = the
function's name, span names ``service/method``. docs/telemetry.md has the span tree and the attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker_kernel.loader import module_name_for
from worker_kernel.tracing import parse_traceparent
from worker_kernel.wire import WB_CALL, WB_IMPORT

from . import tracing
from .errors import WorkerDied
from .worker_spans import WorkerSpan, accept

__all__ = ["WorkerBrokerInstrumentor"]

SCOPE = "wb_magic"
SYSTEM = "wb_magic"
_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
_propagator = TraceContextTextMapPropagator()  # the workers speak W3C trace context, whatever the host's global is


class WorkerBrokerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every `WorkerBroker`'s calls; see the module's docstring. ``instrument(tracer_provider=...)``."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        tracing.tracer = BrokerTracer(kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        tracing.tracer = None


class BrokerTracer:
    """What the broker asks (`wb_magic.tracing.CallTracer`): a span for each request it sends."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from . import __version__

        self.provider = tracer_provider
        self.version = __version__
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._sdk: tuple[Any, Any] = (None, None)  # (provider, its SDK tracer or None), looked up once a provider

    def start(self, worker: Any, msg_type: str, content: dict[str, Any], routed: Any) -> CallTrace | None:
        content.pop("trace", None)
        module = str(content.get("module", ""))
        service = module_name_for(module)
        if msg_type == WB_CALL:
            method = str(content.get("function", ""))
            name = f"{service}/{method}"
        elif msg_type == WB_IMPORT:
            method = "<import>"
            name = f"{'reload' if content.get('cache_buster') else 'import'} {service}"
        else:
            method, name = "<inspect>", f"inspect {service}"
        attributes: dict[str, Any] = {"rpc.system": SYSTEM, "rpc.service": service, "rpc.method": method}
        if worker.segregation_id is not None:
            attributes["wb_magic.segregation_id"] = worker.segregation_id
        if worker.pid is not None:  # which process served the call, even if its own spans never come back
            attributes["wb_magic.worker.pid"] = worker.pid
        if routed is None:  # the host's own call: a CLIENT span under whatever span is current
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        else:  # the broker routes a worker's call: visible between the caller's CLIENT span and the callee
            parsed = parse_traceparent(routed.get("traceparent"))
            if parsed is None:
                return None  # the calling worker records nothing (its call was not traced)
            parent = _propagator.extract({k: v for k, v in routed.items() if k in ("traceparent", "tracestate")})
            source = content.get("source") or {}
            attributes["wb_magic.source.module"] = module_name_for(str(source.get("module", "")))
            if source.get("segregation_id") is not None:
                attributes["wb_magic.source.segregation_id"] = str(source["segregation_id"])
            span = self.tracer.start_span(f"route {name}", parent, kind=SpanKind.INTERNAL, attributes=attributes)
        context = span.get_span_context()
        if not context.trace_flags.sampled:
            span.end()
            return None
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, trace.set_span_in_context(span))
        content["trace"] = carrier
        return CallTrace(self, span, worker, content, attributes)

    def vouch(self, origin: CallTrace | None, claimed: dict[str, Any]) -> dict[str, Any]:
        """The trace context the broker accepts for a worker's request made in the call ``origin``: the
        worker's own (its CLIENT span as parent) only within that call's trace; any other trace id, a sampled
        flag the host did not set, or ``tracestate`` are the worker's inventions, and the call's own span is the
        parent instead. A request outside any traced call is not traced (a worker cannot start a trace)."""
        if origin is None:
            return {}
        context = origin.span.get_span_context()
        parsed = parse_traceparent(claimed.get("traceparent"))
        if parsed is not None and parsed[0] == format(context.trace_id, "032x"):
            flags = "01" if context.trace_flags.sampled else "00"
            return {"traceparent": f"00-{parsed[0]}-{parsed[1]}-{flags}"}
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, trace.set_span_in_context(origin.span))
        carrier.pop("tracestate", None)
        return carrier

    def sdk_tracer(self) -> Any:
        """The SDK tracer that worker spans go through, or None when the provider is not the SDK's."""
        provider = self.provider if self.provider is not None else trace.get_tracer_provider()
        if self._sdk[0] is not provider:
            tracer = provider.get_tracer(SCOPE, self.version)
            self._sdk = (
                provider,
                tracer if hasattr(tracer, "span_processor") and hasattr(tracer, "resource") else None,
            )
        return self._sdk[1]


class CallTrace:
    """The span of one request in flight; `end` takes the worker's spans from the reply and ends it."""

    __slots__ = ("owner", "span", "worker", "server_attributes")

    def __init__(self, owner: BrokerTracer, span: Any, worker: Any, content: dict[str, Any], attributes: dict) -> None:
        self.owner = owner
        self.span = span
        self.worker = worker
        source = content.get("source") or {}
        self.server_attributes = dict(attributes)  # what the broker vouches for on the worker's SERVER span
        if source.get("module"):
            self.server_attributes["wb_magic.source.module"] = module_name_for(str(source["module"]))
        if source.get("segregation_id") is not None:
            self.server_attributes["wb_magic.source.segregation_id"] = str(source["segregation_id"])

    def end(self, call: Any) -> None:
        span = self.span
        if call.reply is not None:
            content = call.reply.content
            if "spans" in content:
                self._ingest(content["spans"])
            if content.get("status") == "error":
                ename, evalue = str(content.get("ename", "Exception"))[:128], str(content.get("evalue", ""))[:1024]
                span.add_event("exception", {"exception.type": ename, "exception.message": evalue})
                span.set_status(Status(StatusCode.ERROR, f"{ename}: {evalue}"))
        elif call.error is not None:
            span.record_exception(call.error)
            span.set_status(Status(StatusCode.ERROR, f"{type(call.error).__name__}: {call.error}"))
            if isinstance(call.error, WorkerDied):
                span.set_attribute("wb_magic.worker_spans", "lost: the worker ended before it answered")
        span.end()

    def _ingest(self, raw: Any) -> None:
        """Hand the worker's spans, checked, to the host's span processors, as children of this span."""
        context = self.span.get_span_context()
        spans, refused = accept(raw, context.span_id)
        if refused:
            self.span.set_attribute("wb_magic.worker_spans.refused", refused)
        tracer = self.owner.sdk_tracer()
        if tracer is None or not spans:
            return
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        scope = _scope(self.owner.version, InstrumentationScope)
        vouched: dict[str, Any] = {"wb_magic.worker": module_name_for(str(self.worker.module))}
        if self.worker.pid is not None:
            vouched["process.pid"] = self.worker.pid
        if self.worker.segregation_id is not None:
            vouched["wb_magic.segregation_id"] = self.worker.segregation_id
        flags = TraceFlags(context.trace_flags)
        for worker_span in spans:
            attributes = {**worker_span.attributes, **vouched}
            if worker_span.parent_id == context.span_id:  # the SERVER span: the call as the broker sent it
                attributes.update(self.server_attributes)
            events, status = _outcome(worker_span, Event)
            tracer.span_processor.on_end(
                ReadableSpan(
                    name=worker_span.name,
                    context=SpanContext(context.trace_id, worker_span.span_id, False, flags, context.trace_state),
                    parent=SpanContext(context.trace_id, worker_span.parent_id, False, flags, context.trace_state),
                    resource=tracer.resource,
                    attributes=attributes,
                    events=events,
                    kind=_KINDS[worker_span.kind],
                    status=status,
                    start_time=worker_span.start,
                    end_time=worker_span.end,
                    instrumentation_scope=scope,
                )
            )


def record_trace(action: Callable[[], BaseException | None], name: str = "%%wb_trace") -> list[Any]:
    """Run ``action()`` inside a span of its own with every wb-magic call traced; the spans of that trace.

    The spans go to a tracer provider of this function's own (an in-memory exporter), and also to the span
    processors of the provider the instrumentor was given, if it is the SDK's, so that exporters set up for the
    session see them too. ``action`` returns the exception the span should record, if it failed. Needs the
    OpenTelemetry SDK (`ImportError` saying how to install it otherwise)."""
    try:
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        raise ImportError(
            "tracing a cell needs the OpenTelemetry SDK: pip install opentelemetry-sdk (wb-magic[test] has it)"
        ) from None
    previous = tracing.tracer
    session = previous.sdk_tracer() if isinstance(previous, BrokerTracer) else None
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False, **({"resource": session.resource} if session else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if session is not None:
        processor = session.span_processor

        class Forward(SpanProcessor):  # passes spans on to the session's processors, and never shuts them down
            def on_end(self, span: Any) -> None:
                processor.on_end(span)

        provider.add_span_processor(Forward())
    tracer = BrokerTracer(provider)
    tracing.tracer = tracer
    try:
        with tracer.tracer.start_as_current_span(name, record_exception=False) as root:
            failure = action()
            if failure is not None:
                root.record_exception(failure)
                root.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))
    finally:
        tracing.tracer = previous
    trace_id = root.get_span_context().trace_id
    return [span for span in exporter.get_finished_spans() if span.context.trace_id == trace_id]


_scopes: dict[str, Any] = {}


def _scope(version: str, make: Any) -> Any:
    scope = _scopes.get(version)
    if scope is None:
        scope = _scopes[version] = make(SCOPE, version)
    return scope


def _outcome(span: WorkerSpan, event: Any) -> tuple[list[Any], Status]:
    if span.error is None:
        return [], Status(StatusCode.UNSET)
    error = span.error
    attributes = {"exception.type": error["type"], "exception.message": error["message"]}
    if error["stacktrace"]:
        attributes["exception.stacktrace"] = error["stacktrace"]
    return [event("exception", attributes, span.end)], Status(StatusCode.ERROR, f"{error['type']}: {error['message']}")
