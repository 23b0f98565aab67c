"""Timing, statistics, the results of one run, and peer servers in subprocesses.

Latencies are measured one call at a time with `time.perf_counter_ns` and kept as samples in seconds, so that
the report can give medians, p99 and the whole distribution. Peers that are compared with each other are run
in interleaved rounds (a block of calls for each, in a rotating order, several times over) so that a burst of
load from elsewhere on the machine hits all of them rather than one.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULES = Path(__file__).resolve().parent / "modules"


# -- statistics ----------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, interpolated between the nearest ranks."""
    if not sorted_values:
        return math.nan
    at = (len(sorted_values) - 1) * q / 100
    low = math.floor(at)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (at - low)


def summarize(samples: Iterable[float]) -> dict[str, float]:
    values = sorted(samples)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": percentile(values, 50),
        "p99": percentile(values, 99),
        "p90": percentile(values, 90),
        "mean": sum(values) / len(values),
        "min": values[0],
        "max": values[-1],
    }


# -- timing ----------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Call ``fn`` n times; each call's duration in seconds."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        start = clock()
        fn()
        out[i] = clock() - start
    return [ns / 1e9 for ns in out]


def once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Call ``fn`` once: its duration in seconds and its result."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int,
    max_block: int,
    block_seconds: float,
    min_block: int = 5,
) -> dict[str, list[float]]:
    """Per-call latencies of each of ``calls``, run in rounds of blocks in a rotating order.

    Each callable is warmed up first; its block size is chosen from the warm-up so that a block lasts about
    ``block_seconds`` (between ``min_block`` and ``max_block`` calls), so slow peers do not stretch the run.
    """
    names = list(calls)
    blocks: dict[str, int] = {}
    for name in names:
        warm = timed(calls[name], warmup)
        typical = summarize(warm).get("median", 1e-3) or 1e-3
        blocks[name] = max(min_block, min(max_block, int(block_seconds / typical)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            samples[name] += timed(calls[name], blocks[name])
    return samples


# -- results ---------------------------------------------------------------------------------------------------


@dataclass
class Series:
    """One measured quantity: its samples (seconds for latencies), where it belongs, and what it is."""

    id: str
    group: str
    label: str
    samples: list[float]
    unit: str = "s"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        return summarize(self.samples)

    def to_json(self) -> dict[str, Any]:
        scale = 1e6 if self.unit == "s" else 1.0
        return {
            "id": self.id,
            "group": self.group,
            "label": self.label,
            "unit": "us" if self.unit == "s" else self.unit,
            "note": self.note,
            "summary": {k: (v * scale if k != "n" else v) for k, v in self.summary.items()},
            "extra": self.extra,
            "samples": [round(v * scale, 1) for v in self.samples],
        }


class Results:
    """Everything one run measured; the report is built from it, and it is written out as JSON."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.series: dict[str, Series] = {}
        self.facts: dict[str, Any] = {}  # single numbers: memory, counts, totals
        self.skipped: dict[str, str] = {}  # benchmark or peer -> why it did not run
        self.errors: dict[str, str] = {}  # benchmark group -> the exception that stopped it
        self.started = time.time()

    def add(self, series: Series) -> Series:
        self.series[series.id] = series
        return series

    def get(self, id: str) -> Series | None:
        return self.series.get(id)

    def median(self, id: str) -> float | None:
        found = self.series.get(id)
        return found.summary.get("median") if found is not None and found.samples else None

    def p99(self, id: str) -> float | None:
        found = self.series.get(id)
        return found.summary.get("p99") if found is not None and found.samples else None

    def skip(self, what: str, why: str) -> None:
        self.skipped[what] = why
        print(f"  skipped {what}: {why}", flush=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": machine(),
            "quick": self.quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "facts": self.facts,
            "skipped": self.skipped,
            "errors": self.errors,
            "series": [s.to_json() for s in self.series.values()],
        }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except Exception:
        pass
    try:
        import zmq

        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
    except Exception:
        pass
    return info


# -- wb-magic ------------------------------------------------------------------------------------------------


def new_broker(*, warm_workers: int = 0, lane: bool = True, **kwargs: Any) -> Any:
    """A `WorkerBroker`, without a warm pool unless one is asked for (the default broker may keep one).
    ``lane=False`` puts its workers on the Jupyter channels (``WorkerSpec(lane=False)``), for the side by side."""
    import inspect

    from wb_magic import WorkerBroker, WorkerSpec

    if not lane:
        kwargs["worker_constructor"] = lambda module, segregation_id: WorkerSpec(lane=False)

    if "warm_workers" in inspect.signature(WorkerBroker).parameters:
        kwargs["warm_workers"] = warm_workers
    elif warm_workers:
        raise TypeError("this WorkerBroker has no warm pool")
    return WorkerBroker(**kwargs)


# -- peer servers ----------------------------------------------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    """The environment for our subprocesses: this checkout first on the path, whatever the working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Server:
    """``python -m MODULE serve ARGS...`` in a subprocess; it prints one JSON line (its address) when ready.

    The server exits when its stdin closes (see `serve_until_parent_exits`), so it cannot outlive us.
    """

    def __init__(self, module: str, *args: str, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=subprocess_env(),
            cwd=ROOT,
        )
        line = _readline(self.process, timeout)
        if not line:
            self.close()
            raise RuntimeError(f"the {module} server did not start")
        self.address: dict[str, Any] = json.loads(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # type: ignore[union-attr]
                self.process.wait(5)
            except Exception:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _readline(process: subprocess.Popen, timeout: float) -> str:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0].decode().strip() if box else ""


def announce(**address: Any) -> None:
    """In a server: tell the parent where we listen, and exit when the parent goes."""
    sys.stdout.write(json.dumps(address) + "\n")
    sys.stdout.flush()

    def watch() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
