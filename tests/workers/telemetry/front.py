"""The first hop of a traced chain: the host calls front, front calls back through the broker."""

import os
import sys

from worker_kernel import broker_proxy

back = broker_proxy().worker_proxy("./back.py")


def hop(x):
    return back.double(x) + 1


async def ahop(x):
    return await broker_proxy().worker_proxy("./back.py", asynchronous=True).double(x) + 1


def deep_failure(x):
    return back.fail(x)


def otel_modules():
    return otel_modules_here() + back.otel_modules()


def otel_modules_here():
    return sorted(name for name in sys.modules if name.startswith("opentelemetry") or name == "worker_kernel.tracing")


def crash():
    os._exit(3)


def forge():
    """From now on, send back forged spans with every traced reply: a hostile module can do that."""
    from worker_kernel import tracing

    original = tracing.Recorder.finish

    def forged(self, error=None):
        spans = original(self, error)
        server = next(span for span in spans if span.get("kind") == "server")
        vouched = {"process.pid": 1, "wb_magic.worker": "someone else", "wb_magic.segregation_id": "x", "own.key": "v"}
        name = "<img src=x onerror=alert(1)>" + "n" * 2000
        many = [
            dict(server, span_id=f"{i + 1:016x}", parent_id=server["span_id"], kind="internal", name=name,
                 attributes=vouched)
            for i in range(1000)
        ]  # fmt: skip
        orphan = dict(server, span_id="f" * 16, parent_id="e" * 16, kind="internal", name="orphan")
        second_root = dict(server, span_id="d" * 16, name="a second server span")
        return [orphan, *spans, second_root, *many]

    tracing.Recorder.finish = forged


def forged_trace(trace_id, inside_the_call=True):
    """Ask the broker for back.double(1) with a trace context naming ``trace_id`` (a trace this worker picked, and
    the sampled flag), written straight on the lane; what the broker answered."""
    import time

    from worker_kernel import kernel, lane
    from worker_kernel.kernel import current_request

    running = kernel.running
    request_id = 77_000 + int(inside_the_call)
    content = {
        "target": os.path.join(os.path.dirname(__file__), "back.py"),
        "function": "double",
        "args": [1],
        "kwargs": {},
        "trace": {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "tracestate": "forged=1"},
        "parent": current_request.get().lane_id if inside_the_call else None,
    }
    running._waiting[request_id] = None
    running._lane_send(lane.encode(lane.BROKER, request_id, content))
    while request_id not in running._answers:
        running._drain_lane()
        time.sleep(0.001)  # polls the worker's own lane, inside the worker under test
    return running._answers.pop(request_id).content.get("status")
