"""Worker lifecycle: lifecycle events, the LRU cleaner (count, memory, idleness, busy workers) and the warm pool."""

from __future__ import annotations

import io
import shutil
import threading

import pytest

from wb_magic import WorkerBroker, WorkerEvent, WorkerSpec
from wb_magic.cleaner import LRUCleaner, cleaner

pytestmark = pytest.mark.usefixtures("link_kind")  # with the lane and with the Jupyter channels

TIMEOUT = 60


class Recorder:
    """A custom cleaner: records every event, passes it on, and lets a test wait for one."""

    def __init__(self, inner=None):
        self.inner = inner
        self.events: list[WorkerEvent] = []
        self.changed = threading.Condition()

    def __call__(self, event: WorkerEvent) -> None:
        if self.inner is not None:
            self.inner(event)
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def removed(self) -> list:
        return [e.key for e in self.events if e.type == "remove"]

    def wait_removed(self, count: int = 1) -> list:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.removed()) >= count, TIMEOUT), self.events
            return self.removed()


@pytest.fixture
def copies(tmp_path, workers_dir):
    """Distinct module files (one worker each) that share the test workers' code."""
    paths = []
    for name in "abcd":
        path = tmp_path / f"mod_{name}.py"
        shutil.copy(workers_dir / "values.py", path)
        paths.append(path)
    return paths


def test_custom_cleaner_receives_every_event_in_order(copies):
    recorder = Recorder()
    with WorkerBroker(worker_cleaner=recorder, warm_workers=0) as broker:
        a = broker.worker_proxy(copies[0])
        a.echo(1)
        a.echo(2)
        broker.remove_worker(copies[0])
        broker.terminate()
        kinds = [(e.type, e.module and e.module.rsplit("/", 1)[-1]) for e in recorder.events]
    # the first call: one lookup that creates (describe) and one that finds it per call
    assert kinds[0] == ("create", "mod_a.py")
    assert kinds[-2:] == [("remove", "mod_a.py"), ("terminate", None)]
    assert set(kinds[1:-2]) == {("get", "mod_a.py")}
    create = recorder.events[0]
    assert create.broker is broker and create.key == (str(copies[0]), None) and create.segregation_id is None
    assert create.worker is not None and create.worker.pid


def test_lru_order_under_a_count_limit(copies):
    recorder = Recorder(cleaner(worker_count=2))
    with WorkerBroker(worker_cleaner=recorder, warm_workers=0) as broker:
        a, b, c = (broker.worker_proxy(path) for path in copies[:3])
        a.echo(1)
        b.echo(1)
        a.echo(2)  # b is now the least recently used
        c.echo(1)  # a third worker: one must go
        assert recorder.wait_removed() == [(str(copies[1]), None)]
        assert sorted(w.module for w in broker.workers) == [str(copies[0]), str(copies[2])]
        assert b.echo("back") == "back"  # a call to an evicted worker starts a fresh one
        assert recorder.wait_removed(2)[1] == (str(copies[0]), None)  # ... and evicts the next LRU


def test_a_busy_worker_is_never_evicted(copies, monkeypatch):
    lru = LRUCleaner(worker_count=1)
    recorder = Recorder(lru)
    gate = copies[3].with_suffix(".open")
    with WorkerBroker(worker_cleaner=recorder, warm_workers=0) as broker:
        busy = broker.worker_proxy(copies[0])
        busy.echo(0)
        started = threading.Event()

        class Signal(io.StringIO):
            def write(self, text):
                if "waiting" in text:
                    started.set()
                return super().write(text)

        monkeypatch.setattr("sys.stdout", Signal())
        result = []
        caller = threading.Thread(target=lambda: result.append(busy.wait_for_file(str(gate))))
        caller.start()
        assert started.wait(TIMEOUT)
        other = broker.worker_proxy(copies[1])
        other.echo(1)  # over the count: the busy worker is older, but it may not go, nor the new one
        lru.clean(broker)
        assert lru.evicted == [] and len(broker.workers) == 2
        gate.touch()
        caller.join(TIMEOUT)
        assert result == ["released"]
        lru.clean(broker)  # now idle: the older one goes
        assert lru.evicted == [(str(copies[0]), None)]


def test_eviction_under_a_memory_ceiling(copies):
    lru = LRUCleaner(check_interval=0.05)
    recorder = Recorder(lru)
    with WorkerBroker(worker_cleaner=recorder, warm_workers=0) as broker:
        a, b, c = (broker.worker_proxy(path) for path in copies[:3])
        for proxy in (a, b, c):
            proxy.echo(1)
        lru.memory_ceiling = lru.memory() + 150 * 1024 * 1024
        a.allocate(100)
        b.allocate(100)  # now about 50 MB over the ceiling
        c.echo(2)
        assert recorder.wait_removed()[0] == (str(copies[0]), None)  # the least recently used
        assert lru.memory() <= lru.memory_ceiling
        assert b.echo("alive") == "alive" and c.echo("alive") == "alive"


def test_idle_workers_are_culled(copies):
    recorder = Recorder(cleaner(idle_timeout=0.2, check_interval=0.05))
    with WorkerBroker(worker_cleaner=recorder, warm_workers=0) as broker:
        broker.worker_proxy(copies[0]).echo(1)
        assert recorder.wait_removed() == [(str(copies[0]), None)]
        assert broker.workers == []


def test_the_warm_pool_serves_the_first_call(copies):
    with WorkerBroker(warm_workers=1) as broker:
        assert broker.wait_for_warm_pool(TIMEOUT)
        [warm] = broker.warm_pids
        assert broker.worker_proxy(copies[0]).pid() == warm  # the new module went to the waiting kernel
        assert broker.wait_for_warm_pool(TIMEOUT)  # and the pool refills
        assert broker.warm_pids != [warm]


def test_the_warm_pool_is_not_used_for_other_specs(copies):
    special = WorkerSpec(env={"WB_SPECIAL": "1"})
    with WorkerBroker(warm_workers=1, worker_constructor=lambda module, sid: special) as broker:
        assert broker.wait_for_warm_pool(TIMEOUT)
        [warm] = broker.warm_pids
        proxy = broker.worker_proxy(copies[0])
        assert proxy.pid() != warm
        assert proxy.environment("WB_SPECIAL") == "1"
        assert broker.warm_pids == [warm]


def test_a_workers_atexit_handlers_run_at_shutdown(broker, workers_dir, tmp_path):
    """A worker ends without Python's finalisation, but its modules' atexit handlers still run."""
    farewell = workers_dir / "farewell.py"
    note = tmp_path / "note.txt"
    broker.worker_proxy(farewell).say_goodbye_to(str(note))
    assert not note.exists()
    assert broker.remove_worker(farewell)  # returns once the process has ended
    assert note.read_text() == "goodbye"
