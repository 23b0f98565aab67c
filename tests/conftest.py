"""Shared fixtures: real brokers with real worker kernels; nothing of ours is mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

# The suite's own Jupyter runtime folder (where every worker's connection file goes), set before anything asks
# Jupyter for it: other suites running on the machine write to the shared one, and a check of what this suite
# leaves behind must not see their files.
RUNTIME_DIR = Path(tempfile.mkdtemp(prefix="wb-magic-tests-runtime-"))
os.environ["JUPYTER_RUNTIME_DIR"] = str(RUNTIME_DIR)

from wb_magic import WorkerBroker, launcher  # noqa: E402
from wb_magic.launcher import remove_orphaned_connection_files  # noqa: E402

WORKERS = Path(__file__).parent / "workers"


def dead_workers_files() -> list[str]:
    """Connection files in the runtime folder whose worker no longer runs: no live process was started with
    the file on its command line (``python -m worker_kernel -f FILE``)."""
    files = {str(path) for path in RUNTIME_DIR.glob("wb-worker-*.json")}
    if not files:
        return []
    for process in psutil.process_iter(["cmdline"]):
        files.difference_update(process.info["cmdline"] or ())
    return sorted(os.path.basename(path) for path in files)


@pytest.fixture(autouse=True, scope="module")
def _no_connection_files_of_dead_workers():
    """After each test module: every worker that ended has had its connection file removed."""
    yield
    assert dead_workers_files() == [], "connection files of workers that have ended were left behind"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)


@pytest.fixture
def workers_dir() -> Path:
    return WORKERS


@pytest.fixture(params=["lane", "jupyter"])
def link_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test module twice where the two links could behave differently: with the lane (the default for
    local workers) and with ``lane=None`` meaning the Jupyter channels (``WorkerSpec(lane=False)``).
    Use it as ``pytestmark = pytest.mark.usefixtures("link_kind")``; sandboxed workers keep their lane."""
    monkeypatch.setattr(launcher, "LANE_BY_DEFAULT", request.param == "lane")
    return request.param


@pytest.fixture
def broker():
    with WorkerBroker(call_timeout=60) as b:
        yield b


@pytest.fixture(scope="session")
def kernel_spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder holding the ``wb-worker`` kernel spec, for tools that look kernels up by name."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "wb-worker"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "worker_kernel", "-f", "{connection_file}"],
                "display_name": "wb-magic worker",
                "language": "python",
                "interrupt_mode": "message",
            }
        )
    )
    os.environ["JUPYTER_PATH"] = str(root)
    return root


# What a host script calls once its worker runs: it tells the test the worker's pid, waits for the word, and
# ends without closing its broker (killed, or by os._exit), as a host that crashes would.
_HOST_PRELUDE = """
import os, sys

def end_when_told(worker_pid, how):
    sys.__stdout__.write(f"{worker_pid}\\n")
    sys.__stdout__.flush()
    sys.stdin.readline()
    if how == "kill":
        os.kill(os.getpid(), 9)
    os._exit(0)

"""


@pytest.fixture
def host_that_ends() -> Callable[[str, int], None]:
    """Run a script as a host that starts a worker and calls ``end_when_told(pid, "kill" | "exit")``; check
    that the worker, and every other worker of the host, ends with it and that its connection file, which the
    host could not remove, is removed by the next broker to launch a worker (`remove_orphaned_connection_files`)."""

    def run(script: str, exit_code: int) -> None:
        host = subprocess.Popen(
            [sys.executable, "-c", _HOST_PRELUDE + script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            line = host.stdout.readline()  # type: ignore[union-attr]
            assert line.strip().isdigit(), f"the host did not report its worker: {line!r}"
            worker = psutil.Process(int(line))
            assert worker.ppid() == host.pid  # the host's worker, running
            command = worker.cmdline()
            connection_file = command[command.index("-f") + 1]
            assert os.path.isfile(connection_file)
            others = [  # the host's warm workers, say, still starting perhaps
                process
                for process in psutil.process_iter(["cmdline"])
                if any(f"wb-worker-{host.pid}-" in part for part in process.info["cmdline"] or ())
            ]
            host.stdin.write("end\n")  # type: ignore[union-attr]
            host.stdin.flush()  # type: ignore[union-attr]
            assert host.wait(timeout=60) == exit_code
            worker.wait(timeout=30)  # psutil.TimeoutExpired if the worker outlives its host
            _, alive = psutil.wait_procs(others, timeout=30)
            assert not alive, f"the host's other workers outlived it: {alive}"
        finally:
            host.kill()
            host.wait()
        remove_orphaned_connection_files()
        assert not os.path.exists(connection_file)
        assert not [name for name in os.listdir(RUNTIME_DIR) if name.startswith(f"wb-worker-{host.pid}-")]

    return run
