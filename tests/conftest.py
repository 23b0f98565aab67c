"""Shared fixtures: real brokers with real worker kernels; nothing of ours is mocked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from wb_magic import WorkerBroker

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def workers_dir() -> Path:
    return WORKERS


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
