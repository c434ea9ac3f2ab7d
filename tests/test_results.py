"""lorakit.results: resumable results files, refusals, verification, the CLI, the pool and Dask paths.

The demo experiment lives here, not in the library: a seeded least-squares fit by gradient descent.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from lorakit import results
from lorakit.results import Experiment, load, run_experiment, verify

CALLS: list[dict] = []
FAIL_AT: dict | None = None


def toy_run(config: dict) -> dict:
    """A seeded toy computation: fit y = Xw by gradient descent; the loss and the norm of the fit."""
    CALLS.append(config)
    if FAIL_AT is not None and all(config[k] == v for k, v in FAIL_AT.items()):
        raise RuntimeError(f"simulated crash at {config}")
    g = torch.Generator().manual_seed(config["seed"])
    X = torch.randn(config["n"], 4, generator=g)
    y = X @ torch.randn(4, generator=g) + 0.1 * torch.randn(config["n"], generator=g)
    theta = torch.zeros(4)
    for _ in range(config["steps"]):
        theta -= config["lr"] * X.T @ (X @ theta - y) / config["n"]
    return {"loss": float(((X @ theta - y) ** 2).mean()), "norm": float(theta.norm()), "theta": theta}


DEMO = Experiment("demo", toy_run, grid={"seed": [0, 1, 2], "lr": [0.01, 0.1]}, settings={"n": 32, "steps": 20})


@pytest.fixture(autouse=True)
def _reset() -> None:
    global FAIL_AT
    CALLS.clear()
    FAIL_AT = None


def _run(tmp_path: Path, experiment: Experiment = DEMO, **kwargs) -> Path:
    kwargs.setdefault("workers", 1)
    return run_experiment(experiment, directory=tmp_path, progress=False, **kwargs)


def test_doctests() -> None:
    failures, tried = doctest.testmod(results, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 8 and failures == 0


def test_the_module_imports_without_dask() -> None:
    tree = ast.parse(Path(results.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not top & {"dask", "distributed"}


def test_a_run_writes_header_and_entries_in_grid_order(tmp_path: Path) -> None:
    path = _run(tmp_path)
    assert path == tmp_path / "demo.jsonl"
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "lorakit-results" and header["experiment"] == "test_results:DEMO"
    assert header["config"] == {"name": "demo", "version": 1, "settings": {"n": 32, "steps": 20},
                                "grid": {"seed": [0, 1, 2], "lr": [0.01, 0.1]}}
    assert header["config_hash"] == DEMO.config_hash() and header["points"] == 6
    assert set(header["numerics"]) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "cpu_capability",
                                       "torch"}
    assert header["lorakit"] and "git_commit" in header
    assert [json.loads(line)["key"] for line in lines[1:]] == DEMO.points()
    stored = load(path, DEMO)
    assert stored.complete and stored.rows()[0].keys() == {"seed", "lr", "loss", "norm", "theta"}
    assert len(CALLS) == 6 and CALLS[0] == {"lr": 0.01, "n": 32, "seed": 0, "steps": 20}
    assert torch.get_num_threads() >= 1


def test_rerunning_skips_finished_points(tmp_path: Path) -> None:
    path = _run(tmp_path)
    before = path.read_bytes()
    CALLS.clear()
    _run(tmp_path)
    assert CALLS == [] and path.read_bytes() == before


def test_resumes_after_an_interrupted_run(tmp_path: Path) -> None:
    global FAIL_AT
    clean = _run(tmp_path / "clean").read_bytes()
    FAIL_AT = {"seed": 1, "lr": 0.1}
    with pytest.raises(RuntimeError, match=r"simulated crash.*rerun the same command to resume"):
        _run(tmp_path)
    path = tmp_path / "demo.jsonl"
    assert len(path.read_text().splitlines()) == 1 + 3  # the three points before the crash
    assert not load(path).complete
    FAIL_AT, CALLS[:] = None, []
    _run(tmp_path)
    assert [c["seed"] for c in CALLS] == [1, 2, 2]  # only the missing points
    assert path.read_bytes() == clean  # the same file as an uninterrupted run


def test_a_torn_last_line_is_dropped_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _run(tmp_path, limit=2)
    with open(path, "a") as f:
        f.write('{"key": {"seed": 1, "lr": 0.01}, "result": {"lo')  # a crash in the middle of a write
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*torn line"):
        load(path)
    _run(tmp_path)
    assert "dropped a torn last line" in capsys.readouterr().err
    assert load(path, DEMO).complete and len(CALLS) == 2 + 4


def test_a_changed_configuration_is_refused(tmp_path: Path) -> None:
    path = _run(tmp_path, limit=3)
    before = path.read_bytes()
    changed = dataclasses.replace(DEMO, settings={"n": 32, "steps": 30})
    message = (re.escape(str(path)) + r" was written by another configuration of experiment 'demo'.*"
               r"settings\.steps: 20 → 30.*not mixed in.*Fix: delete")
    with pytest.raises(ValueError, match=message):
        run_experiment(changed, directory=tmp_path, workers=1, progress=False)
    more = dataclasses.replace(DEMO, grid={"seed": [0, 1, 2, 3], "lr": [0.01, 0.1]})
    with pytest.raises(ValueError, match=r"grid\.seed: \[0,1,2\] → \[0,1,2,3\]"):
        run_experiment(more, directory=tmp_path, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"version: 1 → 2"):
        verify(path, experiment=dataclasses.replace(DEMO, version=2))
    with pytest.raises(ValueError, match="another configuration"):
        load(path, changed)
    assert path.read_bytes() == before  # nothing changed


def test_resuming_under_other_numerics_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path, limit=2)
    monkeypatch.setattr(results, "numerics", lambda: {"MKL_CBWR": "something else"})
    with pytest.raises(ValueError, match="started under numerics"):
        _run(tmp_path)


def test_a_worker_with_other_numerics_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _run(tmp_path, limit=2)
    call = results._call
    monkeypatch.setattr(results, "_call", lambda run, config: (call(run, config)[0], {"torch": "other"}))
    with pytest.raises(ValueError, match="a worker has numerics"):
        _run(tmp_path)
    assert len(load(path).entries) == 2  # its result was not stored


def test_a_crash_in_a_pool_worker_keeps_the_finished_runs(tmp_path: Path) -> None:
    global FAIL_AT
    FAIL_AT = {"seed": 2, "lr": 0.1}  # the last point: the pool has finished others by then
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, workers=2)
    FAIL_AT = None
    path = _run(tmp_path, workers=2)
    assert load(path, DEMO).complete and path.read_bytes() == _run(tmp_path / "one").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda lines: lines[:1] + ["{not json"] + lines[2:], r"line 2 is not valid JSON.*restore it from git"),
        (lambda lines: ['{"some": "other file"}'] + lines[1:], r"is not a lorakit results file"),
        (lambda lines: lines + [lines[1]], r"line 5 repeats the key"),
        (lambda lines: lines[:1] + ['{"key": 3}'] + lines[2:], r"line 2 is not an entry"),
        (lambda lines: [lines[0].replace('"format_version": 1', '"format_version": 9')] + lines[1:],
         r"format_version 9"),
        (lambda lines: [], r"is empty"),
    ],
)
def test_bad_files_are_refused_cleanly(tmp_path: Path, damage, message: str) -> None:
    path = _run(tmp_path, limit=3)
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in damage(lines)))
    for read in (load, verify, lambda p: run_experiment(DEMO, path=p, workers=1, progress=False)):
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
            read(path)


def test_an_entry_outside_the_grid_is_refused(tmp_path: Path) -> None:
    path = _run(tmp_path, limit=3)
    path.write_text(path.read_text().replace('{"seed": 0, "lr": 0.1}', '{"seed": 9, "lr": 0.1}'))
    for read in (lambda p: load(p, DEMO), verify, lambda p: run_experiment(DEMO, path=p, workers=1, progress=False)):
        with pytest.raises(ValueError, match=re.escape(str(path)) + r".*1 entries outside the grid"):
            read(path)


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "demo.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load(path)
    with pytest.raises(FileNotFoundError, match="no results file"):
        verify(tmp_path / "missing.jsonl")
    path.write_text('{"format": "lorakit-res')  # a header cut short
    with pytest.raises(ValueError, match=re.escape(str(path)) + " has a truncated header line"):
        run_experiment(DEMO, path=path, workers=1, progress=False)


def test_experiments_are_checked_when_defined() -> None:
    with pytest.raises(ValueError, match="names the file"):
        Experiment("a/b", toy_run, grid={"seed": [0]})
    with pytest.raises(ValueError, match="repeats a point"):
        Experiment("x", toy_run, grid=[{"seed": 0}, {"seed": 0}])
    with pytest.raises(ValueError, match="both settings and grid keys"):
        Experiment("x", toy_run, grid={"seed": [0]}, settings={"seed": 1})
    with pytest.raises(ValueError, match="empty grid"):
        Experiment("x", toy_run, grid=[])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="verify_sample"):
            Experiment("x", toy_run, grid={"seed": [0]}, verify_sample=bad)
    with pytest.raises(TypeError, match="store only numbers"):
        Experiment("x", toy_run, grid={"f": [object()]})
    with pytest.raises(ValueError, match="entry="):
        results._entry(dataclasses.replace(DEMO))  # not a module global: its entry point is unknown


def test_verify_passes_and_detects_a_tampered_value(tmp_path: Path) -> None:
    path = _run(tmp_path)
    check = verify(path, sample=3, seed=1)
    assert check.ok and check.exact and len(check.checked) == 3
    assert check.checked == verify(path, sample=3, seed=1).checked != verify(path, sample=3, seed=2).checked
    assert "3 of 6 entries re-run, all reproduce exactly" in check.summary()
    lines = path.read_text().splitlines()
    entry = json.loads(lines[4])
    entry["result"]["loss"] += 1e-9  # a tiny change to one stored number
    lines[4] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    check = verify(path, sample=6)
    assert not check.ok and len(check.mismatches) == 1
    (bad,) = check.mismatches
    assert bad.key == entry["key"] and bad.field == "loss" and bad.difference == pytest.approx(1e-9, rel=1e-3)
    assert "1 DO NOT reproduce exactly" in check.summary() and '{"lr":0.1,"seed":1} loss: stored' in check.report()


def test_an_expensive_experiment_caps_its_verification_sample(tmp_path: Path) -> None:
    capped = dataclasses.replace(DEMO, name="capped", verify_sample=1, entry="tests.test_results:DEMO")
    path = _run(tmp_path, capped)
    CALLS.clear()
    check = verify(path, sample=3, experiment=capped)
    assert check.ok and len(check.checked) == 1 and len(CALLS) == 1


def curve_run(config: dict) -> dict:
    """A per-epoch curve whose first epochs do not depend on how many follow (a prefix-checkable run)."""
    g = torch.Generator().manual_seed(config["seed"])
    x, curve = torch.randn(3, generator=g), []
    for _ in range(config["epochs"]):
        x = x - 0.1 * x + 0.01 * torch.randn(3, generator=g)
        curve.append(float(x.norm()))
    return {"curve": [curve, [2 * c for c in curve]], "size": 3}


CURVES = Experiment("curves", curve_run, grid={"seed": [0, 1]}, settings={"epochs": 30}, check={"epochs": 2})


def test_a_shortened_check_compares_the_start_of_the_stored_lists(tmp_path: Path) -> None:
    path = _run(tmp_path, CURVES)
    check = verify(path, sample=2)
    assert check.ok and "re-run shortened to epochs=2" in check.summary()
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["result"]["curve"][1][1] += 1e-9  # inside the checked start: found
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    (bad,) = verify(path, sample=2).mismatches
    assert bad.field == "curve[1][1]"
    entry["result"]["curve"][1][1] -= 1e-9
    entry["result"]["size"] = 4  # a value that is not a list is compared whole
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    (bad,) = verify(path, sample=2).mismatches
    assert bad.field == "size"
    with pytest.raises(ValueError, match="not settings"):
        Experiment("x", curve_run, grid={"seed": [0]}, settings={"epochs": 3}, check={"steps": 1})


def test_verify_uses_the_tolerance_when_numerics_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _run(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["result"]["loss"] *= 1 + 1e-9  # within DEMO's rtol = 1e-6
    entry["result"]["theta"][2] += 1e-3  # far outside it
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(results, "numerics", lambda: {"cpu_capability": "another machine"})
    check = verify(path, sample=6)
    assert not check.exact and (check.rtol, check.atol) == (DEMO.rtol, DEMO.atol)
    assert [m.field for m in check.mismatches] == ["theta[2]"]
    assert "numerics differ from the file's pin" in check.summary()


def test_cli_run_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--dir", str(tmp_path)]
    assert results.main(base + ["run", "test_results:DEMO", "--workers", "1", "--no-progress", "--limit", "4"]) == 0
    assert results.main(base + ["run", "demo", "--workers", "1", "--no-progress"]) == 0  # by name, resumed
    assert "6 of 6 points stored" in capsys.readouterr().out
    assert results.main(["verify", "--all", "--sample", "2", "--dir", str(tmp_path)]) == 0  # --dir after, too
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("verify: 1 results files, 2 entries re-run, all reproduce (")
    path = tmp_path / "demo.jsonl"
    path.write_text(path.read_text().replace('"loss": ', '"loss": 1', 6))  # tamper every stored loss
    assert results.main(base + ["verify", "demo", "--sample", "2"]) == 1
    assert "FAILED: 1 of 1 files" in capsys.readouterr().out
    assert results.main(base + ["run", "no_such_experiment", "--workers", "1"]) == 2
    assert "give its entry point" in capsys.readouterr().err
    assert results.main(base + ["run", "no_such_module:X"]) == 2
    with pytest.raises(SystemExit):
        results.main(base + ["verify"])  # neither names nor --all


def test_a_process_pool_writes_the_same_file(tmp_path: Path) -> None:
    local = _run(tmp_path / "one").read_bytes()
    assert _run(tmp_path / "pool", workers=2).read_bytes() == local


def test_scheduler_without_dask_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"lorakit\[cluster\]"):
        _run(tmp_path, scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "demo.jsonl").exists()  # refused before the file was created


def test_dask_local_cluster_writes_the_same_file(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="dask[distributed] not installed (the cluster extra)")
    local = _run(tmp_path / "local").read_bytes()
    start = time.perf_counter()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        _run(tmp_path / "dask", scheduler=cluster.scheduler_address, limit=4)  # a sample, then resume the rest
        path = _run(tmp_path / "dask", scheduler=cluster.scheduler_address)
    print(f"Dask LocalCluster (2 processes x 1 thread): {time.perf_counter() - start:.1f} s")
    assert path.read_bytes() == local
