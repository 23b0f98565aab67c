"""``make demo-otel``: the example app served with OpenTelemetry, exporting by OTLP to a receiver of this test's own
on loopback. One web request is one trace: the ASGI SERVER span, the host's call to the trusted handler, the
broker's routing, the sandboxed module's worker, all in the spans that the app's one exporter sends."""

from __future__ import annotations

import gzip
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from worker_kernel.sandbox import landlock_abi

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64" or landlock_abi() < 6,
    reason="the app's untrusted workers are sandboxed: Linux on x86_64 with Landlock ABI 6 or later",
)


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """An OTLP/HTTP trace receiver on 127.0.0.1: its base URL, and a queue of every span it is sent."""
    spans: queue.Queue[dict[str, Any]] = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        spans.put(
                            {
                                "path": self.path,
                                "service": service,
                                "name": span.name,
                                "kind": span.kind,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                            }
                        )
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@contextmanager
def demo_otel(env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """``python -m examples.app --otel`` (what ``make demo-otel`` runs) on a free port: its URL and its output."""
    server = subprocess.Popen(
        [sys.executable, "-m", "examples.app", "--port", "0", "--otel"],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        for line in server.stdout:  # type: ignore[union-attr]
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        base = None
        while base is None:
            line = lines.get(timeout=120)
            assert line is not None, "the server ended before listening:\n" + "".join(output)
            found = re.search(r"listening on (http://localhost:\d+)/", line)
            base = found.group(1) if found else None
        yield base, output
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        assert code == 0, "".join(output)


def is_request(span: dict[str, Any]) -> bool:
    """The ASGI middleware's SERVER span of a web request (2 is SPAN_KIND_SERVER)."""
    return span["kind"] == 2 and "rpc.system" not in span["attributes"]


def test_make_demo_otel_exports_each_request_as_one_trace_by_otlp():
    with otlp_receiver() as (endpoint, received):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        with demo_otel(env) as (base, output):
            with urllib.request.urlopen(base + "/hello/world", timeout=60) as answer:
                assert answer.read() == b"Hello World"
            spans: list[dict[str, Any]] = []
            while not (any(is_request(s) for s in spans) and any(s["name"] == "hello/world" for s in spans)):
                spans.append(received.get(timeout=60))  # exported in batches, as they end
        assert any(f"spans go to OTLP at {endpoint}" in line for line in output)
    request = next(s for s in spans if is_request(s))
    trace = [s for s in spans if s["trace_id"] == request["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}

    def chain(span: dict[str, Any]) -> list[str]:
        names = [span["name"]]
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            names.append(span["name"])
        return names

    hello = next(s for s in trace if s["name"] == "hello/world" and s["kind"] == 2)
    assert chain(hello) == [
        "hello/world",
        "route hello/world",
        "hello/world",
        "handler/handle",
        "handler/handle",
        request["name"],
    ]  # the sandboxed module, the broker, the handler's CLIENT and SERVER spans, the host's CLIENT, the request
    assert hello["attributes"]["wb_magic.source.module"] == "handler"
    assert {s["service"] for s in trace} == {"wb-magic-example-app"}
    assert {s["path"] for s in trace} == {"/v1/traces"}


def test_make_demo_otel_prints_spans_to_the_console_without_an_endpoint():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with demo_otel(env) as (base, output):
        with urllib.request.urlopen(base + "/test1/echo?a=1", timeout=60) as answer:
            assert answer.status == 200
    text = "".join(output)  # the provider's shutdown exports what is left, before the server says it stopped
    assert "spans go to the console" in text
    assert '"name": "test1/echo"' in text and '"rpc.system": "wb_magic"' in text
