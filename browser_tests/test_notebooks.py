"""Each teaching notebook, run in JupyterLab as a person runs it, shows what its saved outputs say it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import NOTEBOOKS
from .expected import Cell, code_cells, normalize, sanitizers
from .lab import Lab, Output

TEACHING = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
RULES = sanitizers(NOTEBOOKS / "sanitize.cfg")
WORKERS_COLUMNS = ["key", "module", "segregation id", "pid", "state", "calls", "last used", "memory"]


def test_there_are_teaching_notebooks() -> None:
    assert len(TEACHING) >= 5, TEACHING


@pytest.mark.parametrize("name", TEACHING)
def test_a_teaching_notebook_shows_its_saved_outputs(lab: Lab, lab_root: Path, name: str) -> None:
    saved = code_cells(lab_root / name)
    lab.open(name)
    try:
        _run_and_check(lab, name, saved)
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
    lab.screenshot(Path(name).stem)
    if state != "done":
        pytest.fail(f"{name}: the run stopped early. {_first_failure(lab, saved, shown)}")

    problems = []
    for cell, outputs in zip(saved, shown, strict=True):
        problems += _compare(cell, outputs)
    assert not problems, f"{name}:\n" + "\n\n".join(problems)

    for cell, outputs in zip(saved, shown, strict=True):
        if cell.source.strip() == "%wb_workers":
            _check_workers_table(lab, cells.nth(cell.index), name, cell)
        if any("Remote traceback, in the worker" in text for text in cell.outputs):
            _check_remote_traceback(lab, name, cell, outputs)


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
        if got != want:
            problems.append(f"{where}, output {i + 1}:\n--- saved\n{want}\n--- shown\n{got}")
    return problems


def _check_workers_table(lab: Lab, cell_locator, name: str, cell: Cell) -> None:
    table = cell_locator.locator(".jp-OutputArea-output table.wb-workers")
    assert table.count() == 1, f"{name}: {cell.describe()} shows no workers table"
    assert table.locator("th").all_inner_texts() == WORKERS_COLUMNS
    rows = table.locator("tbody tr")
    assert rows.count() >= 1, f"{name}: the workers table has no rows"
    for i in range(rows.count()):
        row = rows.nth(i)
        assert row.locator("td").count() == len(WORKERS_COLUMNS)
        assert row.locator("td.wb-pid").inner_text().strip().isdigit()
        assert row.locator("td.wb-module").inner_text().strip().endswith(".py") or row.locator(
            "td.wb-module"
        ).inner_text().startswith("%%wb_module")
    lab.screenshot(f"{Path(name).stem}-workers-table", cell_locator)


def _check_remote_traceback(lab: Lab, name: str, cell: Cell, outputs: list[Output]) -> None:
    errors = [o.text for o in outputs if o.is_error]
    assert errors, f"{name}: {cell.describe()} shows no error"
    text = errors[-1]
    assert "Remote traceback, in the worker (most recent call last)" in text
    local, _, remote = text.partition("Remote traceback, in the worker")
    assert "Cell In[" in local  # the notebook's own frame
    assert "File " in remote and ".py:" in remote and ", in " in remote, remote  # the worker's frames
