"""``python -m benchmarks.profile [--seconds S] [--out DIR]``: where a hot call's microseconds go, on both sides.

A sync proxy calls ``hello("World")`` in a loop (``--mode pipelined``: an async proxy, 100 calls gathered at a
time) while py-spy samples the host process and the worker process
at once (``--idle``, so that samples stand for wall time; py-spy needs root or ptrace rights). Each side's
busy threads' samples are turned into microseconds per call: self time by function, and time inside each of our
own functions. Then pyinstrument profiles the host in-process, for a call tree. Writes to DIR:
``profile-summary.txt``, ``profile-host.raw`` / ``profile-worker.raw`` (collapsed stacks, for flame graphs)
and ``profile-host-pyinstrument.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .harness import MODULES, ROOT, new_broker

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, path: Path, seconds: float, rate: int, native: bool = False) -> subprocess.Popen:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(int(seconds))]
    command += ["--format", "raw", "--output", str(path), "--idle", "--threads"]
    command += ["--native"] if native else ["--nonblocking"]  # native stacks need the process paused
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def parse(path: Path) -> dict[str, Counter[tuple[str, ...]]]:
    """Collapsed stacks by thread: ``{thread: Counter(stack -> samples)}``, frames root first."""
    threads: dict[str, Counter[tuple[str, ...]]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        body = tuple(f for f in frames if not f.startswith(("thread", "process")))
        threads.setdefault(thread, Counter())[body] += int(count)
    return threads


def _name(frame: str) -> str:
    """``function (file:line)`` -> ``function (file)``: time per function, whatever the line."""
    found = FRAME.match(frame)
    if found is None:
        return frame
    return f"{found['function']} ({found['file']})"


def summarize(stacks: Counter[tuple[str, ...]], per_sample_us: float, top: int) -> list[str]:
    total = sum(stacks.values())
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        if stack:
            self_time[_name(stack[-1])] += count
        for name in {_name(f) for f in stack}:
            inclusive[name] += count
    lines = [f"  {total} samples = {total * per_sample_us:.0f} us per call on this thread", "  self time:"]
    for name, count in self_time.most_common(top):
        lines.append(f"    {count * per_sample_us:7.1f} us  {100 * count / total:5.1f} %  {name}")
    lines.append("  inclusive time (our code and pyzmq):")
    ours = [(n, c) for n, c in inclusive.most_common() if re.search(r"wb_magic|worker_kernel|zmq/|json", n)]
    for name, count in ours[: 2 * top]:
        lines.append(f"    {count * per_sample_us:7.1f} us  {100 * count / total:5.1f} %  {name}")
    return lines


def _main_thread(threads: dict[str, Counter[tuple[str, ...]]]) -> Counter[tuple[str, ...]]:
    """The main thread's stacks: the caller on the host, the event loop in the worker."""
    for name, stacks in threads.items():
        if "MainThread" in name:
            return stacks
    return max(threads.values(), key=lambda stacks: sum(stacks.values()), default=Counter())


def _idle(stacks: Counter[tuple[str, ...]]) -> bool:
    """A thread that sat in one place nearly all the time (a heartbeat, a control channel)."""
    total = sum(stacks.values())
    return total == 0 or stacks.most_common(1)[0][1] > 0.95 * total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("hot", "pipelined"), default="hot", help="sync calls, or async gathers")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (pyzmq, libzmq)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    options = parser.parse_args(argv)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    report: list[str] = []
    with new_broker(call_timeout=60) as broker:
        target = str(MODULES / "target.py")
        hello = broker.worker_proxy(target).hello
        ahello = broker.worker_proxy(target, asynchronous=True).hello
        loop = asyncio.new_event_loop()

        async def gather() -> None:
            await asyncio.gather(*(ahello("World") for _ in range(100)))

        def batch() -> None:  # 100 calls
            if options.mode == "pipelined":
                loop.run_until_complete(gather())
            else:
                for _ in range(100):
                    hello("World")

        for _ in range(20):
            batch()
        worker = broker.worker_for(target)
        assert worker is not None and worker.pid is not None
        paths = {"host": out / "profile-host.raw", "worker": out / "profile-worker.raw"}
        spies = {
            "host": record(os.getpid(), paths["host"], options.seconds, options.rate, options.native),
            "worker": record(worker.pid, paths["worker"], options.seconds, options.rate, options.native),
        }
        # calls run from before py-spy attaches until after it stops, so every sample falls within the loop
        calls, start = 0, time.perf_counter()
        while any(spy.poll() is None for spy in spies.values()) and time.perf_counter() - start < 3 * options.seconds:
            batch()
            calls += 100
        wall = time.perf_counter() - start
        for side, spy in spies.items():
            _, err = spy.communicate(timeout=30)
            if spy.returncode != 0 or not paths[side].exists():
                raise RuntimeError(f"py-spy on the {side} failed: {err.strip()}")
        per_call_us = 1e6 * wall / calls
        what = "100 async calls at once (gather)" if options.mode == "pipelined" else "a sync proxy, one at a time"
        report.append(
            f"hello('World') through {what}: {calls} calls in {wall:.1f} s, {per_call_us:.0f} us each "
            f"(under py-spy at {options.rate} Hz on both sides)"
        )
        sides = {"host": parse(paths["host"]), "worker": parse(paths["worker"])}
        main_samples = sum(_main_thread(sides["host"]).values())
        # the host's main thread is busy with calls the whole time: its samples stand for the wall time, and
        # every thread on both sides is sampled at the same rate over the same time
        per_sample_us = per_call_us / max(1, main_samples)
        for side, threads in sides.items():
            for name, stacks in threads.items():
                if "MainThread" not in name and _idle(stacks):
                    continue
                pid = os.getpid() if side == "host" else worker.pid
                report += ["", f"== {side} (pid {pid}), {name.split(':', 1)[-1].strip()}, per call"]
                report += summarize(stacks, per_sample_us, options.top)

        # pyinstrument: a call tree of the host side, in-process
        try:
            from pyinstrument import Profiler
        except ImportError:
            report += ["", "(pyinstrument is not installed: no call tree)"]
        else:
            profiler = Profiler(interval=0.0001)
            n = max(10, calls // 400)
            profiler.start()
            for _ in range(n):
                batch()
            profiler.stop()
            loop.close()
            text = profiler.output_text(unicode=True, color=False, show_all=False)
            (out / "profile-host-pyinstrument.txt").write_text(f"{100 * n} calls of hello('World')\n{text}")
    summary = "\n".join(report) + "\n"
    (out / "profile-summary.txt").write_text(summary)
    print(summary)
    print(f"wrote {out}/profile-summary.txt, profile-host.raw, profile-worker.raw, profile-host-pyinstrument.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
