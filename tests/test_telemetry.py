"""OpenTelemetry: one trace across the host and real workers, collected by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wb_magic import Permissions, WorkerBroker, WorkerDied, WorkerSpec, tracing
from wb_magic.launcher import without_auto_instrumentation
from wb_magic.telemetry import WorkerBrokerInstrumentor
from wb_magic.waterfall import Waterfall
from wb_magic.worker_spans import MAX_NAME, MAX_SPANS, accept

HERE = Path(__file__).parent / "workers" / "telemetry"
BOTH_LINKS = pytest.mark.usefixtures("link_kind")  # the lane, and the Jupyter channels (WorkerSpec(lane=False))
FRONT = str(HERE / "front.py")
BACK = str(HERE / "back.py")


@pytest.fixture
def exporter():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    WorkerBrokerInstrumentor().instrument(tracer_provider=provider)
    exporter.tracer = provider.get_tracer("the user")  # type: ignore[attr-defined]
    yield exporter
    WorkerBrokerInstrumentor().uninstrument()


def spans_by_name(exporter):
    return {span.name: span for span in exporter.get_finished_spans()}


def parent_chain(span, spans):
    """The names from ``span`` up to its root."""
    by_id = {s.context.span_id: s for s in spans}
    names = [span.name]
    while span.parent is not None:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def test_one_trace_across_the_host_and_two_workers(link_kind, broker, exporter):
    front = broker.worker_proxy(FRONT)
    with exporter.tracer.start_as_current_span("the user's request") as user:
        assert front.hop(20) == 41
    expected_link = "LaneLink" if link_kind == "lane" else "JupyterLink"
    assert {type(broker.worker_for(m).link).__name__ for m in (FRONT, BACK)} == {expected_link}
    spans = exporter.get_finished_spans()
    assert {span.context.trace_id for span in spans} == {user.get_span_context().trace_id}
    named = spans_by_name(exporter)
    back_server = next(s for s in spans if s.name == "back/double" and s.kind == SpanKind.SERVER)
    assert parent_chain(back_server, spans) == [
        "back/double", "route back/double", "back/double", "front/hop", "front/hop", "the user's request",
    ]  # B's SERVER, the broker's routing, A's CLIENT, A's SERVER, the host's CLIENT, the user's span  # fmt: skip
    kinds = [s.kind for s in spans if s.name in ("front/hop", "back/double")]
    assert sorted(k.name for k in kinds) == ["CLIENT", "CLIENT", "SERVER", "SERVER"]
    back_server = next(s for s in spans if s.name == "back/double" and s.kind == SpanKind.SERVER)
    front_server = next(s for s in spans if s.name == "front/hop" and s.kind == SpanKind.SERVER)
    back_pid = broker.worker_for(BACK).pid
    front_pid = broker.worker_for(FRONT).pid
    assert back_server.attributes["rpc.system"] == "wb_magic"
    assert back_server.attributes["rpc.service"] == "back"
    assert back_server.attributes["rpc.method"] == "double"
    assert back_server.attributes["process.pid"] == back_pid
    assert back_server.attributes["wb_magic.source.module"] == "front"  # stamped by the broker
    assert front_server.attributes["process.pid"] == front_pid
    assert "wb_magic.source.module" not in front_server.attributes  # the host called it
    route = named["route back/double"]
    assert route.kind == SpanKind.INTERNAL and route.attributes["wb_magic.source.module"] == "front"
    assert any(s.name == "import back" for s in spans)  # the callee's first import, inside its SERVER span


@BOTH_LINKS
def test_async_calls_are_traced_too(broker, exporter):
    front = broker.worker_proxy(FRONT, asynchronous=True)

    async def main():
        with exporter.tracer.start_as_current_span("async user"):
            return await asyncio.gather(front.ahop(1), front.ahop(2))

    assert asyncio.run(main()) == [3, 5]
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.name == "back/double" and s.kind == SpanKind.SERVER]
    assert len(servers) == 2
    for server in servers:
        assert parent_chain(server, spans)[-1] == "async user"


@BOTH_LINKS
def test_a_failure_deep_in_the_chain_is_marked_on_every_span_it_crosses(broker, exporter):
    front = broker.worker_proxy(FRONT)
    with exporter.tracer.start_as_current_span("user"), pytest.raises(ValueError, match="back cannot take 7"):
        front.deep_failure(7)
    spans = exporter.get_finished_spans()
    failed = [s for s in spans if s.status.status_code == StatusCode.ERROR]
    assert {s.name for s in failed} == {"back/fail", "route back/fail", "front/deep_failure"}
    assert len(failed) == 5  # back's SERVER, the route, front's CLIENT, front's SERVER, the host's CLIENT
    back_server = next(s for s in failed if s.name == "back/fail" and s.kind == SpanKind.SERVER)
    (event,) = back_server.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "back cannot take 7"
    assert "raise ValueError" in event.attributes["exception.stacktrace"]


def test_a_sandboxed_workers_spans_arrive(exporter):
    def construct(module, segregation_id):
        return WorkerSpec(permissions=Permissions(read=[str(HERE)]))

    with WorkerBroker(worker_constructor=construct, call_timeout=60, warm_workers=0) as broker:
        front = broker.worker_proxy(FRONT)
        with exporter.tracer.start_as_current_span("user"):
            assert front.hop(1) == 3
    spans = exporter.get_finished_spans()
    servers = {s.name for s in spans if s.kind == SpanKind.SERVER}
    assert servers >= {"front/hop", "back/double"}
    assert len({s.context.trace_id for s in spans}) == 1


@BOTH_LINKS
def test_hooks_run_inside_the_server_span(exporter):
    hooks = str(Path(__file__).parent / "workers" / "hooks.py")

    with WorkerBroker(worker_constructor=lambda m, s: WorkerSpec(hooks=hooks), call_timeout=60) as broker:
        with exporter.tracer.start_as_current_span("user"):
            assert broker.worker_proxy(str(HERE / "hooked.py")).ping() == "pong"
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.name == "hooked/ping" and s.kind == SpanKind.SERVER)
    hooks_spans = [s for s in spans if s.name in ("before_call", "after_call")]
    assert sorted(s.name for s in hooks_spans) == ["after_call", "before_call"]
    assert all(s.parent.span_id == server.context.span_id for s in hooks_spans)


@BOTH_LINKS
def test_imports_and_reloads_are_spans(broker, exporter):
    with exporter.tracer.start_as_current_span("user"):
        broker.worker_import(BACK)
        broker.worker_import(BACK, cache_buster="2")
    names = [(s.name, s.kind.name) for s in exporter.get_finished_spans()]
    assert ("import back", "CLIENT") in names and ("reload back", "CLIENT") in names
    assert ("reload back", "SERVER") not in names  # the worker's SERVER span is the import request
    assert names.count(("import back", "SERVER")) == 2


@BOTH_LINKS
def test_a_crash_mid_call_is_recorded_on_the_client_span(broker, exporter):
    front = broker.worker_proxy(FRONT)
    with exporter.tracer.start_as_current_span("user"), pytest.raises(WorkerDied):
        front.crash()
    client = next(s for s in exporter.get_finished_spans() if s.name == "front/crash")
    assert client.kind == SpanKind.CLIENT
    assert client.status.status_code == StatusCode.ERROR
    assert "WorkerDied" in client.status.description
    assert client.attributes["wb_magic.worker_spans"].startswith("lost")
    assert client.attributes["wb_magic.worker.pid"] > 0  # which process it was
    assert client.events[0].attributes["exception.type"].endswith("WorkerDied")


@BOTH_LINKS
def test_forged_spans_are_capped_and_the_broker_sets_what_it_vouches_for(broker, exporter):
    front = broker.worker_proxy(FRONT)
    front.forge()  # the module now forges the spans of every traced reply (this call's own too)
    exporter.clear()
    with exporter.tracer.start_as_current_span("user"):
        assert front.otel_modules_here() == ["worker_kernel.tracing"]
    spans = exporter.get_finished_spans()
    pid = broker.worker_for(FRONT).pid
    from_worker = [s for s in spans if "process.pid" in s.attributes]
    client = next(s for s in spans if s.name == "front/otel_modules_here" and s.kind == SpanKind.CLIENT)
    assert 0 < len(from_worker) <= MAX_SPANS
    assert all(len(s.name) <= MAX_NAME for s in from_worker)
    assert {s.attributes["process.pid"] for s in from_worker} == {pid}
    assert {s.attributes["wb_magic.worker"] for s in from_worker} == {"front"}
    assert all("wb_magic.segregation_id" not in s.attributes for s in from_worker)
    assert not any(s.name in ("orphan", "a second server span") for s in from_worker)
    assert client.attributes["wb_magic.worker_spans.refused"] >= 1000 - MAX_SPANS
    ids = {s.context.span_id for s in spans}
    assert all(s.parent is None or s.parent.span_id in ids for s in spans)  # nothing hangs off an unknown span
    page = Waterfall(spans)._repr_html_()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


@BOTH_LINKS
def test_uninstrument_stops_new_spans(broker, exporter):
    front = broker.worker_proxy(FRONT)
    front.hop(1)
    count = len(exporter.get_finished_spans())
    assert count > 0
    WorkerBrokerInstrumentor().uninstrument()
    assert tracing.tracer is None
    with exporter.tracer.start_as_current_span("user"):
        assert front.hop(1) == 3
    assert [s.name for s in exporter.get_finished_spans()[count:]] == ["user"]
    WorkerBrokerInstrumentor().instrument(tracer_provider=TracerProvider())  # for the fixture to undo


@BOTH_LINKS
def test_a_worker_imports_nothing_of_opentelemetry_when_calls_carry_no_trace(broker):
    assert tracing.tracer is None
    assert broker.worker_proxy(FRONT).otel_modules() == []


@BOTH_LINKS
def test_calls_that_are_not_sampled_import_nothing_in_workers(broker):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    WorkerBrokerInstrumentor().instrument(tracer_provider=TracerProvider(sampler=ALWAYS_OFF))
    try:
        assert broker.worker_proxy(FRONT).otel_modules() == []
    finally:
        WorkerBrokerInstrumentor().uninstrument()


def test_opentelemetry_instrument_traces_with_no_code_change_and_workers_stay_clean(tmp_path):
    """`opentelemetry-instrument` (with the distro's configurator: OTEL_TRACES_EXPORTER=console) finds the
    instrumentor by its entry point, and the workers' spans reach the host's console exporter. It also puts a
    folder first on PYTHONPATH whose sitecustomize instruments every Python process that starts: workers are
    started without it, and import nothing of OpenTelemetry."""
    script = tmp_path / "app.py"
    script.write_text(
        "from wb_magic import WorkerBroker, tracing\n"
        "with WorkerBroker(call_timeout=60, warm_workers=0) as broker:\n"
        f"    modules = broker.worker_proxy({FRONT!r}).otel_modules()\n"
        "print('instrumented' if tracing.tracer is not None else 'not instrumented', modules)\n"
    )
    command = [str(Path(sys.executable).with_name("opentelemetry-instrument")), sys.executable, str(script)]
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"}
    env["OTEL_LOGS_EXPORTER"] = "none"
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the workers' modules are listed by a traced call: it imports the worker's own recorder, and nothing else
    assert "instrumented ['worker_kernel.tracing', 'worker_kernel.tracing']" in out.stdout.splitlines()
    assert '"name": "front/otel_modules"' in out.stdout and '"name": "back/otel_modules"' in out.stdout
    assert '"kind": "SpanKind.SERVER"' in out.stdout and '"process.pid"' in out.stdout


def test_the_auto_instrumentation_folder_is_taken_off_a_workers_python_path():
    folder = os.path.join("/venv", "lib", "opentelemetry", "instrumentation", "auto_instrumentation")
    assert without_auto_instrumentation(os.pathsep.join(["/a", folder, "/b"])) == os.pathsep.join(["/a", "/b"])


def test_the_instrumentor_is_registered_for_opentelemetry_instrument():
    found = [ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name == "wb_magic"]
    assert [ep.load() for ep in found] == [WorkerBrokerInstrumentor]


# -- the broker's check of a worker's spans, alone ---------------------------------------------------------------

ROOT = 0x1111111111111111


def server_span(**changes):
    span = {"name": "m/f", "kind": "server", "span_id": "2" * 16, "parent_id": f"{ROOT:016x}", "start": 10,
            "end": 20, "attributes": {"rpc.method": "f"}, "status": "unset"}  # fmt: skip
    return {**span, **changes}


def test_well_formed_spans_are_accepted_and_bad_ones_refused():
    good = server_span()
    child = server_span(kind="client", span_id="3" * 16, parent_id="2" * 16)
    bad = [
        server_span(span_id="0" * 16),  # a zero id
        server_span(span_id="X" * 16),
        server_span(start=30, end=20),  # ends before it starts
        server_span(start=True),
        server_span(kind="producer"),
        server_span(attributes=[1]),
        "not a span",
    ]
    spans, refused = accept([good, child, *bad], ROOT)
    assert [s.span_id for s in spans] == [0x2222222222222222, 0x3333333333333333]
    assert refused == len(bad)


def test_reserved_and_odd_attributes_are_dropped():
    raw = server_span(attributes={"process.pid": 1, "wb_magic.worker": "x", "a.b": "ok", "Bad Key": 1, "n": [1]})
    (span,), _ = accept([raw], ROOT)
    assert span.attributes == {"a.b": "ok"}


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=8),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(ANYTHING | st.builds(server_span, span_id=st.text(max_size=17), attributes=ANYTHING), max_size=5)
    | ANYTHING
)
def test_anything_a_worker_sends_is_checked_without_an_error(raw):
    spans, refused = accept(raw, ROOT)
    assert len(spans) <= MAX_SPANS and refused >= 0


def test_a_worker_cannot_put_spans_into_a_trace_of_its_choosing(broker, exporter):
    """The second red team's finding 03: a worker's request names a trace id (and the sampled flag) of its own
    choosing. Within a traced call, the broker parents it on that call's trace instead; outside one, nothing."""
    victim = "0af7651916cd43dd8448eb211c80319c"
    front = broker.worker_proxy(FRONT)
    assert front.forged_trace(victim, True) == "ok"
    assert front.forged_trace(victim, False) == "ok"
    spans = exporter.get_finished_spans()
    assert spans and all(f"{span.context.trace_id:032x}" != victim for span in spans)
    (host_call,) = [s for s in spans if s.name == "front/forged_trace" and s.kind == SpanKind.CLIENT][:1]
    routed = [s for s in spans if s.name == "route back/double"]
    assert [s.context.trace_id for s in routed] == [host_call.context.trace_id]  # only the call made inside


def test_the_waterfall_shows_no_terminal_control_characters_of_a_worker():
    """The second red team's finding 04: span names, worker names and error messages may be a worker's."""
    from opentelemetry.trace import Status

    nasty = "\x1b]0;PWNED-TITLE\x07\x1b[31mRED\rOVERWRITTEN \u202eevil"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("test").start_span(nasty, attributes={"wb_magic.worker": nasty})
    span.set_status(Status(StatusCode.ERROR, nasty))
    span.end()
    drawn = Waterfall(exporter.get_finished_spans())
    for shown in (drawn.text(), drawn._repr_html_()):
        assert "PWNED-TITLE" in shown
        assert not any(c in shown for c in ("\x1b", "\x07", "\r", "\u202e")), repr(shown)
