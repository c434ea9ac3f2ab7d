"""Unit tests of book/_ext/reader_site.py, the Sphinx fixes for the reader's site."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from docutils import nodes
from sphinx.builders.html._assets import _JavaScript

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import reader_site  # noqa: E402


def test_duplicate_inline_scripts_are_dropped_in_place() -> None:
    scripts = [_JavaScript("_static/a.js"), _JavaScript(None, body="const X = 1"),
               _JavaScript("", body="const X = 1"), _JavaScript("", body="const Y = 2"), _JavaScript("_static/a.js")]
    same_list = scripts
    context = {"script_files": scripts}
    reader_site._dedupe_scripts(None, "p", "page.html", context, None)
    assert context["script_files"] is same_list  # Sphinx keeps adding page scripts to this list
    assert [(s.filename or "", s.attributes.get("body", "")) for s in scripts] == [
        ("_static/a.js", ""), ("", "const X = 1"), ("", "const Y = 2")]
    assert context["default_mode"] == "auto"


def test_widget_pages_get_the_require_map_and_mathjax_shim() -> None:
    added = []
    app = SimpleNamespace(add_js_file=lambda name, **kw: added.append((name, kw)))
    reader_site._widget_page_support(app, "p", "page.html", {"script_files": [_JavaScript("_static/x.js")]}, None)
    assert added == []
    context = {"script_files": [_JavaScript("../widgets/require.js"), _JavaScript("../widgets/embed-amd.js")]}
    reader_site._widget_page_support(app, "p", "page.html", context, None)
    assert len(added) == 1 and added[0][1]["priority"] < 500
    body = added[0][1]["body"]
    assert "var require = {paths:" in body and "Hub" in body and "typesetPromise" in body


def test_r_cells_are_highlighted_as_r() -> None:
    doctree = nodes.document(None, None)
    r_cell = nodes.literal_block("%%R\nx <- 1", "%%R\nx <- 1", language="ipython3")
    py_cell = nodes.literal_block("x = 1", "x = 1", language="ipython3")
    doctree += [r_cell, py_cell]
    reader_site._highlight_r_cells(None, doctree)
    assert r_cell["language"] == "r" and py_cell["language"] == "ipython3"
