"""Interrupts that race their call: a timeout of a call still queued behind another must still stop it."""

from __future__ import annotations

import io
import threading

import pytest

from wb_magic import CallTimeout, WorkerBroker

pytestmark = pytest.mark.usefixtures("link_kind")

TIMEOUT = 60


class Announcing(io.StringIO):
    """A stdout that sets an event when a text is written to it (what the worker prints reaches the caller's)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def write(self, text: str) -> int:
        if self.text in text:
            self.seen.set()
        return super().write(text)


def test_a_call_that_timed_out_in_the_queue_is_stopped_when_it_starts(workers_dir, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    stdout = Announcing("waiting")
    monkeypatch.setattr("sys.stdout", stdout)
    with WorkerBroker(call_timeout=TIMEOUT, warm_workers=0) as broker:
        values = broker.worker_proxy(workers_dir / "values.py")
        assert values.echo("up") == "up"
        first: list[str] = []
        holder = threading.Thread(target=lambda: first.append(values.wait_for_file(str(gate))))
        holder.start()
        assert stdout.seen.wait(TIMEOUT)  # the worker is busy with the first call
        # queued behind it, this call times out before it starts: its interrupt arrives while it waits
        with pytest.raises(CallTimeout):
            values.block_until_interrupted.with_timeout(0.5)()
        gate.touch()
        holder.join(TIMEOUT)
        assert first == ["released"]
        # the timed-out call must not run on once it starts: this one would wait behind it for ever
        assert values.echo.with_timeout(TIMEOUT)("after") == "after"
