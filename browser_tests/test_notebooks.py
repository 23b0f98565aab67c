"""Each teaching notebook, run in JupyterLab as a person runs it, shows what its saved outputs say it shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import NOTEBOOKS
from .expected import Cell, code_cells, html_matches, normalize, sanitizers
from .lab import Lab, Output

TEACHING = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
RULES = sanitizers(NOTEBOOKS / "sanitize.cfg")
REMOTE_FRAME = re.compile(r"^(File \S+\.py:\d+|Cell %%wb_module \w+, line \d+), in \w+\n-+> \d+ \S", re.MULTILINE)
# the columns of %wb_workers: at least these, in this order
WORKERS_COLUMNS = ["key", "module", "segregation id", "pid", "state", "calls", "last used", "memory"]


def test_there_are_teaching_notebooks() -> None:
    assert len(TEACHING) >= 5, TEACHING


@pytest.mark.parametrize("name", TEACHING)
def test_a_teaching_notebook_shows_its_saved_outputs(lab: Lab, lab_root: Path, name: str) -> None:
    saved = code_cells(lab_root / name, RULES)
    lab.open(name)
    try:
        _run_and_check(lab, name, saved)
    except BaseException:
        lab.screenshot(f"FAILED-{Path(name).stem}-open")  # the notebook as it was, before it is closed
        raise
    finally:
        lab.close()


def _run_and_check(lab: Lab, name: str, saved: list[Cell]) -> None:
    lab.hide_sidebar()
    state = lab.restart_and_run_all([cell.index for cell in saved if cell.raises])
    cells = lab.code_cells()
    assert cells.count() == len(saved), (
        f"{name}: JupyterLab shows {cells.count()} code cells, the file has {len(saved)}"
    )
    shown = [lab.outputs(cells.nth(i)) for i in range(len(saved))]
    cells.last.scroll_into_view_if_needed()
    lab.screenshot(Path(name).stem)  # the notebook's end, after the run
    if state != "done":
        pytest.fail(f"{name}: the run stopped early. {_first_failure(lab, saved, shown)}")

    problems = []
    for cell, outputs in zip(saved, shown, strict=True):
        problems += _compare(cell, outputs)
    assert not problems, f"{name}:\n" + "\n\n".join(problems)

    tracebacks = waterfalls = 0
    for cell, outputs in zip(saved, shown, strict=True):
        shot = Path(name).stem
        if cell.source.strip() == "%wb_workers":
            _check_workers_table(lab, cells.nth(cell.index), name, cell)
        if any("Remote traceback, in the worker" in text for text in cell.outputs):
            _check_remote_traceback(name, cell, outputs)
            tracebacks += 1
            if tracebacks == 1:
                lab.screenshot(f"{shot}-remote-traceback", cells.nth(cell.index))
        if cell.source.startswith("%%wb_trace"):
            waterfalls += 1
            _check_waterfall(cells.nth(cell.index), name, cell)
            lab.screenshot(f"{shot}-waterfall-{waterfalls}", cells.nth(cell.index))


def _first_failure(lab: Lab, saved: list[Cell], shown: list[list[Output]]) -> str:
    for cell, outputs in zip(saved, shown, strict=True):
        errors = [o.text for o in outputs if o.is_error]
        if errors and not cell.raises:
            return f"{cell.describe()} failed:\n{errors[-1]}"
    return "No cell shows an error; the browser's console:\n" + "\n".join(lab.console[-20:])


def _compare(cell: Cell, outputs: list[Output]) -> list[str]:
    """What differs between what a cell shows and what its saved outputs say (nothing: an empty list)."""
    where = cell.describe()
    if cell.ignored:  # nbval does not compare these: they must be there, that is all
        if not outputs and cell.outputs:
            return [f"{where} shows no output (saved: {len(cell.outputs)})"]
        return []
    unexpected = [o.text for o in outputs if o.is_error and not cell.raises]
    if unexpected:
        return [f"{where} shows an error it should not:\n{unexpected[-1]}"]
    if len(outputs) != len(cell.outputs):
        got = "\n---\n".join(o.text for o in outputs)
        return [f"{where} shows {len(outputs)} outputs, saved {len(cell.outputs)}; it shows:\n{got}"]
    problems = []
    for i, (output, text, is_html) in enumerate(zip(outputs, cell.outputs, cell.html, strict=True)):
        want = normalize(text, RULES, html=is_html)
        got = normalize(output.text, RULES, html=is_html)
        same = html_matches(want, got) if is_html else got == want
        if not same:
            problems.append(f"{where}, output {i + 1}:\n--- saved\n{want}\n--- shown\n{got}")
    return problems


def _check_workers_table(lab: Lab, cell_locator: Any, name: str, cell: Cell) -> None:
    table = cell_locator.locator(".jp-OutputArea-output table.wb-workers")
    assert table.count() == 1, f"{name}: {cell.describe()} shows no workers table"
    headers = table.locator("th").all_inner_texts()
    assert [h for h in headers if h in WORKERS_COLUMNS] == WORKERS_COLUMNS, headers
    rows = table.locator("tbody tr")
    assert rows.count() >= 1, f"{name}: the workers table has no rows"
    for i in range(rows.count()):
        row = rows.nth(i)
        assert row.locator("td").count() == len(headers)
        assert row.locator("td.wb-pid").inner_text().strip().isdigit()
        assert row.locator("td.wb-module").inner_text().strip().endswith(".py") or row.locator(
            "td.wb-module"
        ).inner_text().startswith("%%wb_module")
    for column in ("key", "module", "state"):  # text reads from the left, numbers line up on the right
        assert table.locator(f"td.wb-{column}").first.evaluate("e => getComputedStyle(e).textAlign") == "left"
    assert table.locator("td.wb-pid").first.evaluate("e => getComputedStyle(e).textAlign") == "right"
    lab.screenshot(f"{Path(name).stem}-workers-table", cell_locator)


def _check_remote_traceback(name: str, cell: Cell, outputs: list[Output]) -> None:
    errors = [o.text for o in outputs if o.is_error]
    assert errors, f"{name}: {cell.describe()} shows no error"
    text = errors[-1]
    assert "Remote traceback, in the worker (most recent call last)" in text
    local, _, remote = text.partition("Remote traceback, in the worker")
    assert "Cell In[" in local  # the notebook's own frame
    assert REMOTE_FRAME.search(remote), remote  # the worker's frames, in IPython's style


# the colour of an error in the waterfall: red, whichever red
RED = """
element => {
  const [r, g, b] = getComputedStyle(element).color.match(/\\d+/g).map(Number);
  return r > 150 && g < 100 && b < 100;
}
"""


def _check_waterfall(cell_locator: Any, name: str, cell: Cell) -> None:
    """A %%wb_trace cell draws its trace: a table of spans with a bar for each, errors in red, no script."""
    where = f"{name}: {cell.describe()}"
    waterfall = cell_locator.locator(".jp-OutputArea-output table.wb-trace")
    assert waterfall.count() == 1, f"{where} draws no waterfall"
    rows = waterfall.locator("tr:has(svg)")
    assert rows.count() >= 2, f"{where}: the waterfall has {rows.count()} spans"
    for i in range(rows.count()):
        bar = rows.nth(i).locator("svg rect").last.bounding_box()
        assert bar is not None and bar["width"] > 0 and bar["height"] > 0, f"{where}: span {i + 1} has no bar"
    spans = rows.locator("td:nth-child(2)")  # indented under their parents: readable only aligned left
    assert set(spans.evaluate_all("cells => cells.map(c => getComputedStyle(c).textAlign)")) == {"left"}
    assert cell_locator.locator(".jp-OutputArea-output script").count() == 0
    if cell.raises:
        marks = waterfall.locator("td", has_text="\u2717")
        assert marks.count() >= 1, f"{where}: no span is marked as failed"
        assert any(marks.nth(i).locator("font, span, b").first.evaluate(RED) for i in range(marks.count())), (
            f"{where}: the failed spans are not red"
        )
