"""``python -m benchmarks.telemetry [--rounds N]``: what tracing costs a call, measured in alternation.

The same broker and workers serve hot calls (host -> target) and routed calls (host -> relay -> target) with the
instrumentor off and on, in turns of a few hundred calls each, N rounds; it prints the median of each. With it on,
every call makes a CLIENT span in the host, a SERVER span in the worker (and for the routed call, the relay's
CLIENT span and the broker's routing span), and the worker's spans travel back with the reply and are checked and
handed to the SDK's span processor, here a `BatchSpanProcessor` with an exporter that drops everything (the cost of
a real exporter's network is not ours). The difference is what turning telemetry on costs: in wall time (a
median), and in CPU time of the host and the workers together, which a loaded machine blurs far less.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

MODULES = Path(__file__).resolve().parent / "modules"


def main(argv: Sequence[str] | None = None) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from wb_magic import WorkerBroker
    from wb_magic.telemetry import WorkerBrokerInstrumentor

    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="turns of off and on (default 8)")
    parser.add_argument("--calls", type=int, default=500, help="calls per turn (default 500)")
    options = parser.parse_args(argv)

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    instrumentor = WorkerBrokerInstrumentor()
    results: dict[str, list[float]] = {}
    with WorkerBroker(call_timeout=120, warm_workers=0) as broker:
        hello = broker.worker_proxy(str(MODULES / "target.py")).hello
        relay = broker.worker_proxy(str(MODULES / "relay.py"))
        for _ in range(300):
            hello("warm")
        relay.timed_calls(100)
        for _ in range(options.rounds):
            for state in ("off", "on"):
                if state == "on":
                    instrumentor.instrument(tracer_provider=provider)
                hello("warm")  # the first traced call imports the worker's recorder
                samples = []
                cpu = cpu_time(broker)
                for _ in range(options.calls):
                    start = time.perf_counter_ns()
                    hello("World")
                    samples.append(time.perf_counter_ns() - start)
                results.setdefault(f"hot call, {state}", []).append(statistics.median(samples) / 1000)
                results.setdefault(f"hot call CPU, {state}", []).append((cpu_time(broker) - cpu) / options.calls * 1e6)
                samples = []
                cpu = cpu_time(broker)
                for _ in range(options.calls // 5):
                    start = time.perf_counter_ns()
                    relay.forward("World")
                    samples.append(time.perf_counter_ns() - start)
                results.setdefault(f"host -> relay -> target, {state}", []).append(statistics.median(samples) / 1000)
                results.setdefault(f"host -> relay -> target CPU, {state}", []).append(
                    (cpu_time(broker) - cpu) / (options.calls // 5) * 1e6
                )
                if state == "on":
                    instrumentor.uninstrument()
    provider.shutdown()
    print(f"medians of {options.rounds} alternated turns (µs a call):")
    for name, values in results.items():
        print(f"  {name:38} {statistics.median(values):8.1f}   (turns: {', '.join(f'{v:.0f}' for v in values)})")
    for what in ("hot call", "hot call CPU", "host -> relay -> target", "host -> relay -> target CPU"):
        off, on = statistics.median(results[f"{what}, off"]), statistics.median(results[f"{what}, on"])
        print(f"  {what}: tracing on costs {on - off:+.1f} µs a call ({on / off - 1:+.0%})")


def cpu_time(broker: object) -> float:
    """Seconds of CPU the host and its workers have used."""
    import psutil

    total = time.process_time()
    for info in broker.workers:  # type: ignore[attr-defined]
        try:
            total += sum(psutil.Process(info.pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return total


if __name__ == "__main__":
    main()
