"""Start-up and memory: the first call to a new worker (cold, in a live broker, from a warm pool), beside
``python -c "import zmq"`` and an ipykernel's launch to first reply; idle memory of a worker and of an ipykernel.
"""

from __future__ import annotations

import inspect
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

from .config import Config
from .harness import MODULES, Results, Series, new_broker

TRIVIAL = str(MODULES / "trivial.py")
MiB = 2**20


def memory(pid: int) -> dict[str, float]:
    """RSS and USS of a process, in MiB."""
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_mib": info.rss / MiB, "uss_mib": info.uss / MiB}


def import_zmq(results: Results, config: Config) -> None:
    """A bare interpreter that imports pyzmq: what any worker must pay at least."""
    command = [sys.executable, "-c", "import zmq"]
    subprocess.run(command, check=True)  # warm the page cache
    samples = []
    for _ in range(config.import_repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True)
        samples.append(time.perf_counter() - start)
    results.add(Series("startup.import_zmq", "startup", 'python -c "import zmq"', samples))
    # VmHWM, not ru_maxrss: the latter survives exec, so a child of a large parent would report the parent's
    code = "import zmq\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    peak = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    results.facts["import_zmq_max_rss_mib"] = int(peak.stdout) / 1024


def module_import_time() -> float:
    """How long the trivial module's own code takes to compile and run, in a fresh interpreter (seconds)."""
    code = (
        "import sys, time\n"
        "source = open(sys.argv[1]).read()\n"
        "start = time.perf_counter()\n"
        "exec(compile(source, sys.argv[1], 'exec'), {'__name__': 'trivial'})\n"
        "print(time.perf_counter() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, TRIVIAL], check=True, capture_output=True, text=True)
    return float(out.stdout)


def first_call_cold(results: Results, config: Config, lane: bool = True) -> None:
    """A fresh broker, a proxy and its first call: a worker launched for it, no pool."""
    samples = []
    for _ in range(config.first_call_repeats):
        start = time.perf_counter()
        broker = new_broker(call_timeout=60, lane=lane)
        try:
            if broker.worker_proxy(TRIVIAL).ping() != 1:
                raise RuntimeError("the trivial module answered wrongly")
            samples.append(time.perf_counter() - start)
        finally:
            broker.close()
    results.add(
        Series(
            "startup.wb_cold" + ("" if lane else "_jupyter"),
            "startup",
            "wb-magic: new broker, first call" + ("" if lane else ", lane=False"),
            samples,
            note="from WorkerBroker(warm_workers=0) to the first reply, the worker launched for it",
        )
    )


def first_call_live(results: Results, config: Config, lane: bool = True) -> None:
    """New workers (segregated) in a broker that already runs one; then the idle memory of each of them."""
    with new_broker(call_timeout=60, lane=lane) as broker:
        broker.worker_proxy(TRIVIAL).ping()
        samples = []
        for i in range(config.first_call_repeats):
            start = time.perf_counter()
            if broker.worker_proxy((TRIVIAL, f"live{i}")).ping() != 1:
                raise RuntimeError("the trivial module answered wrongly")
            samples.append(time.perf_counter() - start)
        results.add(
            Series(
                "startup.wb_live" + ("" if lane else "_jupyter"),
                "startup",
                "wb-magic: new worker, live broker" + ("" if lane else ", lane=False"),
                samples,
                note="first call to a new worker of a broker that already runs one",
            )
        )
        time.sleep(1.0)  # let the workers settle
        pids = [info.pid for info in broker.workers if info.pid is not None]
        found = [memory(pid) for pid in pids]
    results.facts["wb_idle_worker" + ("" if lane else "_jupyter")] = {
        "workers": len(found),
        "rss_mib": statistics.median(m["rss_mib"] for m in found),
        "uss_mib": statistics.median(m["uss_mib"] for m in found),
        "rss_mib_max": max(m["rss_mib"] for m in found),
        "uss_mib_max": max(m["uss_mib"] for m in found),
    }


def warm_pool(results: Results, config: Config) -> None:
    """The first call to a new worker taken from a warm pool (``WorkerBroker(warm_workers=1)``), once the spare
    kernel is up: each repeat is a new module for the broker (a new segregation id), so a new worker."""
    from wb_magic import WorkerBroker

    if "warm_workers" not in inspect.signature(WorkerBroker).parameters:
        results.skip("startup.wb_warm", "not available yet: WorkerBroker has no warm_workers")
        return
    results.facts["trivial_module_import_s"] = module_import_time()
    samples = []
    with new_broker(call_timeout=60, warm_workers=1) as broker:
        for i in range(config.warm_pool_repeats):
            _wait_for_spare(broker)
            start = time.perf_counter()
            if broker.worker_proxy((TRIVIAL, f"warm{i}")).ping() != 1:
                raise RuntimeError("the trivial module answered wrongly")
            samples.append(time.perf_counter() - start)
    results.add(
        Series(
            "startup.wb_warm",
            "startup",
            "wb-magic: new worker, warm pool",
            samples,
            note="first call to a new worker once the pool holds a spare kernel that has bound its sockets",
        )
    )


def _wait_for_spare(broker: Any, timeout: float = 30.0) -> None:
    """Wait until the pool holds a spare kernel and that kernel listens on its five ports (it has booted)."""
    import psutil

    deadline = time.monotonic() + timeout
    if hasattr(broker, "wait_for_warm_pool"):
        broker.wait_for_warm_pool(timeout)
        pids = [pid for pid in getattr(broker, "warm_pids", []) if pid]
    else:  # a pool without that API: the worker processes that serve no key yet
        live = {info.pid for info in broker.workers}
        while time.monotonic() < deadline:
            pids = [p.pid for p in psutil.Process().children() if _is_worker(p) and p.pid not in live]
            if pids:
                break
            time.sleep(0.02)
    for pid in pids:
        while time.monotonic() < deadline and _listening(pid) < 5:
            time.sleep(0.01)


def _listening(pid: int) -> int:
    import psutil

    try:
        process = psutil.Process(pid)
        connections = getattr(process, "net_connections", None) or process.connections
        return sum(1 for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN)
    except psutil.Error:
        return 0


def _is_worker(process: Any) -> bool:
    try:
        return "worker_kernel" in process.cmdline()
    except Exception:
        return False


def ipykernel_start(results: Results, config: Config) -> None:
    """An ipykernel from launch to its first execute_reply, and its idle memory."""
    from .peers import ipykernel_peer

    why = ipykernel_peer.IPyKernel.missing()
    if why is not None:
        results.skip("startup.ipykernel", why)
        return
    samples = []
    found: dict[str, float] = {}
    for i in range(config.ipykernel_repeats):
        elapsed, manager, client = ipykernel_peer.first_reply()
        samples.append(elapsed)
        try:
            if i == 0:
                time.sleep(1.0)
                found = memory(int(manager.provisioner.pid))
        finally:
            ipykernel_peer.stop(manager, client)
    results.add(
        Series(
            "startup.ipykernel",
            "startup",
            "ipykernel: launch to first reply",
            samples,
            note="KernelManager.start_kernel() to the first execute_reply, no wait_for_ready",
        )
    )
    results.facts["ipykernel_idle"] = found


def run(results: Results, config: Config) -> None:
    for step in (
        import_zmq,
        first_call_cold,
        lambda r, c: first_call_cold(r, c, lane=False),
        first_call_live,
        lambda r, c: first_call_live(r, c, lane=False),
        warm_pool,
        ipykernel_start,
    ):
        try:
            step(results, config)
        except Exception as exc:
            if step is ipykernel_start:
                traceback.print_exc()
                results.skip("startup.ipykernel", f"failed: {type(exc).__name__}: {exc}")
            else:
                raise
