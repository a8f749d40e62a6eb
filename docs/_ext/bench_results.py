"""Sphinx extension: render ``benchmarks/results/`` at build time, so that the benchmarks
page shows what the scripts last wrote and no number is copied by hand.

Directives (file names are relative to ``bench_results_dir``, set in ``conf.py``):

``.. bench-table:: convergence.json``
    A table from a JSON file. ``:path:`` walks into the data with ``/``-separated keys; a
    ``*`` runs over every key of a dict (or item of a list) and adds one row per entry.
    ``:keys:`` names the columns that show the keys matched by the ``*`` s (``_`` hides
    one). At the end of the path each entry is either a record (a dict: ``:columns:``
    picks its fields, each itself a ``/``-path) or a single value (named by ``:value:``).
    Rows whose picked fields are all missing are left out. ``:header:`` renames the
    columns shown (keys first, then fields).

``.. bench-text:: samplers.json``
    The string (or number) at ``:path:`` as a paragraph, e.g. a benchmark's ``note``.

``.. bench-machine:: samplers.json``
    One line on where the file was measured (its ``machine`` record).

``.. bench-figure:: samplers_calls_vs_error.png``
    One result plot as a figure; the directive's content is the caption.

``.. bench-figures::``
    A figure for every ``*.png`` in the results folder not shown before on this page
    (``:exclude:`` names more to leave out), so that a new benchmark's plot appears
    without editing the docs.

``.. bench-files::``
    A list of every file in the results folder with a download link.

Every file read is a dependency of the page (edits to it rebuild the page); a missing file
or path is a build warning (an error under ``-W``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)
MISSING = object()


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits (whole numbers from 1e4, exponent form
    when tiny or huge)."""
    if value is MISSING or value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if abs(value) < 1e-3 or abs(value) >= 1e9:
            return f"{value:.2e}"
        if abs(value) >= 1e4:
            return f"{value:.0f}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def walk(data: Any, path: str) -> list[tuple[list[str], Any]]:
    """Every ``(matched keys, value)`` that ``path`` reaches in ``data``."""
    found: list[tuple[list[str], Any]] = [([], data)]
    for part in [p for p in path.split("/") if p]:
        nxt: list[tuple[list[str], Any]] = []
        for keys, value in found:
            if part == "*":
                if isinstance(value, dict):
                    nxt += [(keys + [str(k)], v) for k, v in value.items()]
                elif isinstance(value, list):
                    nxt += [(keys + [str(i)], v) for i, v in enumerate(value)]
            elif isinstance(value, dict) and part in value:
                nxt.append((keys, value[part]))
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                nxt.append((keys, value[int(part)]))
        found = nxt
    return found


def lookup(record: Any, path: str) -> Any:
    hits = walk(record, path)
    return hits[0][1] if hits else MISSING


def table(rows: list[list[str]], title: str = "") -> nodes.table:
    """A docutils table, the first row as header (built as nodes, so that the directive
    works in reStructuredText and in MyST pages alike)."""
    tab = nodes.table(classes=["bench-table"])
    if title:
        tab += nodes.title(text=title)
    group = nodes.tgroup(cols=len(rows[0]))
    tab += group
    group.extend(nodes.colspec(colwidth=1) for _ in rows[0])
    for part, part_rows in ((nodes.thead(), rows[:1]), (nodes.tbody(), rows[1:])):
        for cells in part_rows:
            row = nodes.row()
            for cell in cells:
                entry = nodes.entry()
                entry += nodes.paragraph(text=cell)
                row += entry
            part += row
        group += part
    return tab


def _csv(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


class _ResultsDirective(SphinxDirective):
    def results_dir(self) -> Path:
        folder = Path(self.config.bench_results_dir)
        return folder if folder.is_absolute() else (Path(self.env.srcdir) / folder).resolve()

    def load(self, name: str) -> Any:
        path = self.results_dir() / name
        if not path.is_file():
            raise self.error(f"benchmark result {path} does not exist (run the benchmark "
                             "that writes it)")
        self.env.note_dependency(str(path))
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return path.read_text()

    def rel(self, path: Path) -> str:
        """``path`` relative to the current document's folder (for image/download)."""
        here = Path(self.env.doc2path(self.env.docname)).parent
        return Path(os.path.relpath(path, here)).as_posix()

    def shown_figures(self) -> set[str]:
        """Result PNGs already on this page (``temp_data`` lives for one document)."""
        return self.env.temp_data.setdefault("bench_shown_figures", set())


class BenchTable(_ResultsDirective):
    required_arguments = 1
    option_spec = {
        "path": directives.unchanged_required,
        "keys": directives.unchanged,
        "columns": directives.unchanged,
        "value": directives.unchanged,
        "header": directives.unchanged,
        "caption": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        data = self.load(self.arguments[0])
        path = self.options["path"]
        keys, columns = _csv(self.options.get("keys")), _csv(self.options.get("columns"))
        value_name = self.options.get("value")
        if not columns and not value_name:
            raise self.error("bench-table needs :columns: (records) or :value: (single values)")
        hits = walk(data, path)
        n_stars = path.split("/").count("*")
        if len(keys) != n_stars:
            raise self.error(f":keys: must name the {n_stars} '*' of :path: (use _ to hide one)")
        shown_keys = [i for i, k in enumerate(keys) if k != "_"]
        header = [keys[i] for i in shown_keys] + (columns or [value_name])
        if self.options.get("header"):
            header = _csv(self.options["header"])
        rows = []
        for matched, value in hits:
            if columns:
                if not isinstance(value, dict):
                    continue
                cells = [lookup(value, c) for c in columns]
            else:
                cells = [value]
            if all(c is MISSING for c in cells):
                continue
            rows.append([matched[i] for i in shown_keys] + [fmt(c) for c in cells])
        if not rows:
            raise self.error(f"{self.arguments[0]}: no rows at path {path!r}")
        if len(header) != len(rows[0]):
            raise self.error(f":header: has {len(header)} names for {len(rows[0])} columns")
        return [table([header, *rows], self.options.get("caption", ""))]


class BenchText(_ResultsDirective):
    required_arguments = 1
    option_spec = {"path": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        value = lookup(self.load(self.arguments[0]), self.options["path"])
        if value is MISSING:
            raise self.error(f"{self.arguments[0]}: nothing at path {self.options['path']!r}")
        return [nodes.paragraph(text=fmt(value))]


class BenchMachine(_ResultsDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        m = self.load(self.arguments[0]).get("machine")
        if not isinstance(m, dict):
            raise self.error(f"{self.arguments[0]} has no 'machine' record")
        parts = [f"{k}: {fmt(m[k])}" for k in ("platform", "cpu_count", "torch", "torch_threads",
                                                "date", "git_commit") if k in m]
        para = nodes.paragraph()
        para += nodes.emphasis(text=f"Measured on {'; '.join(parts)} ({self.arguments[0]}).")
        return [para]


class BenchFigure(_ResultsDirective):
    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        png = self.results_dir() / self.arguments[0]
        if not png.is_file():
            raise self.error(f"benchmark figure {png} does not exist (run the benchmark)")
        self.shown_figures().add(png.name)
        return [self.figure(png, " ".join(self.content))]

    def figure(self, png: Path, caption: str = "") -> nodes.figure:
        """A figure of a results PNG, captioned with ``caption`` and the file's name."""
        self.env.note_dependency(str(png))
        fig = nodes.figure()
        fig += nodes.image(uri=self.rel(png), width="100%", alt=png.name)
        cap = nodes.caption()
        if caption:
            cap += nodes.Text(caption + " ")
        cap += nodes.literal(text=f"benchmarks/results/{png.name}")
        fig += cap
        return fig


class BenchFigures(BenchFigure):
    """Every results PNG not shown by a ``bench-figure`` on the page yet."""

    required_arguments = 0
    has_content = False
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        shown = self.shown_figures()
        shown |= set(_csv(self.options.get("exclude")))
        figures = []
        for png in sorted(self.results_dir().glob("*.png")):
            if png.name not in shown:
                shown.add(png.name)
                figures.append(self.figure(png))
        if not figures:
            return [nodes.paragraph(text="(none)")]
        return figures


class BenchFiles(_ResultsDirective):
    def run(self) -> list[nodes.Node]:
        items = nodes.bullet_list()
        for path in sorted(p for p in self.results_dir().iterdir() if p.is_file()):
            ref = addnodes.download_reference(
                "", "", nodes.literal(text=path.name), reftarget=self.rel(path),
                refdoc=self.env.docname, refdomain="", reftype="download", refexplicit=True)
            para = nodes.paragraph()
            para += ref
            item = nodes.list_item()
            item += para
            items += item
        return [items]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("bench_results_dir", "../benchmarks/results", "env")
    app.add_directive("bench-table", BenchTable)
    app.add_directive("bench-text", BenchText)
    app.add_directive("bench-machine", BenchMachine)
    app.add_directive("bench-figure", BenchFigure)
    app.add_directive("bench-figures", BenchFigures)
    app.add_directive("bench-files", BenchFiles)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
