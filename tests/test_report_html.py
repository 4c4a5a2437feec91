"""report.html: its structure (parsed with html.parser) and, in headless Chromium, that its
tables render, sort on a click and raise no console error."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_report import SINGLE_TASK, TASKS, make_stl_sweep, make_sweep

from mtl_celeba.report.__main__ import main
from mtl_celeba.report.html import forest_html, inline
from mtl_celeba.report.markdown import Forest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """What the tests look at: tables (header and rows of cell texts), headings, links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, list[Any]]] = []
        self.headings: list[tuple[int, str]] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.svgs = 0
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append((tag, name, value))
        if tag == "table":
            self.tables.append({"header": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td", "h1", "h2", "h3"):
            self._text = []
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._row is not None and self._text is not None:
            self._row.append("".join(self._text))
            self._text = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if table["header"]:
                table["rows"].append(self._row)
            else:
                table["header"] = self._row
            self._row = None
        elif tag in ("h1", "h2", "h3") and self._text is not None:
            self.headings.append((int(tag[1]), "".join(self._text)))
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """test_report's sweeps (3 configurations, a failed run, STL lacking Young), reported once."""
    root = tmp_path_factory.mktemp("sweeps")
    sweep, stl = make_sweep(root), make_stl_sweep(root, SINGLE_TASK)
    main([str(sweep), str(stl)])
    page = Page()
    page.feed((sweep / "report.html").read_text(encoding="utf-8"))
    return {"sweep": sweep, "md": (sweep / "report.md").read_text(encoding="utf-8"), "page": page}


def test_same_sections_and_tables_as_the_markdown(report: dict[str, Any]) -> None:
    headings = [
        (len(hashes), text)
        for hashes, text in re.findall(r"^(#{1,3}) (.+)$", report["md"], flags=re.MULTILINE)
    ]
    assert report["page"].headings == headings
    assert ("Summary" in {text for _, text in headings}) and len(headings) > 5
    separators = re.findall(r"^\|(?: *:?-+:? *\|)+$", report["md"], flags=re.MULTILINE)
    assert len(report["page"].tables) == len(separators)
    summary = next(t for t in report["page"].tables if "gain vs MTL (paired)" in t["header"])
    assert [row[0] for row in summary["rows"]] == ["mtl", "random_drop", "dst (all)"]
    # the failed run's error is shown as it is (Markdown had to escape its pipe)
    assert any(
        "RuntimeError: CUDA out of memory | on GPU 0" in row
        for table in report["page"].tables
        for row in table["rows"]
    )


def test_self_contained(report: dict[str, Any]) -> None:
    """No URL a viewer would fetch: plots are data URIs, the script and CSS are inline."""
    page = report["page"]
    images = [value for tag, _, value in page.urls if tag == "img"]
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    for tag, attribute, value in page.urls:
        assert not re.match(r"(https?:)?//", value), (tag, attribute, value)
        assert tag in ("img", "a") and (value.startswith("data:") or value.startswith("#"))
    # one forest panel per task of the one context
    assert page.svgs == len(TASKS)


def test_no_html_switch(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    main([str(sweep), "--no-html"])
    assert (sweep / "report.md").is_file() and not (sweep / "report.html").exists()


def test_inline_marks_and_escaping() -> None:
    assert (
        inline("**Data:** `a<b>` & c") == "<strong>Data:</strong> <code>a&lt;b&gt;</code> &amp; c"
    )


def test_forest_plot_marks() -> None:
    """A significant gain is filled green at its place inside its interval; a difference
    without spread has no interval; too few paired seeds is written n/a."""
    paired = pd.DataFrame(
        {
            "configuration": ["dst", "famo", "nash"],
            "task": ["Smiling"] * 3,
            "pairs": [5, 5, 1],
            "diff": [0.02, -0.01, float("nan")],
            "ci_low": [0.01, float("nan"), float("nan")],
            "ci_high": [0.03, float("nan"), float("nan")],
            "p_exact": [0.06, 1.0, float("nan")],
            "testable": [True, False, False],
            "p_holm": [0.01, float("nan"), float("nan")],
            "significant": ["gain", "", ""],
        }
    )
    svg = forest_html(Forest(paired, ["mtl", "dst", "famo", "nash"]))
    assert svg.count("<svg") == 1 and "Smiling" in svg
    circles = re.findall(r'<circle cx="([\d.]+)"[^>]*fill="([^"]+)"', svg)
    lines = re.findall(r'<line x1="([\d.]+)" y1="[\d.]+" x2="([\d.]+)"[^>]*stroke="#1a7f37"', svg)
    assert [fill for _, fill in circles] == ["#1a7f37", "#fff"]  # dst filled, famo hollow
    assert len(lines) == 1  # only dst has an interval
    low, high = map(float, lines[0])
    assert low < float(circles[0][0]) < high and float(circles[1][0]) < low
    assert ">n/a</text>" in svg and "nash − MTL, Smiling: n/a (1 paired seed)" in svg
    # one row per configuration compared (the baseline has none)
    assert re.findall(r'font-size="11"><title>([^<]+)</title>', svg) == ["dst", "famo", "nash"]


# --------------------------------------------------------------------------- in Chromium

#: Injected before the report's own script: records errors, then (on load) every table's row
#: count and size, and for each column in turn the rows before, after one and after two clicks
#: on its header.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var out = {tables: [], images: []};
  try {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      var headers = table.tHead.rows[0].cells;
      var entry = {rows: table.tBodies[0].rows.length, height: table.offsetHeight,
                   header: [], clicks: [], before: []};
      var rowText = function () {
        return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
          return Array.prototype.map.call(row.cells, function (c) { return c.textContent; });
        });
      };
      entry.before = rowText();
      Array.prototype.forEach.call(headers, function (header, column) {
        entry.header.push(header.textContent);
        var start = rowText();
        header.click();
        var once = rowText(), first = header.getAttribute("aria-sort");
        header.click();
        entry.clicks.push({start: start, once: once, twice: rowText(), first: first,
                           second: header.getAttribute("aria-sort")});
      });
      out.tables.push(entry);
    });
    document.querySelectorAll("img").forEach(function (img) {
      out.images.push(img.naturalWidth);
    });
  } catch (e) { window.__errors.push("probe: " + e); }
  out.errors = window.__errors;
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def number(text: str) -> float | None:
    """The sort key the page promises: a leading signed number, else None (sorted last)."""
    match = re.match(r"[+-]?(\d+\.?\d*|\.\d+)", text.strip().replace("\u2212", "-"))
    return float(match.group()) if match else None


def expected_order(rows: list[list[str]], column: int, descending: bool) -> list[list[str]]:
    """Rows sorted as the page should sort them (stable; cells without a number last)."""
    keys = [number(row[column]) for row in rows]
    if any(key is not None for key in keys):
        with_number = [r for r, k in zip(rows, keys, strict=True) if k is not None]
        without = [r for r, k in zip(rows, keys, strict=True) if k is None]
        return sorted(with_number, key=lambda r: number(r[column]), reverse=descending) + without
    # the page compares texts as the browser's locale does: case aside
    return sorted(rows, key=lambda r: r[column].casefold(), reverse=descending)


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`make test` installs it: apt-get install -y chromium)",
)
def test_in_headless_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    source = (report["sweep"] / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(source.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, flags=re.DOTALL)
    assert found, f"the probe did not run: {result.stderr[-2000:]}"
    out = json.loads(html.unescape(found.group(1)))
    assert out["errors"] == []
    assert not [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    # the tables render: as many as the parser found, each with its rows and a height
    parsed = report["page"].tables
    assert [t["rows"] for t in out["tables"]] == [len(t["rows"]) for t in parsed]
    assert all(t["height"] > 0 for t in out["tables"])
    assert len(out["images"]) == 3 and all(width > 0 for width in out["images"])
    for table in out["tables"]:
        for column, clicks in enumerate(table["clicks"]):
            assert clicks["first"] == "ascending" and clicks["second"] == "descending"
            assert sorted(clicks["once"]) == sorted(table["before"])  # rows move whole
            assert clicks["once"] == expected_order(clicks["start"], column, descending=False)
            assert clicks["twice"] == expected_order(clicks["once"], column, descending=True)
    # by hand: mean accuracy over tasks and seeds is dst 82.67, mtl 80.67, random_drop 80.00
    summary = next(t for t in out["tables"] if "gain vs MTL (paired)" in t["header"])
    mean = summary["header"].index("mean")
    assert [row[0] for row in summary["clicks"][mean]["once"]] == [
        "random_drop",
        "mtl",
        "dst (all)",
    ]
    assert [row[0] for row in summary["clicks"][mean]["twice"]] == [
        "dst (all)",
        "mtl",
        "random_drop",
    ]
