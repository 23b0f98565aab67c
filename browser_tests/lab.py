"""What a person does in JupyterLab, as Playwright steps: open a notebook, run it, read what it shows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.sync_api import TimeoutError as PlaywrightTimeout

TIMEOUT = 120_000  # ms: generous, for a busy 2-core machine; every wait is on an event, never a fixed time
RUN_TIMEOUT = 300_000  # ms: a whole notebook


@dataclass
class Output:
    """One rendered output of a cell: its text as the browser shows it (all of the text of HTML), and what kind
    it is."""

    text: str
    mime: str
    is_error: bool


# The state of a notebook's run, read from its prompts: false while it runs, "done" when every code cell ran,
# "stopped" when a cell not allowed to raise (its index is in the argument's list of those allowed) failed and the
# cells after it did not run. (After a cell that raises, JupyterLab runs the rest one by one: between two of them
# no prompt shows [*] for a moment, which is why the failed cell is looked at.)
RUN_STATE = """
mayRaise => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const status = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  if (!status || status.getAttribute('data-status') !== 'idle') return false;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => c.querySelector('.jp-InputPrompt').textContent.trim());
  if (prompts.length === 0 || prompts.some(p => p === '[*]:')) return false;
  const ran = prompts.map(p => /^\\[\\d+\\]:$/.test(p));
  if (ran.every(r => r)) return 'done';
  const last = ran.lastIndexOf(true);
  if (last < 0 || mayRaise.includes(last) || ran.slice(last + 1).some(r => r)) return false;
  const failed = [...cells[last].querySelectorAll('.jp-OutputArea-output')]
    .some(o => o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr'
      && /Error|Exception|Interrupt/.test(o.innerText));
  return failed ? 'stopped' : false;
}
"""

DESCRIBE_RUN = r"""
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return 'no notebook is open';
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => c.querySelector('.jp-InputPrompt').textContent.trim());
  const last = prompts.map(p => /^\[\d+\]:$/.test(p)).lastIndexOf(true);
  const lines = cells.map((c, i) => {
    const outs = [...c.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText.trim().slice(-300));
    return `cell ${i + 1} ${prompts[i]} ${c.querySelector('.cm-content')?.innerText.split('\n')[0]}`
      + ((prompts[i] === '[*]:' || i === last) && outs.length ? ` | shows: ${outs.join(' | ')}` : '');
  });
  return `kernel ${status ? status.getAttribute('data-status') : '?'}\n` + lines.join('\n');
}
"""

# a notebook's page once it has loaded: its first cell shown, or a dialog in front of it (a failed stylesheet)
LOADED = """
() => document.querySelector('.jp-Dialog') ? 'dialog'
  : (document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell') ? 'loaded' : false)
"""

KERNEL_IDLE = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel || panel.querySelector('.jp-Spinner')) return false;
  const name = panel.querySelector('.jp-Toolbar-kernelName');
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return !!(name && status && !/No Kernel/.test(name.textContent) && status.getAttribute('data-status') === 'idle'
    && /Idle/.test(status.textContent));
}
"""

CLOSED_OR_DIALOG = """
before => document.querySelector('.jp-Dialog') ? 'dialog'
  : (document.querySelectorAll('.jp-NotebookPanel').length < before ? 'closed' : false)
"""

OUTPUTS = """
cell => [...cell.querySelectorAll(':scope .jp-OutputArea-child')].map(child => {
  const out = child.querySelector('.jp-OutputArea-output');
  return {
    text: out ? (out.getAttribute('data-mime-type') === 'text/html' ? out.textContent : out.innerText) : '',
    mime: out ? (out.getAttribute('data-mime-type') || '') : '',
    is_error: !!out && out.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr'
      && /Traceback|Error|Exception|Interrupt/.test(out.innerText),
  };
})
"""


class Lab:
    """One browser tab on the JupyterLab server."""

    def __init__(self, context: Any, base: str, token: str, screenshots: Path) -> None:
        self.context = context
        self.base = base
        self.token = token
        self.screenshots = screenshots
        self.page = context.pages[0] if context.pages else context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    # opening and running

    def open(self, name: str) -> Any:
        """Open a notebook (a path relative to the served folder) and wait until its kernel is idle.

        The page is loaded afresh with an empty workspace (``reset``): the lab would otherwise reopen the
        documents of the last page that it saved the workspace of.
        """
        page = self.page
        for _ in range(3):
            page.goto(f"{self.base}/lab/tree/{quote(name)}?reset&token={self.token}", timeout=TIMEOUT)
            if page.wait_for_function(LOADED, timeout=TIMEOUT).json_value() == "loaded":
                break
            # the lab's page, not our code: a stylesheet that timed out on a loaded machine ("Error Loading
            # Theme") leaves a half-styled page behind its dialog; a person would reload, and so do we
            print(f"{name}: the page did not load ({page.locator('.jp-Dialog').first.inner_text()!r}); reloading")
        else:
            raise AssertionError(f"{name}: the page did not load in three tries")
        self.wait_idle()
        return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def wait_idle(self) -> None:
        """Wait until the notebook has a kernel and the kernel is idle (the toolbar and the status bar say so)."""
        self.page.wait_for_function(KERNEL_IDLE, timeout=TIMEOUT)

    def screenshot(self, name: str, target: Any = None) -> Path:
        path = self.screenshots / f"{name}.png"
        (target or self.page).screenshot(path=str(path))
        return path

    def screenshot_around(self, name: str, *targets: Any, pad: int = 12) -> Path:
        """A screenshot of the part of the page that holds all the targets (a cell and its pop-up, say)."""
        boxes = [box for box in (t.bounding_box() for t in targets) if box]
        assert boxes, f"nothing to take a screenshot of for {name}"
        left = max(0, min(b["x"] for b in boxes) - pad)
        top = max(0, min(b["y"] for b in boxes) - pad)
        right = max(b["x"] + b["width"] for b in boxes) + pad
        bottom = max(b["y"] + b["height"] for b in boxes) + pad
        path = self.screenshots / f"{name}.png"
        clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
        self.page.screenshot(path=str(path), clip=clip)
        return path

    def hide_sidebar(self) -> None:
        """Collapse the left sidebar (the file browser), for wider screenshots."""
        tab = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if tab.count():
            tab.first.click()
            self.page.locator("#jp-left-stack").wait_for(state="hidden")

    def menu(self, menu: str, item: str) -> None:
        """Choose ITEM in the menu bar's MENU, as a person clicks through them."""
        self.page.locator(".lm-MenuBar-item", has_text=menu).first.click()
        self.page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel", has_text=item).first.click()

    def toolbar(self, command: str) -> Any:
        """A button of the notebook's toolbar, by the command it runs."""
        return self.page.locator(f'.jp-NotebookPanel:not(.lm-mod-hidden) jp-button[data-command="{command}"]')

    def code_cells(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell")

    def restart_and_run_all(self, may_raise: list[int]) -> str:
        """Clear every output, restart the kernel and run all cells (the toolbar's ⏩ and the dialog's Restart).

        Returns "done" when every code cell ran, "stopped" when the run ended early: a code cell whose index
        (from 0) is not in ``may_raise`` failed.
        """
        self.menu("Edit", "Clear Outputs of All Cells")
        self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-child").first.wait_for(state="detached")
        self.toolbar("notebook:restart-run-all").click()
        self.page.locator(".jp-Dialog .jp-mod-accept").click()
        self.page.locator(".jp-Dialog").wait_for(state="detached")
        try:
            return str(self.page.wait_for_function(RUN_STATE, arg=may_raise, timeout=RUN_TIMEOUT).json_value())
        except PlaywrightTimeout:
            raise AssertionError(f"the run did not end within {RUN_TIMEOUT // 1000} s: {self.describe_run()}") from None

    def describe_run(self) -> str:
        """Where a run is: the kernel's status and each code cell's prompt, with what the last cell that ran, and
        any cell still running, show."""
        return str(self.page.evaluate(DESCRIBE_RUN))

    def outputs(self, cell: Any) -> list[Output]:
        """The outputs a cell shows, as the browser renders them."""
        return [Output(**item) for item in cell.evaluate(OUTPUTS)]

    def prompt(self, cell: Any) -> str:
        return str(cell.locator(".jp-InputPrompt").first.inner_text()).strip()

    def close(self) -> None:
        """File > Close and Shut Down Notebook, accepting its dialogs: the kernel and its workers end."""
        before = self.page.locator(".jp-NotebookPanel").count()
        try:
            if before:
                self.menu("File", "Close and Shut Down Notebook")
                while self.page.wait_for_function(CLOSED_OR_DIALOG, arg=before).json_value() != "closed":
                    self.page.locator(".jp-Dialog .jp-mod-accept").first.click()
                    self.page.locator(".jp-Dialog").wait_for(state="detached")
        finally:
            left = self.api("/api/sessions")
            for session in left:  # so that one failed test leaves no kernel to the next
                self.page.request.delete(
                    f"{self.base}/api/sessions/{session['id']}", headers={"Authorization": f"token {self.token}"}
                )
        assert not left, f"kernels still running after Close and Shut Down Notebook: {[s['path'] for s in left]}"

    def api(self, path: str) -> Any:
        """GET from the server's REST API, as the page does (with the token)."""
        response = self.page.request.get(f"{self.base}{path}", headers={"Authorization": f"token {self.token}"})
        assert response.ok, f"{path}: {response.status}"
        return response.json()

    # one cell at a time

    def select(self, index: int) -> Any:
        """Click code cell INDEX's prompt (command mode, the cell selected); returns the cell."""
        cell = self.code_cells().nth(index)
        cell.locator(".jp-InputPrompt").first.click()
        return cell

    def run_cell(self, index: int, *, wait: bool = True) -> Any:
        """Select code cell INDEX and press Shift+Enter; with ``wait``, until it has run and the kernel is idle."""
        cell = self.select(index)
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_ran(cell)
        return cell

    def wait_ran(self, cell: Any) -> None:
        cell.locator(".jp-InputPrompt").filter(has_text=re.compile(r"^\s*\[\d+\]:\s*$")).wait_for(state="attached")
        self.wait_idle()

    def edit(self, index: int, text: str) -> Any:
        """Click into code cell INDEX's editor, replace its text by TEXT typed as a person types; the cursor ends
        after it."""
        cell = self.code_cells().nth(index)
        editor = cell.locator(".cm-content").first
        editor.click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.press("Delete")
        self.page.keyboard.type(text)
        return cell
