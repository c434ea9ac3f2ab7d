"""The reference pages: API (from docstrings), notation, how to run, execution status, offline assets.

Every public lorakit object (each name in ``lorakit.__all__`` and in every module's ``__all__``)
must carry a docstring with an ``Example:`` section (constants: a ``#:`` doc comment), and every
module must have its ``automodule`` section in ``book/api.md``. New modules are picked up
automatically.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import lorakit

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "book" / "api.md").read_text()


def lorakit_modules() -> list[ModuleType]:
    modules = [lorakit]
    for info in pkgutil.walk_packages(lorakit.__path__, "lorakit."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


MODULES = lorakit_modules()


def public_names() -> list[tuple[str, str]]:
    return sorted({(m.__name__, name) for m in MODULES for name in getattr(m, "__all__", [])})


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_module_documented_on_the_api_page(module: ModuleType) -> None:
    assert (module.__doc__ or "").strip(), f"{module.__name__} has no module docstring"
    if module is lorakit:
        assert ".. automodule:: lorakit\n" in API
        return
    if not getattr(module, "__all__", None):
        return  # a namespace package with nothing public of its own
    block = re.search(rf"\.\. automodule:: {re.escape(module.__name__)}\s*\n((?:[ \t]+:\S.*\n)*)", API)
    assert block, (f"book/api.md has no section for {module.__name__}: append\n"
                   f"```{{eval-rst}}\n.. automodule:: {module.__name__}\n   :members:\n```")
    assert ":members:" in block.group(1), f"book/api.md: {module.__name__}'s automodule needs :members:"


def attribute_doc(module_name: str, name: str) -> str:
    from sphinx.pycode import ModuleAnalyzer

    docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    return "\n".join(docs.get(("", name), []))


@pytest.mark.parametrize("module_name,name", public_names(), ids=[f"{m}.{n}" for m, n in public_names()])
def test_public_object_documented_with_an_example(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, name), f"{module_name}.__all__ lists {name!r}, which does not exist"
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        doc = inspect.getdoc(obj) or ""
        assert doc.strip(), f"{module_name}.{name} has no docstring"
        assert re.search(r"^\s*Examples?:\s*$", doc, re.M), (
            f"{module_name}.{name}: the docstring needs an 'Example:' section (Google style, with >>> lines)")
        assert ">>>" in doc, f"{module_name}.{name}: the Example section needs runnable '>>>' lines"
    else:
        defining = module_name if name in vars(module) and attribute_doc(module_name, name) else None
        if defining is None:  # re-exported constant: documented where it is defined
            defining = next((m.__name__ for m in MODULES if m is not module and name in getattr(m, "__all__", [])
                             and attribute_doc(m.__name__, name)), None)
        assert defining, f"{module_name}.{name} (a constant) needs a '#:' doc comment above its assignment"


def test_notation_page_fixes_every_symbol() -> None:
    text = (ROOT / "book" / "notation.md").read_text()
    for symbol in ("$X$", "$y$", "$W$", "$A$", "$B$", "$r$", "$\\alpha$", "$D$", "$L$", "$\\bar L$", "$R$",
                   "$E$", "$\\Delta W$"):
        assert symbol in text, f"book/notation.md does not define {symbol}"
    assert re.search(r"A.{0,40}input side", text) and re.search(r"B.{0,40}output side", text), (
        "book/notation.md must say which side A and B sit on")
    assert "r \\times d_\\text{in}" in text and "d_\\text{out} \\times r" in text


def test_how_to_run_page_covers_every_way_to_run() -> None:
    text = (ROOT / "book" / "how_to_run.md").read_text()
    for needed in ("make book", "make test", "Colab", "environment.yml", "nbval", "make notebooks",
                   "nbval-ignore-output", "ATEN_CPU_CAPABILITY", "LORAKIT_DATA"):
        assert needed in text, f"book/how_to_run.md does not explain {needed!r}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] and any(isinstance(d, dict) and "pip" in d for d in env["dependencies"]), (
        "environment.yml must install the pip lock")


def test_status_page_lists_every_executed_notebook() -> None:
    times_file = ROOT / "book" / "execution_times.json"
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        pytest.skip("no notebooks yet")
    assert times_file.exists() and (ROOT / "book" / "status.md").exists(), (
        "book/status.md is generated by 'make notebooks'; run it")
    times = json.loads(times_file.read_text())
    status = (ROOT / "book" / "status.md").read_text()
    for nb in notebooks:
        rel = f"notebooks/{nb.name}"
        assert rel in times, f"{rel} has no recorded run time: run 'make notebooks NB={rel}'"
        assert f"[{nb.stem}]" in status, f"book/status.md does not list {nb.stem}"


def test_offline_assets_configured() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = config["sphinx"]["config"]
    assert "_vendor" in sphinx["html_extra_path"]
    mathjax = sphinx["mathjax_path"]
    assert not mathjax.startswith("http"), "MathJax must be self-hosted, not from a CDN"
    assert (ROOT / "_vendor" / mathjax.removeprefix("../")).is_file(), f"{mathjax} is not in _vendor/ (make setup)"
    for script in sphinx["nb_ipywidgets_js"]:
        assert not script.startswith("http") and (ROOT / "_vendor" / script.removeprefix("../")).is_file(), script
    assert config["repository"]["branch"] == "main" and config["launch_buttons"]["colab_url"]
    assert config["html"]["use_download_button"] is True


def test_readme_library_example_runs(tmp_path, monkeypatch) -> None:
    """The README's stand-alone lorakit example is code a user copies: it must run as printed."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## Using lorakit on its own\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its 'Using lorakit on its own' python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)  # noqa: S102 — the README's own code
    assert all(type(m).__name__ != "LoRALinear" for m in namespace["merged"].modules())
    assert (tmp_path / "adapter.safetensors").exists()
