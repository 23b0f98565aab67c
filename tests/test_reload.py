"""Cache-busting: re-executing a module from its source, seen through old proxies and new."""

from __future__ import annotations

import os
import shutil

import pytest

from wb_magic import WorkerBroker, WorkerSpec

pytestmark = pytest.mark.usefixtures("link_kind")  # with the lane and with the Jupyter channels


@pytest.fixture
def broker_writing_bytecode():
    """Workers that write .pyc files, so that a stale-bytecode bug would show (PYTHONDONTWRITEBYTECODE hides it)."""
    spec = WorkerSpec(env={"PYTHONDONTWRITEBYTECODE": None})
    with WorkerBroker(worker_constructor=lambda module, sid: spec, call_timeout=60) as broker:
        yield broker


def test_reload_runs_new_code_through_old_and_new_proxies(broker_writing_bytecode, tmp_path):
    broker = broker_writing_bytecode
    module = tmp_path / "greeter.py"
    module.write_text("def greet():\n    return 'v1'\n")
    old = broker.worker_proxy(module)
    assert old.greet() == "v1"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the test itself imports nothing, but be explicit
    module.write_text("def greet():\n    return 'v2'\n")  # same size, same second: mtime-keyed caches miss it
    assert old.greet() == "v1"  # nothing changes until the module is reloaded
    broker.worker_import(module, cache_buster="1")
    assert old.greet() == "v2"
    assert broker.worker_proxy(module).greet() == "v2"
    module.write_text("def greet():\n    return 'v3'\n\ndef added():\n    return 'new function'\n")
    broker.worker_import(module, cache_buster="2")
    assert old.greet() == "v3"
    assert old.added() == "new function"
    assert "added" in dir(old)


def test_reload_reaches_every_worker_of_the_module_and_resets_state(broker_writing_bytecode, workers_dir, tmp_path):
    broker = broker_writing_bytecode
    folder = tmp_path / "mods"
    shutil.copytree(workers_dir, folder)
    a = broker.worker_proxy(folder / "stateful.py")
    b = broker.worker_proxy((folder / "stateful.py", "b"))
    a.put("changed a")
    b.put("changed b")
    assert (a.get(), b.get()) == ("changed a", "changed b")
    broker.worker_import(folder / "stateful.py", cache_buster="reload-1")
    # the module ran again in both workers (state back to "initial"); its dependency was not re-imported
    assert (a.get(), b.get()) == ("initial", "initial")
    assert (a.executed(), b.executed()) == (2, 2)


def test_a_reload_with_a_syntax_error_reports_it_and_keeps_serving(broker, tmp_path):
    module = tmp_path / "fragile.py"
    module.write_text("def f():\n    return 1\n")
    proxy = broker.worker_proxy(module)
    assert proxy.f() == 1
    module.write_text("def f(:\n")
    with pytest.raises(SyntaxError):
        broker.worker_import(module, cache_buster="broken")
    module.write_text("def f():\n    return 2\n")
    broker.worker_import(module, cache_buster="fixed")
    assert proxy.f() == 2


def test_worker_import_without_buster_just_imports(tmp_path):
    module = tmp_path / "side.py"
    module.write_text("import os\nopen(os.path.join(os.path.dirname(__file__), 'ran'), 'a').write('x')\n")
    with WorkerBroker() as broker:
        broker.worker_import(module)
        broker.worker_import(module)
    assert (tmp_path / "ran").read_text() == "x"


def test_aworker_import_starts_and_reloads_from_a_coroutine(broker, workers_dir):
    import asyncio

    target = workers_dir / "stateful.py"

    async def main():
        await broker.aworker_import(target)  # starts the worker and imports: the loop serves on meanwhile
        stateful = broker.worker_proxy(target, asynchronous=True)
        first = await stateful.executed()
        await broker.aworker_import(target, cache_buster="2")
        return first, await stateful.executed()

    assert asyncio.run(main()) == (1, 2)
