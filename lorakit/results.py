"""Stored full-scale results that cannot drift from the code (Chapter 3).

The book's notebooks run a representative slice live; the full-scale grids (thousands of runs) are
stored in ``results/NAME.jsonl`` and re-verified by ``make test``. This module is the one way those
files are written, resumed, loaded and checked.

**An experiment** is a module-level :class:`Experiment`: a ``name``, a function
``run(config) -> dict of results``, its ``grid`` of configurations and the ``settings`` they share.
Its *entry point* ``"package.module:ATTR"`` is the registry: the results file records it, so
``verify`` finds the code that wrote the file without a list to maintain.

**A results file** is JSON lines. The first line is the header::

    {"format": "lorakit-results", "format_version": 1, "experiment": "pkg.mod:EXPERIMENT",
     "name": ..., "config": {"name", "version", "settings", "grid"}, "config_hash": "sha256:…",
     "tolerance": {"rtol": …, "atol": …}, "points": N, "lorakit": "0.1.0",
     "git_commit": "…" | null, "git_dirty": bool, "python": "3.11.2",
     "numerics": {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "cpu_capability", "torch"}}

and every further line is one finished run, ``{"key": {grid point}, "result": {…}}``. A run appends
one whole line per finished run (so an interrupted command loses at most the runs in flight, and a
torn last line is detected and dropped); once every point is stored the file is rewritten in grid
order, so the same experiment gives the same bytes however it was run (one process, a pool, Dask).

**Commands** (run from the repository root)::

    python -m lorakit.results run pkg.mod:EXPERIMENT [--workers N] [--scheduler tcp://host:8786]
    python -m lorakit.results run NAME                # once results/NAME.jsonl exists
    python -m lorakit.results verify [NAME ...|--all] [--sample N] [--seed S]

``run`` is resumable: rerun it and it skips the stored points. It runs locally on ``--workers``
processes (default: every core), each single-threaded, or on a Dask cluster when given
``--scheduler`` (the optional ``cluster`` extra: ``pip install "lorakit[cluster]"``). ``verify``
re-runs a fixed random sample of stored entries and fails unless they reproduce exactly (when this
machine has the file's pinned numerics) or within the experiment's stated tolerance (when not).
A file written by another configuration is refused, never mixed in: change the configuration, and
the fix is to delete the file and rerun (or restore the configuration).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .io import atomic_write

__all__ = [
    "Experiment",
    "numerics",
    "run_experiment",
    "load",
    "Stored",
    "verify",
    "Verification",
    "Mismatch",
    "load_experiment",
    "main",
]

FORMAT = "lorakit-results"
FORMAT_VERSION = 1
DEFAULT_DIR = "results"
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
_HEADER_FIELDS = ("experiment", "name", "config", "config_hash", "tolerance", "numerics")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON values (tensors and numpy scalars converted); TypeError otherwise."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} must be a str (results are stored as JSON)")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return _jsonable(obj.tolist(), where)
    raise TypeError(f"{where} is a {type(obj).__name__}: store only numbers, strings, lists and dicts")


@dataclass(frozen=True)
class Experiment:
    """One stored experiment: its name, its run function and its configurations (Chapter 3).

    Define it at module level; its entry point ``"module:ATTR"`` is how the results file finds it.

    Args:
        name: the file is ``results/<name>.jsonl``; letters, digits, ``_``, ``-``, ``.``.
        run: ``run(config) -> {metric: value}``, deterministic given ``config`` (seed everything from
            it); ``config`` is ``settings`` merged with one grid point. It runs single-threaded.
        grid: ``{"seed": [0, 1, 2], "lr": [1e-3, 1e-2]}`` (all combinations, in order) or a list of
            point dicts. Each point is the key of one stored entry.
        settings: what every run shares (epochs, widths, data sizes); must not repeat grid keys.
        version: bump it when ``run`` changes meaning, to refuse files of the old code.
        rtol, atol: the tolerance :func:`verify` allows when this machine's numerics differ from the
            file's pin (with the same pin the check is exact).
        entry: ``"module:ATTR"``; found automatically when the experiment is a global of ``run``'s module.
        check: settings that :func:`verify` overrides to re-run a point cheaply, e.g. ``{"epochs": 1}``
            for a 100-epoch run whose results are per-epoch lists: the short run's lists must then equal
            the first values of the stored ones (every other value exactly as usual). Only for runs
            whose first epochs do not depend on how many follow (no schedule over the whole run).
        verify_sample: at most this many entries re-run by :func:`verify`, for experiments whose
            every entry is minutes of CPU (``None``: as many as asked).

    Example:
        >>> def square(config):
        ...     return {"y": config["x"] ** 2 + config["shift"]}
        >>> SQUARES = Experiment("squares", square, grid={"x": [1, 2, 3]}, settings={"shift": 0})
        >>> [SQUARES.config(p) for p in SQUARES.points()][:2]
        [{'shift': 0, 'x': 1}, {'shift': 0, 'x': 2}]
        >>> SQUARES.config_hash()[:7]
        'sha256:'
    """

    name: str
    run: Callable[[dict], Mapping[str, Any]]
    grid: Mapping[str, Sequence] | Sequence[Mapping]
    settings: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1
    rtol: float = 1e-6
    atol: float = 1e-9
    entry: str | None = None
    check: Mapping[str, Any] | None = None
    verify_sample: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"name={self.name!r} must be letters, digits, '_', '-', '.' (it names the file)")
        if not callable(self.run):
            raise TypeError(f"run={self.run!r} must be a function config -> dict of results")
        if self.verify_sample is not None and (isinstance(self.verify_sample, bool)
                                               or not isinstance(self.verify_sample, int)
                                               or self.verify_sample < 1):
            # 0 would make verify re-run nothing and still report "all reproduce"
            raise ValueError(f"verify_sample={self.verify_sample!r} must be a positive int or None")
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"rtol={self.rtol}, atol={self.atol} must be >= 0")
        settings = _jsonable(dict(self.settings), f"{self.name}.settings")
        points = self.points()
        if not points:
            raise ValueError(f"experiment {self.name!r} has an empty grid: give at least one configuration")
        keys = [_canonical(p) for p in points]
        if len(set(keys)) != len(keys):
            raise ValueError(f"experiment {self.name!r}: the grid repeats a point; each point must be unique")
        shared = sorted({k for p in points for k in p} & set(settings))
        if shared:
            raise ValueError(f"experiment {self.name!r}: {shared} are both settings and grid keys; keep one")
        unknown = sorted(set(self.check or {}) - set(settings))
        if unknown:
            raise ValueError(f"experiment {self.name!r}: check overrides {unknown}, which are not settings")

    def _grid_json(self) -> Any:
        return _jsonable(self.grid if isinstance(self.grid, Mapping) else list(self.grid), f"{self.name}.grid")

    def points(self) -> list[dict]:
        """The grid points, in grid order."""
        grid = self._grid_json()
        if isinstance(grid, dict):
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise ValueError(f"{self.name}.grid[{key!r}] must be a non-empty list of values")
            return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        if not all(isinstance(p, dict) for p in grid):
            raise ValueError(f"{self.name}.grid must be a dict of lists or a list of dicts")
        return grid

    def config(self, point: Mapping[str, Any]) -> dict:
        """The full configuration ``run`` receives for one grid point (keys sorted)."""
        return dict(sorted({**_jsonable(dict(self.settings), "settings"), **point}.items()))

    def describe(self) -> dict:
        """What the header records as the configuration; its hash is :meth:`config_hash`."""
        return {"name": self.name, "version": self.version,
                "settings": _jsonable(dict(self.settings), "settings"), "grid": self._grid_json()}

    def config_hash(self) -> str:
        """``sha256:`` of the canonical JSON of :meth:`describe`: what a results file must match."""
        return "sha256:" + hashlib.sha256(_canonical(self.describe()).encode()).hexdigest()


def numerics() -> dict[str, str | None]:
    """The pinned numerics of this process: the env pins, torch's CPU kernel level, torch's version (Chapter 3).

    Example:
        >>> sorted(numerics())
        ['ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA', 'cpu_capability', 'torch']
    """
    pins: dict[str, str | None] = {name: os.environ.get(name) for name in NUMERICS_ENV}
    pins["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    pins["torch"] = torch.__version__
    return pins


def _git() -> tuple[str | None, bool]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode:
            return None, False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def _entry(experiment: Experiment) -> str:
    if experiment.entry:
        return experiment.entry
    module = sys.modules.get(getattr(experiment.run, "__module__", "") or "")
    for attr, value in (vars(module).items() if module else ()):
        if value is experiment and module.__name__ != "__main__":
            return f"{module.__name__}:{attr}"
    raise ValueError(f"cannot tell where experiment {experiment.name!r} is defined: make it a global of the "
                     f"module of its run function, or pass entry='package.module:ATTR'")


def load_experiment(entry: str) -> Experiment:
    """Import the :class:`Experiment` at ``"package.module:ATTR"`` (Chapter 3).

    Example:
        >>> load_experiment("lorakit.results:nothing")
        Traceback (most recent call last):
        ...
        ValueError: lorakit.results has no attribute 'nothing': ...
    """
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ValueError(f"experiment entry {entry!r} must be 'package.module:ATTR'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for experiment {entry!r} ({exc}): run from the "
                         "repository root, or put the module on PYTHONPATH") from None
    if not hasattr(module, attr):
        raise ValueError(f"{module_name} has no attribute {attr!r}: the experiment was renamed or removed; "
                         "fix the 'experiment' entry or delete the results file")
    experiment = getattr(module, attr)
    if not isinstance(experiment, Experiment):
        raise ValueError(f"{entry} is a {type(experiment).__name__}, not a lorakit.results.Experiment")
    return experiment


# --------------------------------------------------------------------------------------------------
# Reading a results file


@dataclass
class _Contents:
    header: dict
    entries: dict[str, tuple[dict, dict]]  # canonical key -> (point, result), in file order
    valid_bytes: int
    torn: str | None  # the text of a torn last line, if any


def _read(path: Path) -> _Contents:
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}: create it with `python -m lorakit.results run "
                                "package.module:EXPERIMENT`")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc}): it is not a results file or was damaged; "
                         "restore it from git or delete it and rerun") from None
    if not text.strip():
        raise ValueError(f"{path} is empty, not a results file: delete it and rerun `python -m lorakit.results run`")
    lines = text.split("\n")
    torn = None
    if lines[-1] == "":
        lines.pop()
    else:
        torn = lines.pop()  # no newline: a write that was interrupted
    if not lines:
        raise ValueError(f"{path} has a truncated header line: delete it and rerun `python -m lorakit.results run`")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the header (line 1) is not valid JSON ({exc}): restore the file from git or "
                         "delete it and rerun") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lorakit results file (line 1 lacks \"format\": \"{FORMAT}\"): "
                         "point the command at a file it wrote, or move this file out of the results folder")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {header.get('format_version')!r}; this lorakit reads "
                         f"{FORMAT_VERSION}: regenerate it with this lorakit or upgrade lorakit")
    missing = [k for k in _HEADER_FIELDS if k not in header]
    if missing:
        raise ValueError(f"{path}: the header lacks {missing}: restore the file from git or delete it and rerun")
    entries: dict[str, tuple[dict, dict]] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc}); the file was edited or damaged: "
                             "restore it from git, or delete it and rerun") from None
        if not (isinstance(entry, dict) and isinstance(entry.get("key"), dict)
                and isinstance(entry.get("result"), dict)):
            raise ValueError(f"{path}: line {number} is not an entry {{\"key\": {{…}}, \"result\": {{…}}}}: "
                             "restore the file from git, or delete it and rerun")
        key = _canonical(entry["key"])
        if key in entries:
            raise ValueError(f"{path}: line {number} repeats the key {key}: restore the file from git, "
                             "or delete it and rerun")
        entries[key] = (entry["key"], entry["result"])
    valid = len(raw) - (len(torn.encode("utf-8")) if torn is not None else 0)
    return _Contents(header, entries, valid, torn)


def _config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            name = f"{where}.{k}" if where else k
            if k not in new:
                out.append(f"{name} removed (was {_canonical(old[k])})")
            elif k not in old:
                out.append(f"{name} added ({_canonical(new[k])})")
            else:
                out.extend(_config_diff(old[k], new[k], name))
        return out
    if old != new:
        show = lambda v: (s if len(s := _canonical(v)) <= 60 else s[:57] + "...")  # noqa: E731
        return [f"{where}: {show(old)} → {show(new)}"]
    return []


def _check_config(path: Path, header: dict, experiment: Experiment) -> None:
    if header["config_hash"] == experiment.config_hash():
        return
    diff = _config_diff(header["config"], experiment.describe()) or ["(the stored configuration was edited)"]
    raise ValueError(
        f"{path} was written by another configuration of experiment {experiment.name!r} "
        f"(hash {header['config_hash'][:15]}… ≠ {experiment.config_hash()[:15]}…): " + "; ".join(diff[:6])
        + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        + f". Its results are not mixed in. Fix: delete {path} and rerun `python -m lorakit.results run "
        f"{header['experiment']}`, or restore the old configuration."
    )


def _check_keys(path: Path, keys: set[str], experiment: Experiment) -> None:
    unknown = keys - {_canonical(p) for p in experiment.points()}
    if unknown:
        raise ValueError(f"{path} holds {len(unknown)} entries outside the grid (e.g. {sorted(unknown)[0]}): "
                         "the file was edited; restore it from git, or delete it and rerun")


@dataclass(frozen=True)
class Stored:
    """A loaded results file: its header and its entries in grid order (Chapter 3).

    Example:
        >>> stored = Stored(header={"points": 2, "experiment": "pkg.ch03:EXPERIMENT"}, entries=[({"x": 1}, {"y": 1})])
        >>> stored.rows(), stored.complete
        ([{'x': 1, 'y': 1}], False)
        >>> stored.command  # what a notebook prints: how to regenerate the file
        'python -m lorakit.results run pkg.ch03:EXPERIMENT'
    """

    header: dict
    entries: list[tuple[dict, dict]]

    @property
    def complete(self) -> bool:
        """Whether every point of the grid is stored."""
        return len(self.entries) == self.header.get("points")

    @property
    def command(self) -> str:
        """The command that (re)generates or resumes the file."""
        return f"python -m lorakit.results run {self.header.get('experiment')}"

    def rows(self) -> list[dict]:
        """One flat dict per entry, ``{**point, **result}`` (e.g. for ``pandas.DataFrame``)."""
        return [{**point, **result} for point, result in self.entries]


def load(path: str | os.PathLike, experiment: Experiment | None = None) -> Stored:
    """Load a results file, refusing a bad one with a ``ValueError`` that says what to do (Chapter 3).

    Args:
        path: the ``.jsonl`` file.
        experiment: if given, the file must have been written by its current configuration.

    Example:
        >>> load("no/such/file.jsonl")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no results file no/such/file.jsonl: create it with ...
    """
    path = Path(path)
    contents = _read(path)
    if contents.torn is not None:
        raise ValueError(f"{path} ends in a torn line (an interrupted run): rerun `python -m lorakit.results run "
                         f"{contents.header['experiment']}` to drop it and finish the file")
    if experiment is not None:
        _check_config(path, contents.header, experiment)
        _check_keys(path, set(contents.entries), experiment)
        order = {_canonical(p): i for i, p in enumerate(experiment.points())}
        entries = sorted(contents.entries.items(), key=lambda kv: order.get(kv[0], len(order)))
    else:
        entries = list(contents.entries.items())
    return Stored(contents.header, [pr for _, pr in entries])


# --------------------------------------------------------------------------------------------------
# Running


def _call(run: Callable[[dict], Mapping[str, Any]], config: dict) -> tuple[dict, dict]:
    """Run one configuration single-threaded; return its JSON-clean result and the worker's numerics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(dict(config))
    except Exception as exc:
        raise RuntimeError(f"run({config}) failed: {type(exc).__name__}: {exc}. The runs finished before it are "
                           "stored: fix the cause and rerun the same command to resume") from exc
    finally:
        torch.set_num_threads(threads)
    if not isinstance(result, Mapping):
        raise TypeError(f"run({config}) returned a {type(result).__name__}; it must return a dict of results")
    return json.loads(json.dumps(_jsonable(result, f"run({config})"))), numerics()


def _single_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install \"lorakit[cluster]\" "
                          "(dask[distributed]); without it, run locally with --workers N") from None
    return distributed


def _execute(run: Callable, configs: list[dict], workers: int, scheduler: str | None) -> Iterator[tuple[int, tuple]]:
    """Yield ``(index, (result, numerics))`` as runs finish, in one process, a pool, or on Dask."""
    if scheduler is not None:
        distributed = _distributed()
        client = distributed.Client(scheduler)
        futures = {client.submit(_call, run, config, pure=False): i for i, config in enumerate(configs)}
        try:
            for future in distributed.as_completed(futures):
                yield futures[future], future.result()
        finally:
            client.cancel(list(futures))
            client.close()
        return
    if workers == 1:
        for i, config in enumerate(configs):
            yield i, _call(run, config)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                                  initializer=_single_thread)
    try:
        futures = {pool.submit(_call, run, config): i for i, config in enumerate(configs)}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _header(experiment: Experiment) -> dict:
    from . import __version__

    commit, dirty = _git()
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "experiment": _entry(experiment),
            "name": experiment.name, "config": experiment.describe(), "config_hash": experiment.config_hash(),
            "tolerance": {"rtol": experiment.rtol, "atol": experiment.atol},
            "points": len(experiment.points()), "lorakit": __version__, "git_commit": commit,
            "git_dirty": dirty, "python": platform.python_version(), "numerics": numerics()}


def _line(point: dict, result: dict) -> str:
    return json.dumps({"key": point, "result": result}, ensure_ascii=False) + "\n"


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_experiment(
    experiment: Experiment,
    *,
    path: str | os.PathLike | None = None,
    directory: str | os.PathLike = DEFAULT_DIR,
    workers: int | None = None,
    scheduler: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Run the experiment's missing points and append them to its results file (Chapter 3).

    Resumable: stored points are skipped; a torn last line (an interrupted write) is dropped with a
    message. A file of another configuration, or started under other pinned numerics, is refused.
    When every point is stored the file is rewritten in grid order (the same bytes however it ran).

    Args:
        experiment: the :class:`Experiment`.
        path: the file; default ``<directory>/<name>.jsonl``.
        workers: local processes, each single-threaded (default: every core; 1 runs in this process).
        scheduler: a Dask scheduler address (``tcp://host:8786``): run there instead.
        limit: run at most this many missing points (a small sample), then stop.
        progress: show a ``tqdm`` bar with an ETA.

    Returns:
        The file's path.

    Example:
        >>> import tempfile
        >>> def double(config):
        ...     return {"y": 2 * config["x"]}
        >>> DOUBLE = Experiment("double", double, grid={"x": [1, 2]}, entry="example:DOUBLE")
        >>> file = run_experiment(DOUBLE, directory=tempfile.mkdtemp(), workers=1, progress=False)
        >>> load(file).rows()
        [{'x': 1, 'y': 2}, {'x': 2, 'y': 4}]
    """
    workers = _default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive int")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit={limit!r} must be a non-negative int or None")
    if scheduler is not None:
        _distributed()  # fail before touching the file
    path = Path(path) if path is not None else Path(directory) / f"{experiment.name}.jsonl"
    points = experiment.points()
    if path.exists():
        contents = _read(path)
        _check_config(path, contents.header, experiment)
        header = contents.header
        if header["numerics"] != numerics():
            raise ValueError(f"{path} was started under numerics {header['numerics']}, this machine has "
                             f"{numerics()}: finish it under the same pin (see the Makefile's exports), or "
                             "delete it and rerun")
        done = set(contents.entries)
        _check_keys(path, done, experiment)
        if contents.torn is not None:  # every check passed: now the file may be repaired
            print(f"{path}: dropped a torn last line (a write interrupted by a crash): {contents.torn[:60]!r}",
                  file=sys.stderr)
            valid = path.read_bytes()[:contents.valid_bytes]
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(valid))
    else:
        header = _header(experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(header, ensure_ascii=False) + "\n"))
        done = set()
    todo = [p for p in points if _canonical(p) not in done]
    if limit is not None:
        todo = todo[:limit]
    configs = [experiment.config(p) for p in todo]
    bar = tqdm(total=len(todo), desc=experiment.name, unit="run", disable=not progress,
               postfix={"stored": len(done)})
    try:
        with open(path, "a", encoding="utf-8") as out, \
                contextlib.closing(_execute(experiment.run, configs, workers, scheduler)) as finished:
            for i, (result, worker_numerics) in finished:
                if worker_numerics != header["numerics"]:
                    raise ValueError(f"a worker has numerics {worker_numerics}, the file {path} is pinned to "
                                     f"{header['numerics']}: give the workers the same environment")
                out.write(_line(todo[i], result))  # one whole line per write: atomic per entry
                out.flush()
                os.fsync(out.fileno())
                done.add(_canonical(todo[i]))
                bar.update(1)
                bar.set_postfix(stored=len(done), refresh=False)
    finally:
        bar.close()
    if len(done) == len(points):
        contents = _read(path)
        ordered = [contents.entries[_canonical(p)] for p in points]
        text = json.dumps(contents.header, ensure_ascii=False) + "\n" + "".join(_line(p, r) for p, r in ordered)
        if path.read_text(encoding="utf-8") != text:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


# --------------------------------------------------------------------------------------------------
# Verifying


@dataclass(frozen=True)
class Mismatch:
    """One stored value that did not reproduce: the entry's key, the field, stored vs re-run value (Chapter 3).

    Example:
        >>> print(Mismatch({"seed": 3}, "acc", 0.75, 0.7493, 0.0007))
        {"seed":3} acc: stored 0.75, re-run 0.7493 (|Δ| = 0.0007)
    """

    key: dict
    field: str
    stored: Any
    got: Any
    difference: float | None

    def __str__(self) -> str:
        diff = f" (|Δ| = {self.difference:.3g})" if self.difference is not None else ""
        return f"{_canonical(self.key)} {self.field}: stored {self.stored!r}, re-run {self.got!r}{diff}"


def _compare(stored: Any, got: Any, rtol: float, atol: float, where: str = "", prefix: bool = False) -> list[tuple]:
    """``(field, stored, got, |difference| or None)`` for every leaf of ``got`` that differs from ``stored``.

    With ``prefix``, a list of ``got`` may be shorter than the stored one and is compared with its start.
    """
    if isinstance(stored, dict) and isinstance(got, dict):
        if set(stored) != set(got):
            return [(where or "result", sorted(stored), sorted(got), None)]
        return [m for k in stored
                for m in _compare(stored[k], got[k], rtol, atol, f"{where}.{k}" if where else k, prefix)]
    if isinstance(stored, list) and isinstance(got, list):
        if len(stored) != len(got) and not (prefix and 0 < len(got) < len(stored)):
            return [(where, f"{len(stored)} values", f"{len(got)} values", None)]
        return [m for i, (s, g) in enumerate(zip(stored, got))
                for m in _compare(s, g, rtol, atol, f"{where}[{i}]", prefix)]
    numbers = (int, float)
    if (isinstance(stored, numbers) and isinstance(got, numbers)
            and not isinstance(stored, bool) and not isinstance(got, bool)):
        if (math.isnan(stored) and math.isnan(got)) or math.isclose(stored, got, rel_tol=rtol, abs_tol=atol):
            return []
        return [(where, stored, got, abs(stored - got))]
    return [] if stored == got else [(where, stored, got, None)]


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found: the sampled keys, the mismatches, how it compared (Chapter 3).

    Example:
        >>> Verification("r.jsonl", "demo", 4, 4, ({"x": 1},), (), True, 0.0, 0.0, 0.1).summary()
        'r.jsonl: 1 of 4 entries re-run, all reproduce exactly (pinned numerics match) in 0.1 s'
    """

    path: str
    name: str
    stored: int
    points: int
    checked: tuple[dict, ...]
    mismatches: tuple[Mismatch, ...]
    exact: bool
    rtol: float
    atol: float
    seconds: float
    shortened: str = ""

    @property
    def ok(self) -> bool:
        """Whether every re-run entry reproduced (no :class:`Mismatch`)."""
        return not self.mismatches

    def summary(self) -> str:
        """One line: how many entries were re-run and whether they reproduce."""
        how = ("exactly (pinned numerics match)" if self.exact
               else f"within rtol={self.rtol:g}, atol={self.atol:g} (numerics differ from the file's pin)")
        bad = {_canonical(m.key) for m in self.mismatches}
        verdict = f"all reproduce {how}" if self.ok else f"{len(bad)} DO NOT reproduce {how}"
        incomplete = "" if self.stored == self.points else f" [incomplete: {self.stored}/{self.points} stored]"
        rerun = f"re-run shortened to {self.shortened} (stored lists start so)" if self.shortened else "re-run"
        return (f"{self.path}: {len(self.checked)} of {self.stored} entries {rerun}, {verdict}"
                f" in {self.seconds:.1f} s{incomplete}")

    def report(self) -> str:
        """The summary and one line per mismatch."""
        return "\n".join([self.summary()] + [f"  {m}" for m in self.mismatches])


def verify(
    path: str | os.PathLike,
    *,
    sample: int = 3,
    seed: int = 0,
    experiment: Experiment | None = None,
) -> Verification:
    """Re-run a fixed random sample of stored entries and compare them with what is stored (Chapter 3).

    Exact when this machine's :func:`numerics` equal the file's pin, otherwise within the
    experiment's ``rtol``/``atol``. Check :attr:`Verification.ok`; :meth:`Verification.report` says
    which entries differ and by how much.

    Args:
        path: the results file.
        sample: how many entries to re-run (all if fewer are stored).
        seed: the sample's seed: the same seed re-runs the same entries.
        experiment: the experiment; default: imported from the file's ``"experiment"`` entry point.

    Example:
        >>> import tempfile
        >>> def double(config):
        ...     return {"y": 2 * config["x"]}
        >>> DOUBLE = Experiment("double", double, grid={"x": [1, 2, 3]}, entry="example:DOUBLE")
        >>> file = run_experiment(DOUBLE, directory=tempfile.mkdtemp(), workers=1, progress=False)
        >>> verify(file, sample=2, experiment=DOUBLE).ok
        True
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"sample={sample!r} must be a positive int")
    start = time.perf_counter()
    path = Path(path)
    header = load(path).header
    experiment = experiment if experiment is not None else load_experiment(header["experiment"])
    stored = load(path, experiment)
    by_key = {_canonical(p): r for p, r in stored.entries}
    order = [p for p in experiment.points() if _canonical(p) in by_key]
    if experiment.verify_sample is not None:
        sample = min(sample, experiment.verify_sample)
    chosen = sorted(random.Random(seed).sample(range(len(order)), min(sample, len(order))))
    exact = stored.header["numerics"] == numerics()
    rtol, atol = (0.0, 0.0) if exact else (experiment.rtol, experiment.atol)
    mismatches = []
    for i in chosen:
        point = order[i]
        config = {**experiment.config(point), **(experiment.check or {})}
        result, _ = _call(experiment.run, config)
        prefix = experiment.check is not None
        for where, s, g, d in _compare(by_key[_canonical(point)], result, rtol, atol, prefix=prefix):
            mismatches.append(Mismatch(point, where, s, g, d))
    return Verification(str(path), experiment.name, len(by_key), int(stored.header.get("points", len(by_key))),
                        tuple(order[i] for i in chosen), tuple(mismatches), exact, rtol, atol,
                        time.perf_counter() - start,
                        ", ".join(f"{k}={v}" for k, v in sorted((experiment.check or {}).items())))


# --------------------------------------------------------------------------------------------------
# Command line


def _resolve(target: str, directory: Path) -> tuple[Experiment, Path]:
    if ":" in target:
        experiment = load_experiment(target)
        return experiment, directory / f"{experiment.name}.jsonl"
    path = Path(target) if target.endswith(".jsonl") else directory / f"{target}.jsonl"
    if not path.is_file():
        raise ValueError(f"no results file {path}: name a stored experiment, or give its entry point "
                         "'package.module:EXPERIMENT' to create the file")
    return load_experiment(_read(path).header["experiment"]), path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lorakit.results run|verify …`` (see the module's docstring); returns the exit status (Chapter 3).

    ``verify`` prints one line per file and a summary line; it returns 1 if any file fails.

    Example:
        >>> import tempfile
        >>> main(["--dir", tempfile.mkdtemp(), "verify", "--all"])  # doctest: +ELLIPSIS
        verify: 0 results files, 0 entries re-run, all reproduce (0.0 s)
        0
    """
    parser = argparse.ArgumentParser(prog="python -m lorakit.results", description="Stored results: run, verify.")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="the results folder (default: results)")
    folder = argparse.ArgumentParser(add_help=False)  # --dir also after the command
    folder.add_argument("--dir", default=argparse.SUPPRESS, help="the results folder (default: results)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", parents=[folder], help="run (or resume) an experiment into its results file")
    run_p.add_argument("target", help="package.module:EXPERIMENT, or the NAME of an existing results file")
    run_p.add_argument("--workers", type=int, default=None, help="local processes (default: every core)")
    run_p.add_argument("--scheduler", default=None, help="a Dask scheduler address, e.g. tcp://host:8786")
    run_p.add_argument("--limit", type=int, default=None, help="run at most this many missing points")
    run_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ver_p = commands.add_parser("verify", parents=[folder], help="re-run a sample of stored entries and compare")
    ver_p.add_argument("targets", nargs="*", help="NAMEs or .jsonl files (or --all)")
    ver_p.add_argument("--all", action="store_true", help="every *.jsonl in the results folder")
    ver_p.add_argument("--sample", type=int, default=3, help="entries re-run per file (default: 3)")
    ver_p.add_argument("--seed", type=int, default=0, help="the sample's seed (default: 0)")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    if args.command == "run":
        try:
            experiment, path = _resolve(args.target, directory)
            run_experiment(experiment, path=path, workers=args.workers, scheduler=args.scheduler,
                           limit=args.limit, progress=not args.no_progress)
        except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {len(_read(path).entries)} of {len(experiment.points())} points stored")
        return 0
    if args.all == bool(args.targets):
        parser.error("verify takes NAMEs/files or --all (one of the two)")
    paths = sorted(directory.glob("*.jsonl")) if args.all else [
        Path(t) if t.endswith(".jsonl") else directory / f"{t}.jsonl" for t in args.targets]
    start, failed, rerun = time.perf_counter(), 0, 0
    for path in paths:
        try:
            result = verify(path, sample=args.sample, seed=args.seed)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            failed += 1
            print(f"{path}: ERROR {exc}")
            continue
        rerun += len(result.checked)
        failed += not result.ok
        print(result.report())
    status = "all reproduce" if not failed else f"FAILED: {failed} of {len(paths)} files"
    print(f"verify: {len(paths)} results files, {rerun} entries re-run, {status} "
          f"({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - `python -m lorakit.results`
    from lorakit.results import main as _main  # the package's classes, not a second copy in __main__

    sys.exit(_main())
