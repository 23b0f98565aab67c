"""Routing is a privilege: what a sandboxed worker can make the broker do for it, attacked for real.

The broker is set up as a new user would, with the README's constructor (modules under an ``untrusted`` folder
are sandboxed with ``Permissions(read=[module])`` and limits, everything else runs trusted) and no ``call_policy``
or ``max_workers``. The attacker is a sandboxed worker (tests/workers/tenants/routing.py) naming targets.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from wb_magic import Permissions, WorkerBroker, WorkerSpec, WorkerStartError
from wb_magic.broker import DEFAULT_MAX_WORKERS
from wb_magic.policy import confinement_gap
from worker_kernel.sandbox import landlock_abi

TENANTS = Path(__file__).parent / "workers" / "tenants"
README = Path(__file__).parent.parent / "README.md"
HELLO = Path(__file__).parent / "workers" / "hello.py"
PATIENT = Path(__file__).parent / "workers" / "patient.py"
TIMEOUT = 60

needs_sandbox = pytest.mark.skipif(
    not sys.platform.startswith("linux") or landlock_abi() < 1,
    reason="sandboxed workers need Linux with Landlock",
)


def readme_constructor(trusted: Path):
    """The README's constructor, run from the README's own text, with its TRUSTED_DIR at ``trusted``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Untrusted workers") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    code = code.replace('Path("trusted").resolve()', repr(str(trusted.resolve())))
    code = code.replace("broker = WorkerBroker(worker_constructor=construct)", "")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["construct"]


@pytest.fixture
def untrusted(tmp_path: Path) -> Path:
    folder = tmp_path / "untrusted"
    folder.mkdir()
    for path in TENANTS.iterdir():
        if path.suffix == ".py":
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def broker(untrusted: Path):
    with WorkerBroker(worker_constructor=readme_constructor(HELLO.parent), call_timeout=TIMEOUT) as b:
        yield b


def _modules(broker: WorkerBroker) -> set[str]:
    return {Path(info.module).name for info in broker.workers}


@needs_sandbox
@pytest.mark.parametrize("target", ["subprocess", "linecache", "os.path", "untrusted.routing"])
def test_a_sandboxed_worker_cannot_name_a_dotted_module(broker, untrusted, target):
    attacker = broker.worker_proxy(untrusted / "routing.py")
    got = attacker.call(target, "getoutput", "id")
    assert got["error"] == "PermissionError", got
    assert "dotted name" in got["text"]
    assert _modules(broker) == {"routing.py"}  # nothing was started for it


@needs_sandbox
def test_a_sandboxed_worker_cannot_have_the_host_start_a_trusted_worker(broker, untrusted, tmp_path):
    secret = tmp_path / "secret.conf"
    secret.write_text("root:the-hosts-secret:0:0\n")
    attacker = broker.worker_proxy(untrusted / "routing.py")
    for target in (str(secret), "../secret.conf", f"{untrusted}/../secret.conf"):
        got = attacker.call(target, "x")
        assert got["error"] == "PermissionError" and ".py" in got["text"], got
        assert "the-hosts-secret" not in repr(got)
    got = attacker.call(str(HELLO), "hello", "x")  # a trusted module: its worker would have the host's rights
    assert got["error"] == "PermissionError" and "host's rights" in got["text"], got
    assert _modules(broker) == {"routing.py"}


@needs_sandbox
def test_a_call_policy_opts_into_a_trusted_target(untrusted):
    def policy(source_module, source_sid, module, sid, function):
        return True if Path(module) == HELLO.resolve() and function == "hello" else None

    with WorkerBroker(worker_constructor=readme_constructor(HELLO.parent), call_policy=policy, call_timeout=60) as b:
        attacker = b.worker_proxy(untrusted / "routing.py")
        assert attacker.call(str(HELLO), "hello", "policy") == {"value": "Hello policy"}
        assert attacker.call("subprocess", "getoutput", "id")["error"] == "PermissionError"  # None: the default


@needs_sandbox
def test_a_tenant_cannot_reach_another_tenants_worker(broker, untrusted):
    alice = broker.worker_proxy((untrusted / "tenant.py", "alice"))
    alice.put("alice's data")
    bob = broker.worker_proxy((untrusted / "routing.py", "bob"))
    for function, args in (("get", ()), ("put", ("overwritten by bob",))):
        got = bob.call("./tenant.py", function, *args, segregation_id="alice")
        assert got["error"] == "PermissionError", got
        assert "own segregation id" in got["text"]
    assert bob.call("./tenant.py", "put", "bob's data") == {"value": "bob's data"}  # no id: bob's own worker
    assert alice.get() == "alice's data"
    assert broker.worker_proxy((untrusted / "tenant.py", "bob")).get() == "bob's data"


@needs_sandbox
def test_a_sandboxed_worker_cannot_start_workers_without_bound(untrusted):
    for i in range(6):
        (untrusted / f"module_{i}.py").write_text("def ping():\n    return 'pong'\n")
    with WorkerBroker(worker_constructor=readme_constructor(HELLO.parent), call_timeout=60, sandbox_quota=3) as b:
        attacker = b.worker_proxy(untrusted / "routing.py")
        answers = [attacker.call(f"./module_{i}.py", "ping") for i in range(6)]
        assert answers[:3] == [{"value": "pong"}] * 3
        for got in answers[3:]:
            assert got["error"] == "PermissionError" and "sandbox_quota" in got["text"], got
        assert len(b.workers) == 4  # the attacker and its three
        b.remove_worker(untrusted / "module_0.py")
        assert attacker.call("./module_5.py", "ping") == {"value": "pong"}  # the quota counts live workers


@needs_sandbox
def test_tracebacks_relayed_to_a_sandboxed_caller_quote_no_file_it_cannot_read(broker, untrusted):
    (untrusted / "broken.py").write_text("TOP-SECRET-LINE = not python at all\n")
    attacker = broker.worker_proxy(untrusted / "routing.py")
    failed = attacker.call("./tenant.py", "fail", "boom")
    assert failed["error"] == "ValueError" and failed["text"] == "boom"
    assert 'tenant.py", line' in failed["traceback"]  # where it failed, but not the source line
    assert "the-tenant-module-source" not in failed["traceback"]
    broken = attacker.call("./broken.py", "x")
    assert broken["error"] == "SyntaxError", broken
    assert "TOP-SECRET-LINE" not in repr(broken)


def test_the_broker_bounds_workers_by_default():
    with WorkerBroker(warm_workers=0) as b:
        assert b.max_workers == DEFAULT_MAX_WORKERS


def test_at_max_workers_the_least_recently_used_idle_worker_makes_room(tmp_path, workers_dir):
    copies = []
    for name in "abc":
        copies.append(tmp_path / f"m_{name}.py")
        shutil.copy(workers_dir / "values.py", copies[-1])
    with WorkerBroker(max_workers=2, warm_workers=0, call_timeout=TIMEOUT) as b:
        a, bb, c = (b.worker_proxy(p) for p in copies)
        a.echo(1)
        bb.echo(1)
        a.echo(2)  # b is now the least recently used
        assert c.echo(3) == 3
        assert {Path(w.module).name for w in b.workers} == {"m_a.py", "m_c.py"}
        assert bb.echo(4) == 4  # and back, in a fresh worker, in place of a


def test_at_max_workers_with_every_worker_busy_a_new_one_is_refused(tmp_path, workers_dir):
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    with WorkerBroker(max_workers=1, warm_workers=0, call_timeout=TIMEOUT) as b:
        waiting = b.worker_proxy(PATIENT)
        result: list[str] = []
        caller = threading.Thread(target=lambda: result.append(waiting.wait_for_line(str(fifo))))
        caller.start()
        with open(fifo, "w") as gate:  # opens once the worker reads it: its call is in flight
            with pytest.raises(WorkerStartError, match="max_workers=1 workers run, all busy"):
                b.worker_proxy(workers_dir / "values.py").echo(1)
            gate.write("released\n")
        caller.join(TIMEOUT)
        assert result == ["released"]


def test_confinement_gap_compares_permissions_and_limits():
    caller = WorkerSpec(permissions=Permissions(net=[443]), memory_limit=100)
    assert confinement_gap(caller, WorkerSpec()) is not None
    assert confinement_gap(caller, WorkerSpec(permissions=Permissions(net=[443]), memory_limit=100)) is None
    assert "net" in confinement_gap(caller, WorkerSpec(permissions=Permissions(net=True), memory_limit=10))
    assert "run" in confinement_gap(caller, WorkerSpec(permissions=Permissions(run=True), memory_limit=10))
    assert "memory_limit" in confinement_gap(caller, WorkerSpec(permissions=Permissions()))
    assert "memory_limit" in confinement_gap(caller, WorkerSpec(permissions=Permissions(), memory_limit=101))
    assert "enforce" in confinement_gap(
        caller, WorkerSpec(permissions=Permissions(), memory_limit=10, enforce="best-effort")
    )


@needs_sandbox
def test_a_sandboxed_worker_cannot_run_a_file_that_is_not_python(broker, untrusted):
    (untrusted / "bob.env").write_text("DB_PASSWORD=hunter2\n")
    attacker = broker.worker_proxy(untrusted / "routing.py")
    got = attacker.call("./bob.env", "x")
    assert got["error"] == "PermissionError" and ".py" in got["text"], got
    assert "hunter2" not in repr(got)
    assert _modules(broker) == {"routing.py"}


@needs_sandbox
def test_a_symbolic_link_among_the_untrusted_modules_runs_sandboxed(broker, untrusted, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "payload.py").write_text("def read(path):\n    with open(path) as f:\n        return f.read()\n")
    (untrusted / "innocent.py").symlink_to(outside / "payload.py")
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    planted = broker.worker_proxy(untrusted / "innocent.py")
    with pytest.raises(PermissionError):
        planted.read(str(secret))
    assert broker.worker_for(untrusted / "innocent.py").spec.sandboxed


def test_a_dotted_name_runs_only_the_file_its_constructor_saw(tmp_path, monkeypatch):
    hostdir, workdir = tmp_path / "hostdir", tmp_path / "workdir"
    hostdir.mkdir()
    workdir.mkdir()
    (hostdir / "wb_shadowed_helpers.py").write_text("def who():\n    return 'the host's copy'\n")
    (workdir / "wb_shadowed_helpers.py").write_text("def who():\n    return 'a tenant's file'\n")
    monkeypatch.chdir(hostdir)  # the host finds hostdir's copy; the worker, started in workdir, its own
    seen = []

    def construct(module, segregation_id):
        seen.append(module)
        return WorkerSpec(cwd=str(workdir))

    with WorkerBroker(worker_constructor=construct, warm_workers=0, call_timeout=TIMEOUT) as b:
        with pytest.raises(ImportError, match="will not run a module it was not launched for"):
            b.worker_proxy("wb_shadowed_helpers").who()
    assert seen == [str((hostdir / "wb_shadowed_helpers.py").resolve())]


def test_the_targets_a_worker_names_are_remembered_within_a_bound(tmp_path):
    """The broker remembers where a worker's request targets resolve, but a worker chooses those names: long
    ones are never kept, and the table never holds more than RESOLVED of them."""
    from wb_magic import broker as broker_module

    base = str(tmp_path / "caller.py")
    with WorkerBroker(warm_workers=0) as broker:
        for i in range(broker_module.RESOLVED + 10):
            assert broker._resolve_routed(f"./m{i}.py", base) == str(tmp_path / f"m{i}.py")
        long_name = "./" + "x" * 100_000 + ".py"
        assert broker._resolve_routed(long_name, base).endswith(".py")
        assert len(broker._resolved) <= broker_module.RESOLVED
        assert all(len(name) <= broker_module.RESOLVED_NAME for name, _ in broker._resolved)
