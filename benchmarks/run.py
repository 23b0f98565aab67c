"""``python -m benchmarks.run [--quick] [--out DIR] [--only GROUPS] [--peers NAMES]``: run the suite, write the report.

Writes DIR/benchmarks.md (targets and tables), DIR/benchmarks.json (every sample) and DIR/benchmarks.png (the
latency distributions; only when matplotlib is installed). Exits 1 if a benchmark of wb-magic itself failed;
a peer that is not installed or does not start is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import hot, payload, report, scale, startup, wire_micro
from .config import FULL, QUICK, Config
from .harness import ROOT, Results

GROUPS: dict[str, Callable[[Results, Config, set[str] | None], None]] = {
    "hot": hot.hot_calls,
    "pipelined": hot.pipelined,
    "w2w": lambda r, c, _: hot.worker_to_worker(r, c),
    "payload": lambda r, c, _: payload.run(r, c),
    "startup": lambda r, c, _: startup.run(r, c),
    "many": lambda r, c, _: (scale.many_workers(r, c), scale.many_workers(r, c, lane=False)),  # type: ignore[func-returns-value]
    "cleaner": lambda r, c, _: scale.cleaner(r, c),
    "wire": lambda r, c, _: wire_micro.run(r, c),
}


def _names(text: str | None) -> set[str] | None:
    return None if not text else {name.strip() for name in text.split(",") if name.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations of everything (the smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where to write the report")
    parser.add_argument("--only", help=f"comma-separated groups, of: {', '.join(GROUPS)}")
    parser.add_argument("--peers", help="comma-separated peers for the hot and pipelined calls (wb_magic always runs)")
    options = parser.parse_args(argv)
    config = QUICK if options.quick else FULL
    groups = _names(options.only) or set(GROUPS)
    unknown = groups - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    peers = _names(options.peers)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    results = Results(config.quick)
    try:
        for name, run in GROUPS.items():
            if name not in groups:
                continue
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            try:
                run(results, config, peers)
            except Exception as exc:
                traceback.print_exc()
                results.errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
    finally:
        _reap()

    rows = report.targets(results)
    data = results.to_json()
    data["targets"] = rows
    (out / "benchmarks.json").write_text(_dump(data))
    plotted = report.plot(results, out / "benchmarks.png")
    (out / "benchmarks.md").write_text(report.markdown(results, rows, "benchmarks.png" if plotted else None))
    width = max(len(r["what"]) for r in rows)
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:5.2f}  "
        print(f"{r['what']:<{width}}  {r['status']:<4}  {ratio}{r['measured']}")
    print(f"wrote {out / 'benchmarks.md'}, benchmarks.json" + (", benchmarks.png" if plotted else ""))
    return 1 if results.errors else 0


def _dump(data: dict) -> str:
    """JSON, indented, with each series on one line (samples are many)."""
    series = data.pop("series")
    text = json.dumps(data, indent=1, ensure_ascii=False)
    lines = ",\n  ".join(json.dumps(s, ensure_ascii=False) for s in series)
    data["series"] = series
    return text[:-2] + f',\n "series": [\n  {lines}\n ]\n}}\n'


def _reap() -> None:
    """Stop any process this run started that is still alive (a peer server whose close failed, say)."""
    try:
        import psutil
    except ImportError:
        return
    left = psutil.Process().children(recursive=True)
    for process in left:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=3)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    sys.exit(main())
