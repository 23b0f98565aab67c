"""The seam between the broker and OpenTelemetry, which the broker reaches without importing OpenTelemetry.

``tracer`` is None until `wb_magic.telemetry.WorkerBrokerInstrumentor` is instrumented, and None again once it is
uninstrumented: with it off, a call costs one look at this module's global. With it on, the broker asks it for a
`CallTrace` as it sends each request, and hands the call to that trace when the call ends, however it ends.
"""

from __future__ import annotations

from typing import Any, Protocol


class CallTrace(Protocol):
    def end(self, call: Any) -> None:
        """The call has ended (``call.reply`` or ``call.error`` says how): take the worker's spans, end the span."""


class CallTracer(Protocol):
    def start(self, worker: Any, msg_type: str, content: dict[str, Any], parent: Any) -> CallTrace | None:
        """Begin the span of a request to ``worker`` and put its trace context in ``content`` (as ``trace``).
        ``parent`` is the ``trace`` of the worker-to-worker request being routed, or None for the host's own
        call (whose parent is the current span). None when nothing is to be recorded."""

    def vouch(self, origin: Any, claimed: dict[str, Any]) -> dict[str, Any]:
        """The trace context accepted for a worker's request made during ``origin`` (a call's trace, or None)."""


tracer: CallTracer | None = None
