"""Adopting a worker kernel that something else started (as another provisioner or host would)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from jupyter_client.connect import write_connection_file

from wb_magic import WorkerBroker, WorkerDied


@pytest.fixture
def foreign_kernel(tmp_path):
    """A worker kernel started by hand from a connection file, not by the broker."""
    path, info = write_connection_file(str(tmp_path / "kernel.json"), key=os.urandom(16).hex().encode())
    process = subprocess.Popen([sys.executable, "-m", "worker_kernel", "-f", path])
    yield path, process
    if process.poll() is None:
        process.kill()
    process.wait(30)


def test_attach_calls_and_shuts_down(foreign_kernel, workers_dir):
    path, process = foreign_kernel
    with WorkerBroker(warm_workers=0) as broker:
        info = broker.attach(path, workers_dir / "values.py")
        assert info.pid is None and info.module == str(workers_dir / "values.py")
        assert info.connection_file == path  # what `jupyter console --existing` takes
        values = broker.worker_proxy(workers_dir / "values.py")
        assert values.pid() == process.pid
        assert values.echo({"a": (1, 2)}) == {"a": (1, 2)}
        with pytest.raises(ValueError, match="already has a worker"):
            broker.attach(path, workers_dir / "values.py")
    assert process.wait(30) == 0  # the broker shut it down, politely


def test_a_silent_attached_worker_is_declared_dead(foreign_kernel, workers_dir):
    path, process = foreign_kernel
    with WorkerBroker(warm_workers=0) as broker:
        broker.attach(path, workers_dir / "values.py")
        values = broker.worker_proxy(workers_dir / "values.py")
        assert values.echo(1) == 1
        process.send_signal(signal.SIGSTOP)  # hung: alive, but answering nothing, heartbeat included
        try:
            with pytest.raises(WorkerDied, match="heartbeat"):
                values.echo(2)
        finally:
            process.send_signal(signal.SIGCONT)
        assert broker.workers == []
