"""One run of `benchmarks.ab`'s measurement: ``python benchmarks/ab_run.py MODULES_DIR`` prints JSON.

Run by path, not as part of the package, so that it imports wb_magic from whichever tree PYTHONPATH names: an
older revision need not have this file.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path


def measure(modules: Path) -> dict[str, float]:
    """Hot calls, pipelined calls and worker-to-worker calls of benchmarks/modules, in this process."""
    import psutil

    from wb_magic import WorkerBroker

    broker = WorkerBroker(call_timeout=120, warm_workers=0)
    try:
        hello = broker.worker_proxy(str(modules / "target.py")).hello
        for _ in range(500):
            hello("warm")
        worker = psutil.Process(broker.worker_for(str(modules / "target.py")).pid)
        cpu_before = time.process_time(), sum(worker.cpu_times()[:2])
        samples = []
        for _ in range(4000):
            start = time.perf_counter_ns()
            hello("World")
            samples.append(time.perf_counter_ns() - start)
        samples.sort()
        # CPU time (host and worker) of a hot call: what a loaded machine's waiting does not blur
        hot_cpu = (time.process_time() - cpu_before[0]) + (sum(worker.cpu_times()[:2]) - cpu_before[1])

        ahello = broker.worker_proxy(str(modules / "target.py"), asynchronous=True).hello
        loop = asyncio.new_event_loop()

        async def window() -> None:
            await asyncio.gather(*(ahello("World") for _ in range(100)))

        windows = []
        for i in range(30):
            start = time.perf_counter_ns()
            loop.run_until_complete(window())
            if i >= 5:
                windows.append(time.perf_counter_ns() - start)
        loop.close()

        relay = broker.worker_proxy(str(modules / "relay.py"))
        relay.timed_calls(200)
        routed, direct = [], []
        for _ in range(4):
            routed += relay.timed_calls(250)
            for _ in range(250):
                start = time.perf_counter_ns()
                hello("World")
                direct.append(time.perf_counter_ns() - start)
    finally:
        broker.close()
    return {
        "hot median": samples[len(samples) // 2] / 1000,
        "hot p99": samples[int(len(samples) * 0.99)] / 1000,
        "hot cpu": hot_cpu / len(samples) * 1e6,
        "pipelined calls/s": 100e9 / statistics.median(windows),
        "worker to worker": statistics.median(routed) / 1000,
        "direct": statistics.median(direct) / 1000,
    }


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))))
