"""What of a worker's text may reach the user's terminal, log or notebook: one rule for all of it.

A worker is not trusted, and what it prints, raises or names is shown to the user: its call output, its remote
tracebacks, a sandboxed worker's stdout and stderr. Terminal control sequences in that text could rewrite the
screen, set the window title or reach the clipboard (OSC 52); a carriage return could overwrite what the host or
another call wrote on the same line; bidirectional overrides and zero-width characters could make text read
other than it is. So every such text keeps its line feeds and tabs and loses the rest of those characters.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable", "printable_error"]

# C0 controls but the tab and the line feed (escape sequences, the bell, the carriage return), DEL and the C1
# controls (0x9B is a one-byte CSI), and the invisible characters that reorder or hide text (bidirectional
# overrides and isolates, zero-width characters, line and paragraph separators, tags)
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\ufff9-\ufffb\U000e0000-\U000e007f]"
)


def printable(text: str) -> str:
    """``text`` without terminal control characters and invisible reordering characters; tabs and line feeds
    stay."""
    return _UNSAFE.sub("", text)


def printable_error(content: dict[str, Any]) -> dict[str, Any]:
    """A worker's error reply with every text the rebuilt exception shows made `printable`: the type's name and
    module (a `RemoteError`'s ``type_name``), the message, the remote traceback (the note a rebuilt exception
    carries), and every string in its arguments and in a registered type's form, however deeply nested (Python
    prints a `SyntaxError`'s file name from a tuple in its arguments, an `ExceptionGroup` its members' messages
    and notes)."""
    cleaned = dict(content)
    for field in ("ename", "emodule", "evalue"):
        if field in cleaned:
            cleaned[field] = printable(str(cleaned[field]))
    tb = cleaned.get("traceback")
    if isinstance(tb, list):
        cleaned["traceback"] = [printable(str(line)) for line in tb]
    for field in ("eargs", "wb_exception"):
        if field in cleaned:
            cleaned[field] = _printable_within(cleaned[field])
    return cleaned


def _printable_within(value: Any) -> Any:
    """``value`` (JSON, as the codec writes it) with every string in it made `printable`. The codec nests values
    at most 80 deep, and what is deeper than that is left for the codec to refuse."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable_within(item) for item in value]
    if isinstance(value, dict):
        return {key: _printable_within(item) for key, item in value.items()}
    return value
