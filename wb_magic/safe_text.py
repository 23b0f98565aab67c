"""What of a worker's text may reach the user's terminal, log or notebook: one rule for all of it.

A worker is not trusted, and what it prints, raises or names is shown to the user: its call output, its remote
tracebacks, a sandboxed worker's stdout and stderr. Terminal control sequences in that text could rewrite the
screen, set the window title or reach the clipboard (OSC 52); a carriage return could overwrite what the host or
another call wrote on the same line; bidirectional overrides and zero-width characters could make text read
other than it is. So every such text keeps its line feeds and tabs and loses the rest of those characters.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

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
