"""Exceptions that come from a worker, shown in IPython's style: the local traceback without the broker's own
frames, then the worker's traceback laid out as IPython lays out a local one.

The remote traceback is text from a worker, which is not trusted: it is parsed, never evaluated, and shown
without control characters (`safe_text.printable`) and without markup.
"""

from __future__ import annotations

import asyncio
import os
import re
import types
from pathlib import Path
from typing import Any

import IPython

import worker_kernel
from worker_kernel.codec import REMOTE_TRACEBACK_NOTE
from worker_kernel.errors import RemoteTraceback

from . import debug
from .errors import WorkerBrokerError
from .safe_text import printable

__all__ = ["is_from_worker", "short_path", "show_exception"]

WIDTH = 75  # the width of IPython's traceback rules, which the remote traceback's header matches
LINENO_GUTTER = 7  # the columns of IPython's "---> 13" arrow and line number
MAX_NAME = 60  # characters of a remote exception's type name shown in the header

_OWN_DIRS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(worker_kernel.__file__ or "")) + os.sep,
)
_IPYTHON_DIR = os.path.dirname(os.path.abspath(IPython.__file__ or "")) + os.sep
_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line (?P<line>\d+)(?:, in (?P<func>.*))?$')
_CARETS = re.compile(r"^\s*[~^]+\s*$")
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?P<rest>(?::.*)?)$")
_PARSE_ERRORS = (OverflowError, SyntaxError, ValueError, TypeError, MemoryError)


def _is_internal(filename: str) -> bool:
    return filename.startswith(_OWN_DIRS) or filename.startswith(_IPYTHON_DIR) or filename.startswith("<decorator-gen")


def is_from_worker(value: BaseException, tb: types.TracebackType | None) -> bool:
    """Whether an exception came through wb-magic: raised in a worker, raised by the broker, or an interrupt
    that reached a remote call while the broker waited for it."""
    if isinstance(getattr(value, "remote_traceback", None), str) or isinstance(value, WorkerBrokerError):
        return True
    if isinstance(value, (KeyboardInterrupt, asyncio.CancelledError)):  # a remote call interrupted, in the broker
        return any(_is_own(frame) for frame in _frames(tb)[1:])
    return False


def _frames(tb: types.TracebackType | None) -> list[types.TracebackType]:
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames


def _is_own(tb: types.TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(_OWN_DIRS)


def show_exception(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: types.TracebackType | None,
    tb_offset: Any = None,
    cells: Path | None = None,
) -> None:
    """IPython's custom exception handler: remote exceptions our way, every other one as IPython would.
    ``cells`` is the folder of the session's ``%%wb_module`` cells, whose frames are named after their cell."""
    if not is_from_worker(value, tb):
        if tb is not None and tb.tb_frame.f_code.co_name != "run_code":  # raised while IPython compiled the cell
            if issubclass(etype, IndentationError):
                shell.showindentationerror()
                return
            if issubclass(etype, _PARSE_ERRORS):
                shell.showsyntaxerror()
                return
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
        return

    def render() -> list[str]:
        return _structured_traceback(shell, etype, value, tb, tb_offset, cells)

    try:
        value._render_traceback_ = render  # type: ignore[attr-defined]  # IPython's hook for remote tracebacks
    except Exception:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
        return
    try:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
    finally:
        value.__dict__.pop("_render_traceback_", None)


def _structured_traceback(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: types.TracebackType | None,
    tb_offset: Any,
    cells: Path | None,
) -> list[str]:
    """The local traceback (the broker's frames left out unless debugging), then the remote one."""
    local = tb if debug.enabled() else _trim(tb)
    notes = getattr(value, "__notes__", None)
    remote = getattr(value, "remote_traceback", None)
    cause = value.__cause__
    if isinstance(cause, RemoteTraceback):  # Python 3.10's stand-in for the note: shown below in its own block
        BaseException.__setattr__(value, "__cause__", None)
    if isinstance(notes, list) and isinstance(remote, str) and remote:
        kept = [n for n in notes if not (isinstance(n, str) and n.startswith(REMOTE_TRACEBACK_NOTE))]
        value.__notes__ = kept  # shown below in its own block, not as a note
    try:
        stb = shell.InteractiveTB.structured_traceback(etype, value, local, tb_offset=tb_offset)
    finally:
        if isinstance(notes, list):
            value.__notes__ = notes
        BaseException.__setattr__(value, "__cause__", cause)
    if isinstance(remote, str) and remote.strip():
        name = getattr(value, "type_name", None) or etype.__name__
        stb = list(stb) + _remote_traceback(remote, str(name), _theme(shell), cells)
    return list(stb)


def _trim(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback up to the first frame in wb_magic or worker_kernel (the user's code called a proxy or a
    magic there), without IPython's magic machinery just before it."""
    frames = _frames(tb)
    keep = next((i for i, frame in enumerate(frames) if i > 0 and _is_own(frame)), len(frames))
    while keep > 1 and _is_internal(frames[keep - 1].tb_frame.f_code.co_filename):
        keep -= 1
    if not frames or keep == len(frames):
        return frames[0] if frames else None
    trimmed: types.TracebackType | None = None
    for frame in reversed(frames[:keep]):
        trimmed = types.TracebackType(trimmed, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return trimmed


class _Plain:
    """Formats token streams without colour: for IPython 8, and for the ``nocolor`` scheme."""

    symbols = {"top_line": "-", "arrow_body": "-", "arrow_head": ">"}

    def format(self, stream: list[tuple[Any, str]]) -> str:
        return "".join(text for _, text in stream)

    def make_arrow(self, width: int) -> str:
        return "-" * (width - 2) + "> " if width >= 2 else ">" * width


def _theme(shell: Any) -> Any:
    try:
        from IPython.utils.PyColorize import theme_table

        return theme_table[str(shell.colors).lower()]
    except Exception:
        return _Plain()


def _remote_traceback(text: str, name: str, theme: Any, cells: Path | None) -> list[str]:
    """A worker's traceback (Python's text format) laid out as IPython lays out a local one.

    The text comes from a worker and is not trusted: control characters are dropped, so that it cannot drive
    the terminal, and nothing in it is taken for markup.
    """
    from pygments.token import Token

    text = printable(text)
    lines = text.rstrip("\n").split("\n")
    width = WIDTH
    blocks: list[str] = []
    frame: list[tuple[Any, str]] | None = None
    skipping = False
    tail: list[str] = []

    def flush() -> None:
        nonlocal frame
        if frame is not None:
            blocks.append(theme.format(frame))
            frame = None

    for line in lines:
        match = _FRAME.match(line)
        if match:
            flush()
            tail = []
            filename, lineno, func = match["file"], int(match["line"]), match["func"] or "?"
            skipping = filename.startswith(_OWN_DIRS)  # the worker kernel's own frames
            if skipping:
                continue
            if cells is not None and os.path.dirname(filename) == str(cells):
                place = [
                    (Token.NormalEm, "Cell "),
                    (Token.FilenameEm, f"%%wb_module {Path(filename).stem}, line {lineno}"),
                ]
            else:
                place = [(Token.NormalEm, "File "), (Token.FilenameEm, f"{short_path(filename)}:{lineno}")]
            frame = [*place, (Token.Normal, ", in "), (Token.VName, func), (Token, "\n")]
            frame_line = lineno
            continue
        if line.startswith("    ") and (frame is not None or skipping) and not tail:
            if skipping or _CARETS.match(line):
                continue
            assert frame is not None
            pad = LINENO_GUTTER - len(str(frame_line))
            frame += [(Token.LinenoEm, theme.make_arrow(pad)), (Token.LinenoEm, str(frame_line)), (Token, " ")]
            frame += [(Token, line[4:]), (Token, "\n")]
            continue
        if line.startswith("Traceback (most recent call last)"):
            flush()
            skipping = False
            continue
        flush()
        skipping = False
        tail.append(line)
        found = _EXCEPTION_LINE.match(line)
        if found and len(tail) == 1:
            blocks.append(theme.format([(Token.ExcName, found["name"]), (Token, found["rest"])]))
        else:
            blocks.append(theme.format([(Token, line)]))
    flush()
    name = printable(name).replace("\n", " ")[:MAX_NAME]
    header = theme.format(
        [
            (Token.Topline, theme.symbols["top_line"] * width),
            (Token, "\n"),
            (Token.ExcName, name),
            (Token, "Remote traceback, in the worker (most recent call last)".rjust(width - len(name))),
        ]
    )
    return ["", header, *blocks]


def short_path(path: str) -> str:
    """A path as the user would name it: relative to the working directory when it is beneath it."""
    if not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
