"""The public names: other code depends on them, so a change here is a change of the API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import wb_magic
import worker_kernel
import worker_kernel.errors

README = Path(__file__).resolve().parent.parent / "README.md"


def test_wb_magic_exports():
    assert wb_magic.__all__ == [
        "CallTimeout",
        "NoSuchFunction",
        "Permissions",
        "RemoteError",
        "WorkerBroker",
        "WorkerBrokerError",
        "WorkerCleaner",
        "WorkerDied",
        "WorkerEvent",
        "WorkerInfo",
        "WorkerSpec",
        "WorkerStartError",
        "enable_debugging",
        "get_broker",
        "register_marshaller",
    ]
    assert all(hasattr(wb_magic, name) for name in wb_magic.__all__)


def test_worker_kernel_exports():
    assert sorted(worker_kernel.__all__) == worker_kernel.__all__
    assert all(getattr(worker_kernel, name) is not None for name in worker_kernel.__all__)
    assert {"broker_proxy", "current_call", "enable_debugging"} <= set(worker_kernel.__all__)


def test_errors_keep_their_builtin_meaning():
    assert issubclass(wb_magic.CallTimeout, TimeoutError)
    assert issubclass(wb_magic.NoSuchFunction, AttributeError)
    for name in ("RemoteError", "WorkerDied", "WorkerStartError", "CallTimeout", "NoSuchFunction"):
        assert issubclass(getattr(wb_magic, name), wb_magic.WorkerBrokerError)


def test_the_error_tree_in_the_docs_is_the_class_tree():
    """The one description of the exceptions (worker_kernel.errors; wb_magic.errors points to it) names every
    exception wb-magic exports, each under its true parent."""
    tree = re.findall(r"^    (?:[├└]── )?(\w+) ", worker_kernel.errors.__doc__ or "", re.MULTILINE)
    exported = {name for name in wb_magic.errors.__all__}
    assert sorted(tree) == sorted(exported)
    root, *children = tree
    assert root == "WorkerBrokerError"
    for name in children:
        assert getattr(wb_magic, name).__bases__[0] is wb_magic.WorkerBrokerError, name
    assert "worker_kernel.errors" in (wb_magic.errors.__doc__ or "") and "├" not in (wb_magic.errors.__doc__ or "")


def test_the_readmes_first_example_runs_from_any_folder(tmp_path):
    """What a new user pastes first works outside the clone: it brings its own module."""
    example = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert example is not None
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "Hello World\n"), done.stderr


def test_the_tour_runs_and_its_segregated_step_names_each_tenant():
    import examples.tour

    assert "make tour" in (examples.tour.__doc__ or "") and "make demo" not in (examples.tour.__doc__ or "")
    done = subprocess.run(
        [sys.executable, "-m", "examples.tour"], cwd=README.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    segregated = done.stdout.partition("== segregated workers")[2].partition("\n== ")[0]
    assert [line.partition(":")[0] for line in segregated.splitlines() if line.startswith("greeter of")] == [
        "greeter of alice",
        "greeter of bob",
        "greeter of alice",
    ]
    assert "greeter of alice: visit 2" in segregated  # alice's worker kept its state; bob's is its own


def test_saved_notebooks_name_files_as_the_notebooks_do():
    """Outputs saved by notebooks/make_notebooks.py read the same on every machine: ``modules/fragile.py``, not
    the absolute folder of the checkout that ran them."""
    for notebook in sorted((README.parent / "notebooks").glob("*.ipynb")):
        text = notebook.read_text(encoding="utf-8")
        assert not re.search(r"/[^\s'\"]*/notebooks/modules/", text), notebook.name
    assert "modules/fragile.py:13" in (README.parent / "notebooks" / "05_failures.ipynb").read_text(encoding="utf-8")
