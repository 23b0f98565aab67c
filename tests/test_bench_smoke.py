"""A tiny run of the benchmark suite (``python -m benchmarks.run --quick``), so that it keeps working.

Real processes and sockets, as in ``make bench``, but a few calls of each. Nothing here asserts a time: only
that every benchmark produced numbers and that the report files were written. Peers that are not installed
(the ``bench`` extra) must show up as skipped, not as failures.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALWAYS = [
    "hot.wb_magic",
    "hot.pyzmq",
    "hot.pyzmq_jupyter",
    "hot.mp_pipe",
    "hot.process_pool",
    "hot.ipykernel",
    "pipelined1.wb_magic",
    "pipelined1.pyzmq",
    "pipelined1.mp_pipe",
    "pipelined2.wb_magic",
    "pipelined2.pyzmq",
    "w2w.direct",
    "w2w.inner",
    "w2w.outer",
    "payload.pyzmq",
    "payload.bytes",
    "payload.numpy",
    "startup.import_zmq",
    "startup.wb_cold",
    "startup.wb_live",
    "startup.ipykernel",
    "many.answered_at",
    "many.hot",
    "wire.jupyter_client",
    "wire.worker_kernel",
]
OPTIONAL_PEERS = {"rpyc": "rpyc", "pyro5": "Pyro5", "ipyparallel": "ipyparallel"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return out, json.loads((out / "benchmarks.json").read_text())


def _sane(summary: dict) -> None:
    assert summary["n"] > 0
    for key in ("median", "p99", "min", "max", "mean"):
        assert math.isfinite(summary[key]) and summary[key] > 0, summary
    assert summary["min"] <= summary["median"] <= summary["p99"] <= summary["max"]


@pytest.mark.timeout(450)
def test_every_benchmark_produced_numbers(run: tuple[Path, dict]) -> None:
    _, data = run
    assert data["errors"] == {}
    series = {s["id"]: s for s in data["series"]}
    for id in ALWAYS:
        assert id in series, f"{id} missing; skipped: {data['skipped']}"
        _sane(series[id]["summary"])
        assert len(series[id]["samples"]) == series[id]["summary"]["n"]


@pytest.mark.timeout(450)
def test_missing_peers_and_features_are_reported_as_skipped(run: tuple[Path, dict]) -> None:
    _, data = run
    series = {s["id"] for s in data["series"]}
    for name, module in OPTIONAL_PEERS.items():
        if importlib.util.find_spec(module) is not None:
            assert f"hot.{name}" in series, data["skipped"]
        else:
            assert f"hot.{name}" in data["skipped"]
    from wb_magic import WorkerBroker, cleaner

    if "warm_workers" in inspect.signature(WorkerBroker).parameters:
        assert "startup.wb_warm" in series
    else:
        assert "not available yet" in data["skipped"]["startup.wb_warm"]
    if hasattr(cleaner, "cleaner"):
        assert "cleaner.get" in series
    else:
        assert "not available yet" in data["skipped"]["cleaner"]


@pytest.mark.timeout(450)
def test_memory_and_many_workers(run: tuple[Path, dict]) -> None:
    _, data = run
    facts = data["facts"]
    assert facts["wb_idle_worker"]["rss_mib"] > facts["wb_idle_worker"]["uss_mib"] > 0
    assert facts["ipykernel_idle"]["rss_mib"] > 0
    many = facts["many_workers"]
    assert many["answered"] == many["workers"] > 0
    assert many["worker_rss_mib_total"] > 0


@pytest.mark.timeout(450)
def test_report_files(run: tuple[Path, dict]) -> None:
    out, data = run
    statuses = {row["what"]: row["status"] for row in data["targets"]}
    assert set(statuses.values()) <= {"pass", "near", "FAIL", "n/a"}
    assert statuses["hot call, small args, sync proxy: median"] != "n/a"
    assert statuses["worker-to-worker call through the broker"] != "n/a"
    text = (out / "benchmarks.md").read_text()
    assert "## Targets" in text and data["machine"]["python"] in text and data["machine"]["cpu"] in text
    assert "| wb-magic sync proxy |" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_web_benchmark_runs(tmp_path):
    """``python -m benchmarks.web --quick``: both servers start, answer every request, and the table is written
    (one row per server and number of clients). Nothing about the numbers is asserted."""
    from worker_kernel.sandbox import landlock_abi

    if landlock_abi() < 6:
        pytest.skip("the example app's untrusted workers are sandboxed: Landlock ABI 6 or later")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.web", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in (tmp_path / "benchmarks-web.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 4  # the header, its rule, and 2 servers x 2 client counts
    assert all(" ms |" in row for row in rows[2:])
