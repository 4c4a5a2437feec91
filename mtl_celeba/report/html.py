"""``report.html``: the blocks of ``report.md`` (:func:`.markdown.report_blocks`) as one
self-contained page, to look at in a browser.

Self-contained: the CSS and the script are inline, the plots are embedded as PNG data URIs and
the forest plots are inline SVG, so the file needs no network and can be mailed or archived
alone. Every table sorts by a click on its header (numerically where the column holds numbers:
signs, ``±`` and trailing words are read past, ``n/a`` goes last either way); each context of
"Does it help?" gets a forest plot of the paired differences to MTL, one panel per task.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mtl_celeba.report.markdown import (
    Block,
    Bullets,
    Forest,
    Heading,
    Paragraph,
    Pictures,
    Table,
    _difference_cell,
)

#: Forest-plot colours: a significant gain, a significant loss, anything else.
GAIN, LOSS, NEUTRAL = "#1a7f37", "#cf222e", "#57606a"
#: Forest-plot panel geometry in pixels.
PANEL_WIDTH, LABEL_WIDTH, ROW_HEIGHT, TOP, BOTTOM = 330, 130, 16, 22, 30

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  margin: 0 auto; padding: 1rem 2rem 3rem; max-width: 1400px; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
code { background: #f0f2f4; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
nav { background: #f6f8fa; padding: .4rem .8rem; border-radius: 6px; }
nav a { margin-right: 1rem; white-space: nowrap; }
.scroll { overflow-x: auto; margin: .5rem 0 1rem; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
thead th { background: #f6f8fa; cursor: pointer; user-select: none; position: sticky; top: 0; }
thead th:first-child { background: #f6f8fa; z-index: 1; }
thead th::after { content: " \\2195"; color: #8c959f; }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: #1f2328; }
thead th[aria-sort="descending"]::after { content: " \\25BC"; color: #1f2328; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr:hover td { background: #fff8c5; }
.forest { display: flex; flex-wrap: wrap; gap: 6px; }
.forest svg { border: 1px solid #d0d7de; border-radius: 4px; background: #fff; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
.hint { color: #57606a; font-size: 12px; }
"""

# Sorting: a column is numeric when one of its cells starts with a number ("+1.23 [..]",
# "85.20 ± 1.1", "0.50 of 3"); cells without one ("n/a", "baseline") go last in both
# directions. A second click reverses; ties keep their order.
SCRIPT = r"""
(function () {
  "use strict";
  function number(text) {
    var match = text.trim().replace(/\u2212/g, "-").match(/^[+-]?(\d+\.?\d*|\.\d+)/);
    return match ? parseFloat(match[0]) : null;
  }
  function sortTable(table, column, header) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var texts = rows.map(function (row) {
      var cell = row.cells[column];
      return cell ? cell.textContent : "";
    });
    var numbers = texts.map(number);
    var numeric = numbers.some(function (value) { return value !== null; });
    var direction = header.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var order = rows.map(function (_, index) { return index; });
    order.sort(function (a, b) {
      if (numeric) {
        var x = numbers[a], y = numbers[b];
        if (x === null || y === null) {
          return (x === null) - (y === null) || a - b;
        }
        return direction * (x - y) || a - b;
      }
      return direction * texts[a].localeCompare(texts[b], undefined, {numeric: true}) || a - b;
    });
    order.forEach(function (index) { body.appendChild(rows[index]); });
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) {
      cell.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.title = "click to sort";
      header.addEventListener("click", function () { sortTable(table, column, header); });
    });
  });
})();
"""


def inline(text: str) -> str:
    """A block's text as HTML: escaped, with its ``**bold**`` and ```code``` marks."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def table_html(frame: pd.DataFrame) -> str:
    """A sortable table; its cells are the report's formatted strings."""
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in frame.astype(str).itertuples(index=False, name=None)
    ]
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values between ``low`` and ``high``."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(tick: float) -> str:
    """``-2``, ``0``, ``+2.5``: signed, as the tables write differences."""
    return "0" if abs(tick) < 1e-9 else f"{tick:+g}"


def forest_html(forest: Forest) -> str:
    """Per task an SVG panel: each configuration's paired difference to MTL (pp) with its
    95% t interval, on one shared scale; filled green / red marks a Holm-significant gain /
    loss. Hovering a mark shows the table's cell."""
    paired = forest.paired
    if paired.empty:
        return ""
    values = 100 * pd.concat([paired["diff"], paired["ci_low"], paired["ci_high"]])
    values = values[values.map(math.isfinite)]
    if values.empty:
        return ""
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    pad = max((high - low) * 0.06, 0.05)
    low, high = low - pad, high + pad
    labels = [c for c in forest.configurations if c in set(paired["configuration"])]
    plot_left, plot_right = LABEL_WIDTH, PANEL_WIDTH - 12
    height = TOP + ROW_HEIGHT * len(labels) + BOTTOM

    def x(value: float) -> float:
        return plot_left + (value - low) / (high - low) * (plot_right - plot_left)

    panels = []
    for task, rows in paired.groupby("task", sort=False):
        by_label = rows.set_index("configuration")
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_WIDTH}" height="{height}" '
            f'role="img" aria-label="{html.escape(str(task))}">',
            f'<text x="6" y="15" font-weight="600" font-size="12">{html.escape(str(task))}</text>',
        ]
        bottom = height - BOTTOM
        for tick in _ticks(low, high):
            parts.append(
                f'<line x1="{x(tick):.1f}" y1="{TOP - 4}" x2="{x(tick):.1f}" y2="{bottom}" '
                f'stroke="#eaeef2"/><text x="{x(tick):.1f}" y="{bottom + 12}" font-size="10" '
                f'text-anchor="middle" fill="#57606a">{_tick_label(tick)}</text>'
            )
        parts.append(
            f'<line x1="{x(0):.1f}" y1="{TOP - 4}" x2="{x(0):.1f}" y2="{bottom}" '
            'stroke="#8c959f" stroke-dasharray="3,2"/>'
            f'<text x="{(plot_left + plot_right) / 2:.1f}" y="{bottom + 25}" font-size="10" '
            'text-anchor="middle" fill="#57606a">difference to MTL (pp)</text>'
        )
        for index, label in enumerate(labels):
            y = TOP + ROW_HEIGHT * index + ROW_HEIGHT / 2
            short = label if len(label) <= 20 else label[:19] + "…"
            parts.append(
                f'<text x="6" y="{y + 4:.1f}" font-size="11"><title>{html.escape(label)}</title>'
                f"{html.escape(short)}</text>"
            )
            if label not in by_label.index:
                continue
            row = by_label.loc[label]
            tip = html.escape(f"{label} − MTL, {task}: {_difference_cell(row)}")
            if not math.isfinite(row["diff"]):
                parts.append(
                    f'<text x="{plot_left + 4}" y="{y + 4:.1f}" font-size="10" fill="#8c959f">'
                    f"<title>{tip}</title>n/a</text>"
                )
                continue
            colour = {"gain": GAIN, "loss": LOSS}.get(row["significant"], NEUTRAL)
            mark = [f"<g><title>{tip}</title>"]
            if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
                mark.append(
                    f'<line x1="{x(100 * row["ci_low"]):.1f}" y1="{y:.1f}" '
                    f'x2="{x(100 * row["ci_high"]):.1f}" y2="{y:.1f}" stroke="{colour}" '
                    'stroke-width="1.6"/>'
                )
            fill = colour if row["significant"] in ("gain", "loss") else "#fff"
            mark.append(
                f'<circle cx="{x(100 * row["diff"]):.1f}" cy="{y:.1f}" r="3.6" fill="{fill}" '
                f'stroke="{colour}" stroke-width="1.6"/></g>'
            )
            parts.append("".join(mark))
        parts.append("</svg>")
        panels.append("".join(parts))
    return (
        '<p class="hint">Paired difference to MTL per task (points, mean over seeds) with its '
        "95% t interval; filled green / red: a Holm-significant gain / loss; hover a mark for "
        f'its numbers.</p><div class="forest">{"".join(panels)}</div>'
    )


def picture_html(path: str, out_dir: Path) -> str:
    """A plot beside the report, embedded as a data URI (a note if it is missing)."""
    file = out_dir / path
    if not file.is_file():
        return f"<p>Plot <code>{html.escape(path)}</code> is missing.</p>"
    data = base64.b64encode(file.read_bytes()).decode("ascii")
    kind = "svg+xml" if file.suffix == ".svg" else file.suffix.lstrip(".").lower()
    name = html.escape(Path(path).stem)
    return (
        f'<figure><img alt="{name}" src="data:image/{kind};base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def render_html(blocks: Sequence[Block], out_dir: Path) -> str:
    """The whole ``report.html``; ``out_dir`` is where the plots named by the blocks lie."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "Report")
    body: list[str] = []
    sections: list[tuple[str, str]] = []
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f"s{len(sections)}"
            if block.level == 2:
                sections.append((anchor, block.text))
            body.append(f'<h{block.level} id="{anchor}">{inline(block.text)}</h{block.level}>')
            if block.level == 1:
                body.append("<!--nav-->")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(
                f"<li>{'<br>'.join(inline(line) for line in item.split(chr(10)))}</li>"
                for item in block.items
            )
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            body.append(table_html(block.frame))
        elif isinstance(block, Pictures):
            body += [picture_html(path, out_dir) for path in block.paths]
        elif isinstance(block, Forest):
            body.append(forest_html(block))
    links = "".join(f'<a href="#{a}">{html.escape(text)}</a>' for a, text in sections)
    page = "\n".join(body).replace("<!--nav-->", f"<nav>{links}</nav>" if links else "", 1)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{page}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
