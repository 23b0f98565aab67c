"""``make demo-otel``: the example app with OpenTelemetry, each web request one trace through every worker.

Starlette's requests become SERVER spans (OpenTelemetry's ASGI middleware), the parents of everything the request
makes wb-magic do: the host's call to the trusted handler, the handler's call to the untrusted module (routed by
the broker), and each worker's own spans, which the workers hand to the broker, so that this process exports them
all. Spans go to the console, or by OTLP (HTTP, protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, e.g. to a local collector or Jaeger on ``http://localhost:4318``.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from wb_magic.telemetry import WorkerBrokerInstrumentor

SERVICE = "wb-magic-example-app"


def exporter() -> tuple[SpanExporter, str]:
    """The OTLP exporter when an endpoint is configured, else the console; and where spans go, for people."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(), f"OTLP at {endpoint}"  # it reads the endpoint (and headers) from the environment
    return ConsoleSpanExporter(), "the console"


def instrument(app: Any) -> tuple[Any, TracerProvider, str]:
    """Trace every request of ``app`` and every wb-magic call; the app wrapped in the ASGI middleware, the
    tracer provider (shut it down on exit, which exports what is left) and where spans go."""
    span_exporter, where = exporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    WorkerBrokerInstrumentor().instrument(tracer_provider=provider)
    return OpenTelemetryMiddleware(app, tracer_provider=provider), provider, where
