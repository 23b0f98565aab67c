"""``python -m benchmarks.ab REV [--pairs N]``: this tree against git revision REV, measured in alternation.

On a noisy machine (this project's 2-core VM has slow and fast phases), two runs of `make bench` minutes apart
cannot tell a 5% change from the weather. This runs the same small measurement (hot calls, pipelined calls,
worker-to-worker calls) in a fresh process for each tree in turn, N pairs of them, and prints the median of each
tree's results. REV is checked out in a temporary git worktree, removed afterwards; each run imports wb-magic
only from its own tree (PYTHONPATH), workers included, and both run this tree's `ab_run.py` on the same modules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness import ROOT

MEASURES = ("hot median", "hot p99", "hot cpu", "pipelined calls/s", "worker to worker", "direct")


def run_tree(tree: Path) -> dict[str, float]:
    """One measurement (`ab_run.py`, the same workload for both) with wb-magic imported from ``tree``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    command = [sys.executable, str(Path(__file__).with_name("ab_run.py")), str(ROOT / "benchmarks" / "modules")]
    out = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the git revision to compare this tree with (e.g. HEAD~3, a commit id)")
    parser.add_argument("--pairs", type=int, default=6, help="runs of each tree, alternating (default 6)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wb-ab-") as scratch:
        other = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), options.rev], check=True)
        try:
            trees = {options.rev: other, "this tree": ROOT}
            results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for i in range(options.pairs):
                for name, tree in trees.items():
                    results[name].append(run_tree(tree))
                    print(
                        f"pair {i + 1}: {name:>12}: " + ", ".join(f"{k} {v:,.0f}" for k, v in results[name][-1].items())
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    print(f"\nmedians of {options.pairs} runs each (µs, or calls/s; hot cpu: host and worker CPU µs a hot call):")
    for name, runs in results.items():
        print(f"{name:>12}: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs):,.0f}" for k in MEASURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
