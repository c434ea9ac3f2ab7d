"""The layout: the library never imports the book's experiment code, and every object names its chapter.

``lorakit`` is the reusable library; ``lorakit.book`` holds the chapters' experiment code (tasks,
pretrained models, sweeps, measurements). The direction is one way: ``lorakit.book`` uses the library,
never the reverse. Checked twice: statically (every ``import`` of every library module, parsed with
``ast``) and at run time (importing the whole library loads no ``lorakit.book`` module).

Every public object's docstring names the chapter that introduces it, ``(Chapter N)``, as d2l tags
each object with its section, so a reader of the API page finds where it is taught.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import lorakit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lorakit"
BOOK = "lorakit.book"

#: Library modules allowed, for now, to import the book's code. Each entry needs a reason.
KNOWN_OFFENDERS: set[str] = set()

CHAPTER_TAG = re.compile(r"\bChapters? \d+")

#: Library objects whose docstrings do not name their chapter yet (empty since the library rewrite;
#: kept so an exception has one visible place). The list may only shrink: a listed object that gains its tag fails the
#: test until its entry is removed. lorakit.book, lorakit.peft_methods and lorakit.subspace are enforced fully.
UNTAGGED_LIBRARY_OBJECTS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).parts[0] == "book")


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module the ``import`` statements of module ``name`` name (relative imports resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from lorakit import book`
    return found


def file_imports(path: Path) -> set[str]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def is_book(module: str) -> bool:
    return module == BOOK or module.startswith(BOOK + ".")


def test_the_import_parser_sees_relative_and_absolute_imports() -> None:
    # the check itself must be able to fail: a library module importing the book, written four ways
    source = "from ..book import transfer\nimport lorakit.book.data\nfrom lorakit import book\nfrom .. import book as b\n"
    found = imported_modules(source, "lorakit.variants.probe")
    assert {"lorakit.book.transfer", "lorakit.book.data", "lorakit.book"} <= found
    assert imported_modules("from . import dora\n", "lorakit.variants", is_package=True) == {
        "lorakit.variants", "lorakit.variants.dora"}
    assert not any(is_book(m) for m in imported_modules("from .train import fit\n", "lorakit.inject"))


def test_the_library_never_imports_the_book_code() -> None:
    offenders = {}
    for path in library_files():
        book_imports = sorted(m for m in file_imports(path) if is_book(m))
        if book_imports and module_name(path) not in KNOWN_OFFENDERS:
            offenders[module_name(path)] = book_imports
    assert not offenders, f"library modules import lorakit.book (move the code into lorakit.book, or invert the call): {offenders}"


def test_importing_the_library_loads_no_book_module() -> None:
    modules = sorted({module_name(p) for p in library_files()} - KNOWN_OFFENDERS)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'lorakit.book' or m.startswith('lorakit.book.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"importing the library loaded {out.stdout.strip()}"
    assert "lorakit" in modules and "lorakit.layer" in modules and "lorakit.variants.dora" in modules


def test_every_book_module_says_which_chapters_it_serves() -> None:
    files = sorted((PACKAGE / "book").rglob("*.py"))  # read, not imported: __main__ modules would run
    untagged = [module_name(p) for p in files if not CHAPTER_TAG.search(ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert len(files) > 15 and not untagged, f"module docstrings without '(Chapter N)': {untagged}"


def all_modules() -> list:
    # the known offenders are skipped: they move into lorakit.book, where every object is enforced
    names = ["lorakit"] + [i.name for i in pkgutil.walk_packages(lorakit.__path__, "lorakit.")
                           if not i.name.rsplit(".", 1)[-1].startswith("_") and i.name not in KNOWN_OFFENDERS]
    return [importlib.import_module(n) for n in names]


def object_doc(module, name: str) -> str | None:
    """The docstring of a public class or function, the ``#:`` comment of a constant, or None for a re-export."""
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return inspect.getdoc(obj) or ""
    from sphinx.pycode import ModuleAnalyzer

    doc = "\n".join(ModuleAnalyzer.for_module(module.__name__).find_attr_docs().get(("", name), []))
    return doc or None  # a constant re-exported from elsewhere is checked where it is defined


def untagged_objects() -> set[tuple[str, str]]:
    return {(m.__name__, name) for m in all_modules() for name in getattr(m, "__all__", [])
            if (doc := object_doc(m, name)) is not None and not CHAPTER_TAG.search(doc)}


def test_every_public_object_names_its_chapter() -> None:
    untagged = untagged_objects()
    missing = sorted(untagged - UNTAGGED_LIBRARY_OBJECTS)
    assert not missing, f"add '(Chapter N)' to the docstring (first line) of: {missing}"
    assert not {m for m, _ in UNTAGGED_LIBRARY_OBJECTS if is_book(m)}, "lorakit.book is enforced fully"
    fixed = sorted(UNTAGGED_LIBRARY_OBJECTS - untagged)
    assert not fixed, f"these now name their chapter: remove them from UNTAGGED_LIBRARY_OBJECTS: {fixed}"
