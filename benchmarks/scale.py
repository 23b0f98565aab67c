"""Many workers at once (time, memory, and the hot call among them), and the cost of the cleaner's checks."""

from __future__ import annotations

import asyncio
import inspect
import statistics
import time
from typing import Any

from .config import Config
from .harness import MODULES, Results, Series, new_broker, timed
from .startup import MiB, memory

TRIVIAL = str(MODULES / "trivial.py")


def _start_many(broker: Any, n: int) -> tuple[float, list[float], list[Any]]:
    """First calls to n new workers, all in flight at once (async proxies): total seconds, each one's answer
    time from the start, and the answers (or exceptions)."""
    proxies = [broker.worker_proxy((TRIVIAL, f"many{i}"), asynchronous=True) for i in range(n)]
    loop = asyncio.new_event_loop()
    start = time.perf_counter()
    answered_at: list[float] = []

    async def one(proxy: Any) -> Any:
        value = await proxy.ping()
        answered_at.append(time.perf_counter() - start)
        return value

    async def all_of_them() -> list[Any]:
        return await asyncio.gather(*(one(p) for p in proxies), return_exceptions=True)

    try:
        answers = loop.run_until_complete(all_of_them())
    finally:
        loop.close()
    return time.perf_counter() - start, answered_at, answers


def _hot(broker: Any, config: Config) -> list[float]:
    ping = broker.worker_proxy((TRIVIAL, "many0")).ping
    timed(ping, config.warmup)
    samples: list[float] = []
    for _ in range(config.rounds):
        samples += timed(ping, config.max_block // 2 or 1)
    return samples


def many_workers(results: Results, config: Config, lane: bool = True) -> None:
    import psutil

    n = config.many_workers
    me = psutil.Process()
    host_before = me.memory_info().rss
    used_before = psutil.virtual_memory().used
    broker = new_broker(call_timeout=300, max_workers=None, lane=lane)  # more than the default bound, on purpose
    suffix = "" if lane else "_jupyter"
    try:
        total, answered_at, answers = _start_many(broker, n)
        answered = sum(1 for a in answers if a == 1)
        errors = sorted({f"{type(a).__name__}: {a}" for a in answers if isinstance(a, BaseException)})
        time.sleep(1.0)
        pids = [info.pid for info in broker.workers if info.pid is not None]
        found = [memory(pid) for pid in pids]
        host_after = me.memory_info().rss
        used_after = psutil.virtual_memory().used
        results.add(
            Series(
                "many.answered_at" + suffix,
                "many",
                f"{n} first calls at once: when each answered" + ("" if lane else ", lane=False"),
                answered_at,
                note="seconds from the start until each worker's first reply",
            )
        )
        label = f"hot call with {n} workers alive" + ("" if lane else ", lane=False")
        results.add(Series("many.hot" + suffix, "many", label, _hot(broker, config)))
    finally:
        start = time.perf_counter()
        broker.close()
        closing = time.perf_counter() - start
    results.facts["many_workers" + suffix] = {
        "workers": n,
        "answered": answered,
        "errors": errors[:5],
        "total_s": total,
        "close_s": closing,
        "worker_rss_mib_total": sum(m["rss_mib"] for m in found),
        "worker_uss_mib_total": sum(m["uss_mib"] for m in found),
        "worker_rss_mib_median": statistics.median(m["rss_mib"] for m in found) if found else None,
        "worker_uss_mib_median": statistics.median(m["uss_mib"] for m in found) if found else None,
        "host_rss_growth_mib": (host_after - host_before) / MiB,
        "system_used_growth_mib": (used_after - used_before) / MiB,
    }


def _generous(factory: Any) -> dict[str, Any] | None:
    """Keyword arguments that make the cleaner check everything but never evict: limits far out of reach."""
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(factory).parameters.items():
        lower = name.lower()
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if any(word in lower for word in ("memory", "ceiling", "bytes", "rss", "uss")):
            kwargs[name] = 1 << 50
        elif any(word in lower for word in ("count", "workers", "max", "limit")):
            kwargs[name] = 1_000_000
        elif param.default is param.empty:
            return None
    return kwargs


def cleaner(results: Results, config: Config) -> None:
    """With the cleaner installed and many workers alive: the hot call, and what each event costs the caller."""
    try:
        from wb_magic.cleaner import cleaner as make_cleaner  # type: ignore[attr-defined]
    except ImportError:
        results.skip("cleaner", "not available yet: wb_magic.cleaner has no cleaner()")
        return
    from wb_magic import WorkerEvent

    kwargs = _generous(make_cleaner)
    if kwargs is None:
        results.skip("cleaner", f"cleaner{inspect.signature(make_cleaner)} needs arguments this suite cannot guess")
        return
    the_cleaner = make_cleaner(**kwargs)
    n = config.many_workers
    with new_broker(call_timeout=300, worker_cleaner=the_cleaner, max_workers=None) as broker:
        total, _, answers = _start_many(broker, n)
        results.facts["cleaner"] = {
            "arguments": {k: v for k, v in kwargs.items()},
            "workers": n,
            "answered": sum(1 for a in answers if a == 1),
            "start_s": total,
        }
        results.add(Series("cleaner.hot", "cleaner", f"hot call with the cleaner, {n} workers", _hot(broker, config)))
        worker = broker.worker_for((TRIVIAL, "many0"))
        for kind in ("get", "create"):
            event = WorkerEvent(kind, broker, worker, worker.key, worker.module, worker.segregation_id)  # type: ignore[arg-type,union-attr]
            count = config.cleaner_events if kind == "get" else max(5, config.cleaner_events // 100)
            results.add(
                Series(
                    f"cleaner.{kind}",
                    "cleaner",
                    f"cleaner({kind!r} event), {n} workers",
                    timed(lambda event=event: the_cleaner(event), count),  # type: ignore[misc]
                    note="the cleaner called directly, as the broker calls it",
                )
            )
        for name in dir(the_cleaner):  # a memory check of its own, if the cleaner exposes one
            method = getattr(the_cleaner, name, None)
            if "memory" not in name.lower() or name.startswith("__") or not callable(method):
                continue
            try:
                required = [
                    p for p in inspect.signature(method).parameters.values() if p.default is p.empty and p.kind < 2
                ]
            except (TypeError, ValueError):
                continue
            if not required:
                samples = timed(method, max(5, config.cleaner_events // 100))
                results.add(Series(f"cleaner.{name}", "cleaner", f"cleaner.{name}(), {n} workers", samples))
