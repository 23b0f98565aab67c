"""A scratch notebook the test writes: the stop button, completion and the inspector on a proxy, and text from a
worker that tries to be HTML and JavaScript."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from .lab import Lab

MODULES = Path(__file__).resolve().parent / "modules"
# a module whose path, as %wb_workers shows it, holds a script: the folder `x<script>...<` and the file `script>.py`
EVIL_FOLDER = "x<script>window.wbInjected=3<"  # no spaces nor quotes: the magic's argument as typed
EVIL_MODULE = f"browser_modules/{EVIL_FOLDER}/script>.py"
EVIL_ID = "<img/src/onerror=window.wbInjected=2>"  # an <img> with an onerror handler, as HTML parses it
SCRIPT = '<script>window.wbInjected = "script"</script>'

CELLS = [
    "%load_ext wb_magic\n%wb_proxy browser_modules/hostile.py\nfirst = hostile.process_id()",  # 0
    "hostile.spin()",  # 1: interrupted with the stop button
    "hostile.process_id() == first",  # 2
    "hostile.fail()",  # 3
    "hostile.echo()",  # 4
    f"%wb_proxy -s {EVIL_ID} {EVIL_MODULE} evil\n%wb_workers",  # 5
    "hostile.shout?",  # 6
    "",  # 7: typed into
]


_set_up_failed: list[str] = []


@pytest.fixture(scope="module")
def scratch(lab: Lab, lab_root: Path) -> Iterator[Lab]:
    """The scratch notebook, open, its first cell run (the extension loaded, a proxy of hostile.py bound)."""
    if _set_up_failed:  # pytest would set a failed module fixture up again for every test
        pytest.fail(f"the scratch notebook could not be set up: {_set_up_failed[0]}")
    folder = lab_root / "browser_modules"
    shutil.copytree(MODULES, folder, dirs_exist_ok=True)
    (folder / EVIL_FOLDER).mkdir(exist_ok=True)
    shutil.copy(MODULES / "hostile.py", folder / EVIL_FOLDER / "script>.py")
    nb = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, lab_root / "scratch.ipynb")
    lab.open("scratch.ipynb")
    lab.hide_sidebar()
    try:
        try:
            cell = lab.run_cell(0)
            assert not lab.outputs(cell), [o.text for o in lab.outputs(cell)]
        except Exception as exc:
            _set_up_failed.append(str(exc).splitlines()[0])
            raise
        yield lab
        assert lab.page.evaluate("() => window.wbInjected") is None, "a worker's text ran as JavaScript"
    finally:
        lab.close()


def test_the_stop_button_interrupts_a_remote_call_and_the_worker_lives_on(scratch: Lab) -> None:
    lab = scratch
    cell = lab.run_cell(1, wait=False)
    output = cell.locator(".jp-OutputArea-output", has_text="spinning")
    output.wait_for()  # the worker's print arrives while the call runs
    assert lab.prompt(cell) == "[*]:"
    lab.toolbar("notebook:interrupt-kernel").click()
    lab.wait_ran(cell)
    errors = [o.text for o in lab.outputs(cell) if o.is_error]
    assert errors and "KeyboardInterrupt" in errors[-1], [o.text for o in lab.outputs(cell)]
    assert "hostile.spin()" in errors[-1]
    lab.screenshot("interrupt", cell)
    answer = lab.run_cell(2)
    assert [o.text.strip() for o in lab.outputs(answer)] == ["True"]  # the same worker process answered


def test_remote_exceptions_prints_and_values_show_worker_html_as_text(scratch: Lab) -> None:
    lab = scratch
    cell = lab.run_cell(3)
    errors = [o.text for o in lab.outputs(cell) if o.is_error]
    assert errors, [o.text for o in lab.outputs(cell)]
    assert f"ValueError: <b>bold</b>{SCRIPT}" in errors[-1]  # the message, as text
    assert "Remote traceback, in the worker" in errors[-1] and "in fail" in errors[-1]
    cell = lab.run_cell(4)
    texts = [o.text for o in lab.outputs(cell)]
    assert len(texts) == 2 and SCRIPT in texts[0] and SCRIPT in texts[1], texts  # the print, then the value
    _assert_nothing_injected(lab)


def test_the_workers_table_shows_a_module_path_and_id_with_html_as_text(scratch: Lab) -> None:
    lab = scratch
    cell = lab.run_cell(5)
    table = cell.locator("table.wb-workers")
    assert table.count() == 1, [o.text for o in lab.outputs(cell)]
    modules = table.locator("td.wb-module").all_inner_texts()
    assert EVIL_MODULE in modules, modules
    ids = table.locator("td.wb-segregation-id").all_inner_texts()
    assert EVIL_ID in ids, ids
    lab.screenshot("hostile-workers-table", cell)
    _assert_nothing_injected(lab)


def test_tab_completion_lists_the_remote_functions(scratch: Lab) -> None:
    lab = scratch
    lab.edit(7, "hostile.")
    lab.page.keyboard.press("Tab")
    completer = lab.page.locator(".jp-Completer:not(.lm-mod-hidden)")  # (each notebook opened has one)
    completer.locator(".jp-Completer-item").first.wait_for()
    items = [text.strip() for text in completer.locator(".jp-Completer-item .jp-Completer-match").all_inner_texts()]
    assert {"shout", "spin", "process_id", "fail", "echo"} <= set(items), items
    lab.screenshot_around("completion", lab.code_cells().nth(7), completer)
    lab.page.keyboard.press("Escape")
    completer.wait_for(state="detached")


def test_the_inspector_shows_the_remote_signature_and_docstring(scratch: Lab) -> None:
    lab = scratch
    lab.edit(7, "hostile.shout")
    lab.page.keyboard.press("Shift+Tab")
    tooltip = lab.page.locator(".jp-Tooltip")
    tooltip.wait_for()
    text = tooltip.inner_text()
    assert re.search(r"Signature:\s*hostile\.shout\(text: str, times: int = 2\) -> str", text), text
    assert "Repeat TEXT, louder." in text and '<script>window.wbInjected = "docstring"</script>' in text, text
    lab.screenshot_around("inspector", lab.code_cells().nth(7), tooltip)
    _assert_nothing_injected(lab)
    lab.page.keyboard.press("Escape")
    tooltip.wait_for(state="detached")
    cell = lab.run_cell(6)  # `proxy.fn?`: the pager's text, shown under the cell
    text = "\n".join(o.text for o in lab.outputs(cell))
    assert "Signature: hostile.shout(text: str, times: int = 2) -> str" in text, text
    assert '<script>window.wbInjected = "docstring"</script>' in text, text
    _assert_nothing_injected(lab)


def _assert_nothing_injected(lab: Lab) -> None:
    """No element a worker's text could have made, and no global its scripts set."""
    here = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output"
    made = lab.page.locator(f"{here} :is(script, img, b), .jp-Tooltip :is(script, img, b)")
    assert made.count() == 0, [made.nth(i).evaluate("e => e.outerHTML") for i in range(made.count())]
    assert lab.page.evaluate("() => window.wbInjected") is None, "a worker's text ran as JavaScript"
