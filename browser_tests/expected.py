"""What a saved notebook says each cell shows: its outputs as text, sanitised as nbval sanitises them."""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

IGNORE = "nbval-ignore-output"
RAISES = "raises-exception"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# the folder part of a path to a .py file in a traceback (the checkout the notebook was saved in, or the lab's copy)
TRACEBACK_FOLDER = re.compile(r"/(?:[^/\s'\":]+/)+(?=[^/\s'\":]+\.py\b)")


@dataclass
class Cell:
    """A saved code cell: its source, its tags, and the text of each of its outputs."""

    index: int  # among the notebook's code cells, from 0
    source: str
    tags: list[str]
    outputs: list[str] = field(default_factory=list)
    html: list[bool] = field(default_factory=list)  # which outputs are HTML (their text compared without white space)

    @property
    def ignored(self) -> bool:
        return IGNORE in self.tags

    @property
    def raises(self) -> bool:
        return RAISES in self.tags

    def describe(self) -> str:
        first = self.source.strip().splitlines()[0] if self.source.strip() else ""
        return f"code cell {self.index + 1} ({first[:70]!r})"


def sanitizers(config: Path) -> list[tuple[re.Pattern[str], str]]:
    """The regex/replace pairs of an nbval sanitize file (an INI file, one section per pair)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def sanitize(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def normalize(text: str, rules: list[tuple[re.Pattern[str], str]], *, html: bool = False) -> str:
    """Text as compared: ANSI colours gone, nbval's sanitising, the folders of traceback paths, line ends."""
    text = sanitize(ANSI.sub("", text), rules)
    text = TRACEBACK_FOLDER.sub(".../", text).replace("\xa0", " ")
    if html:
        return " ".join(text.split())
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip()


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    return "".join(parser.parts)


def output_text(output: dict[str, Any], rules: list[tuple[re.Pattern[str], str]]) -> tuple[str, bool]:
    """The text JupyterLab shows for a saved output, and whether it is HTML. HTML is sanitised as nbval does it,
    on the markup, before its text is taken (the text of a sanitised part is a placeholder: see `html_matches`)."""
    kind = output["output_type"]
    if kind == "stream":
        return _joined(output["text"]), False
    if kind == "error":
        return "\n".join(output["traceback"]), False
    data = output.get("data", {})
    if "text/html" in data:
        return html_text(sanitize(_joined(data["text/html"]), rules)), True
    if "text/plain" in data:
        return _joined(data["text/plain"]), False
    return "", False


PLACEHOLDER = "..."  # what sanitize.cfg puts where a part varies from run to run


def html_matches(saved: str, shown: str) -> bool:
    """Whether the text of a rendered HTML output is the saved one's, a placeholder standing for any text.

    White space is left out of the comparison: where markup puts it is not what a person reads."""
    saved, shown = "".join(saved.split()), "".join(shown.split())
    pattern = ".*?".join(re.escape(part) for part in saved.split(PLACEHOLDER))
    return re.fullmatch(pattern, shown, re.DOTALL) is not None


def code_cells(notebook: Path, rules: list[tuple[re.Pattern[str], str]]) -> list[Cell]:
    """The notebook's code cells as saved (HTML outputs sanitised with ``rules``)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        saved = Cell(len(cells), _joined(cell["source"]), list(cell.get("metadata", {}).get("tags", [])))
        for output in _merged(cell.get("outputs", [])):
            text, is_html = output_text(output, rules)
            saved.outputs.append(text)
            saved.html.append(is_html)
        cells.append(saved)
    return cells


def _merged(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive stream outputs of one stream merged, as JupyterLab shows them."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if last and output["output_type"] == last["output_type"] == "stream" and output["name"] == last["name"]:
            last["text"] = _joined(last["text"]) + _joined(output["text"])
        else:
            merged.append(dict(output))
    return merged
