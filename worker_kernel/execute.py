"""``execute_request`` and its friends: enough of a Python kernel for ``jupyter console --existing``.

Code runs in the namespace of the worker's target module, so an attached console sees the worker's state. This
module is imported when the first such request arrives: calls made through wb-magic never need it.
"""

from __future__ import annotations

import ast
import builtins
import codeop
import rlcompleter
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .iopub import flush_output

MAX_COMPLETIONS = 500  # matches a complete_request answers with at most

Publish = Callable[[str, dict[str, Any]], None]  # (iopub message type, content), parented on the request


def execute(code: str, namespace: dict[str, Any], count: int, publish: Publish, *, silent: bool = False) -> dict:
    """Run a cell's ``code`` in ``namespace`` as execution number ``count``; the content of the
    ``execute_reply``. ``publish`` sends the iopub messages (``execute_input``, ``execute_result``, ``error``),
    none of them when ``silent``."""
    if not silent:
        publish("execute_input", {"code": code, "execution_count": count})

    def display(value: Any) -> None:
        if value is None:
            return
        builtins._ = value  # type: ignore[attr-defined]
        if not silent:
            publish("execute_result", {"execution_count": count, "data": {"text/plain": repr(value)}, "metadata": {}})

    saved_hook = sys.displayhook
    sys.displayhook = display
    try:
        for compiled in _compile_cell(code):
            exec(compiled, namespace)
    except BaseException as exc:
        flush_output()
        error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": traceback.format_exception(exc)}
        if not silent:
            publish("error", error)
        return {"status": "error", "execution_count": count, **error}
    finally:
        sys.displayhook = saved_hook
    flush_output()
    return {"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []}


def _compile_cell(code: str) -> list[Any]:
    """Compile a cell as IPython does: all but a trailing expression in ``exec`` mode, that one in ``single``
    mode, so that its value goes to ``sys.displayhook``."""
    tree = ast.parse(code, "<cell>", "exec")
    last: list[ast.stmt] = []
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = [tree.body.pop()]
    parts = [compile(tree, "<cell>", "exec")]
    if last:
        parts.append(compile(ast.Interactive(body=last), "<cell>", "single"))
    return parts


def is_complete(code: str) -> dict[str, Any]:
    try:
        compiled = codeop.compile_command(code, "<cell>", "exec")
    except (SyntaxError, OverflowError, ValueError):
        return {"status": "invalid"}
    if compiled is None:
        return {"status": "incomplete", "indent": "    " if code.rstrip().endswith(":") else ""}
    return {"status": "complete"}


def complete(namespace: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    code = str(content.get("code", ""))
    cursor = int(content.get("cursor_pos", len(code)))
    start = cursor
    while start > 0 and (code[start - 1].isidentifier() or code[start - 1] in "._" or code[start - 1].isdigit()):
        start -= 1
    text = code[start:cursor]
    completer = rlcompleter.Completer(namespace)
    matches: list[str] = []
    while (match := completer.complete(text, len(matches))) is not None and len(matches) < MAX_COMPLETIONS:
        matches.append(match.rstrip(" ("))
    return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": cursor, "metadata": {}}
