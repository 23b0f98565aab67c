"""A trace drawn as a waterfall: one row per span, in call order, a bar for when it ran (what ``%%wb_trace``
shows).

The picture is HTML with inline SVG and no JavaScript, so it reads the same in JupyterLab, in a static render of
the notebook and in a terminal (as text). Colours are SVG attributes, not CSS, which static renderers keep. Every
name in it may come from a worker (span names, module names, exception messages) and is escaped. Timings are
the only parts that change from run to run, and they sit in places a sanitiser can find: ``class="wb-t"`` cells
and ``class="wb-bar"`` rectangles in the HTML, ``[1.2 ms]`` at the end of a line of text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .safe_text import printable

HOST = "host"
ERROR = "#d62728"
ROUTED = "#9467bd"
LANES = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#ff9da6")
MAX_ERROR = 200  # characters of an exception's message shown
BAR_WIDTH = 1000  # the SVG's own units; it is stretched to the column's width
LEFT = 'align="left" style="text-align:left;white-space:nowrap"'  # JupyterLab's stylesheet right-aligns cells


@dataclass(frozen=True)
class Row:
    """One span, placed: which process ran it, how deep it sits, when it started and ended (ns from the
    trace's start), and whether it failed (with the exception's type and message)."""

    lane: str
    name: str
    kind: str
    depth: int
    start: int
    end: int
    error: str | None
    routed: bool


def rows(spans: Iterable[Any]) -> list[Row]:
    """The spans of one trace (OpenTelemetry SDK `ReadableSpan`s), as rows in call order: each span after its
    parent, siblings by start time."""
    spans = [s for s in spans if s.start_time is not None and s.end_time is not None]
    if not spans:
        return []
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[Any]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)
    origin = min(s.start_time for s in spans)
    placed: list[Row] = []

    def place(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, ()), key=lambda s: (s.start_time, -s.end_time)):
            placed.append(_row(span, depth, origin))
            place(span.context.span_id, depth + 1)

    place(None, 0)
    return placed


def _row(span: Any, depth: int, origin: int) -> Row:
    attributes = span.attributes or {}
    worker = attributes.get("wb_magic.worker")
    lane = HOST if worker is None else printable(str(worker))
    if worker is not None and attributes.get("wb_magic.segregation_id") is not None:
        lane += f" [{printable(str(attributes['wb_magic.segregation_id']))}]"
    error = None
    if span.status.status_code.name == "ERROR":  # the message may be a worker's, as may a span's name
        error = printable(span.status.description or "error")[:MAX_ERROR]
    kind = span.kind.name
    name = printable(span.name)
    routed = worker is None and kind == "INTERNAL" and name.startswith("route ")
    return Row(lane, name, kind, depth, span.start_time - origin, span.end_time - origin, error, routed)


def duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


class Waterfall:
    """The picture of a trace: HTML in a notebook, text in a terminal."""

    def __init__(self, spans: Iterable[Any], title: str = "%%wb_trace") -> None:
        self.rows = rows(spans)
        self.title = title

    @property
    def lanes(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.setdefault(row.lane, None)
        return list(seen)

    @property
    def origins(self) -> set[int]:
        """The rows where an error was raised: failed rows none of whose children failed (the others only passed
        the error on)."""
        found = set()
        for i, row in enumerate(self.rows):
            if not row.error:
                continue
            below = self.rows[i + 1 :]
            children = []
            for other in below:
                if other.depth <= row.depth:
                    break
                if other.depth == row.depth + 1:
                    children.append(other)
            if not any(child.error for child in children):
                found.add(i)
        return found

    def summary(self) -> str:
        workers = len([lane for lane in self.lanes if lane != HOST])
        parts = [f"{len(self.rows)} span{'s' * (len(self.rows) != 1)}", f"{workers} worker{'s' * (workers != 1)}"]
        for i in sorted(self.origins):
            parts.append(f"an error raised in {self.rows[i].name} ({self.rows[i].lane})")
        return f"{self.title}: {', '.join(parts)}"

    def text(self) -> str:
        if not self.rows:
            return f"{self.title}: no spans (did the cell call a worker?)"
        lane_width = max(len(lane) for lane in self.lanes)
        labels = [f"{'  ' * row.depth}{row.name} ({row.kind.lower()})" for row in self.rows]
        label_width = max(len(label) for label in labels)
        lines = [self.summary()]
        origins = self.origins
        for i, (row, label) in enumerate(zip(self.rows, labels, strict=True)):
            mark = (f"  ✗ {row.error}" if i in origins else "  ✗") if row.error else ""
            lines.append(f"{row.lane:<{lane_width}}  {label:<{label_width}}{mark} [{duration(row.end - row.start)}]")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.text())}</p>"
        total = max(row.end for row in self.rows) or 1
        colours = {lane: LANES[i % len(LANES)] for i, lane in enumerate(self.lanes)}
        out = [
            '<table class="wb-trace" style="border-collapse:collapse;font-family:monospace;font-size:12px">',
            f'<caption style="text-align:left;font-weight:bold">{html.escape(self.summary())}</caption>',
            f"<tr><th {LEFT}>process</th><th {LEFT}>span</th><th {LEFT}>kind</th>"
            f'<th align="left" style="text-align:left;width:320px">time</th><th align="right">took</th></tr>',
        ]
        origins = self.origins
        for i, row in enumerate(self.rows):
            colour = ERROR if row.error else ROUTED if row.routed else colours[row.lane]
            x = round(row.start * BAR_WIDTH / total)
            width = max(1, round((row.end - row.start) * BAR_WIDTH / total))
            name = html.escape(row.name)
            if row.error:
                why = f"<br>✗ {html.escape(row.error)}" if i in origins else " ✗"
                name = f'<font color="{ERROR}"><b>{name}</b>{why}</font>'
            tip = html.escape(f"{row.lane}: {row.name}" + (f" ({row.error})" if row.error else ""))
            out.append(
                f'<tr><td {LEFT}><font color="{colours[row.lane]}">■</font> {html.escape(row.lane)}</td>'
                f'<td align="left" style="text-align:left;padding-left:{row.depth + 0.5}em">{name}</td>'
                f"<td {LEFT}>{row.kind.lower()}</td>"
                f'<td {LEFT}><svg width="320" height="12" viewBox="0 0 {BAR_WIDTH} 12" preserveAspectRatio="none">'
                f'<rect class="wb-bar" x="{x}" width="{width}" y="1" height="10" fill="{colour}">'
                f"<title>{tip}</title></rect></svg></td>"
                f'<td class="wb-t" align="right" style="white-space:nowrap">{duration(row.end - row.start)}</td></tr>'
            )
        out.append("</table>")
        return "\n".join(out)
