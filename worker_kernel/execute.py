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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernel import WorkerKernel
    from .wire import Message


def execute(kernel: WorkerKernel, msg: Message) -> None:
    content = msg.content
    code = str(content.get("code", ""))
    silent = bool(content.get("silent", False))
    if not silent and content.get("store_history", True):
        kernel.execution_count += 1
    count = kernel.execution_count
    if not silent:
        kernel.iopub.publish("execute_input", {"code": code, "execution_count": count}, msg.header)

    def display(value: Any) -> None:
        if value is None:
            return
        builtins._ = value  # type: ignore[attr-defined]
        if not silent:
            kernel.iopub.publish(
                "execute_result",
                {"execution_count": count, "data": {"text/plain": repr(value)}, "metadata": {}},
                msg.header,
            )

    saved_hook = sys.displayhook
    sys.displayhook = display
    try:
        for compiled in _compile_cell(code):
            exec(compiled, kernel.namespace)
    except BaseException as exc:
        _flush()
        lines = traceback.format_exception(exc)
        error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}
        if not silent:
            kernel.iopub.publish("error", error, msg.header)
        kernel._reply(kernel.shell, msg, {"status": "error", "execution_count": count, **error})
        return
    finally:
        sys.displayhook = saved_hook
    _flush()
    kernel._reply(kernel.shell, msg, {"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []})


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


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


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
    while (match := completer.complete(text, len(matches))) is not None and len(matches) < 500:
        matches.append(match.rstrip(" ("))
    return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": cursor, "metadata": {}}
