"""The pinned CPU numerics (scripts/numerics.env), their guard, and how `make test` reports stages.

Stored outputs reproduce to the last digit only under the pin; these tests show that every make
target sees it, that the guard fails on a kernel that lacks it (so it can fail), that it stays quiet
but honest on a CPU that cannot honour it, and that `make test` runs every stage even after one fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import check_numerics  # noqa: E402
import execute_notebooks  # noqa: E402

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
CAN_PIN, CPU = check_numerics.host_can_honour_pin()


def test_numerics_env_pins_the_three_dispatchers() -> None:
    assert check_numerics.pinned() == PINNED


def test_every_make_target_runs_with_the_pin() -> None:
    probe = "probe-env:; @echo $$ATEN_CPU_CAPABILITY $$ONEDNN_MAX_CPU_ISA $$MKL_CBWR"
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    out = subprocess.run(["make", "-s", "--no-print-directory", f"--eval={probe}", "probe-env"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == list(PINNED.values())


def _run_guard(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_numerics.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(not CAN_PIN, reason=f"{CPU} cannot run the pinned AVX2 kernels")
def test_guard_fails_on_a_kernel_without_the_pin() -> None:
    bare = {k: v for k, v in os.environ.items() if k not in PINNED}
    run = _run_guard(bare)
    assert run.returncode == 1, run.stdout + run.stderr
    for name in PINNED:
        assert f"{name} is None in the kernel" in run.stderr
    assert "Fix: run through make" in run.stderr


@pytest.mark.skipif(not CAN_PIN, reason=f"{CPU} cannot run the pinned AVX2 kernels")
def test_guard_passes_and_reports_avx2_kernels_with_the_pin() -> None:
    run = _run_guard({**os.environ, **PINNED})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the notebook kernel runs torch's AVX2 kernels" in run.stdout


def test_guard_says_in_one_line_why_an_arm_cpu_differs(monkeypatch, capsys) -> None:
    monkeypatch.setattr(check_numerics.platform, "machine", lambda: "aarch64")
    assert check_numerics.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "this aarch64 CPU cannot run the AVX2 kernels" in out[0] and "not a bug" in out[0]


def test_stored_progress_bar_text_is_the_finished_bar() -> None:
    ids = {"box": "HBoxModel", "l": "HTMLModel", "p": "FloatProgressModel", "r": "HTMLModel"}
    state = {k: {"model_name": v, "state": {}} for k, v in ids.items()}
    state["box"]["state"]["children"] = ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]
    state["l"]["state"]["value"] = "lora:\u2007100%"
    state["p"]["state"].update(value=40.0, max=40.0)
    state["r"]["state"]["value"] = "\u200740/40\u2007[00:03&lt;00:00,\u2007loss=0.25]"
    assert execute_notebooks.final_progress_text("box", state) == "lora: 100%|██████████| 40/40 [00:03<00:00, loss=0.25]"
    state["p"]["state"]["value"] = 20.0
    assert "|█████     |" in execute_notebooks.final_progress_text("box", state)
    assert execute_notebooks.final_progress_text("l", state) is None  # not a progress bar


def test_make_test_runs_every_stage_and_reports_all(tmp_path) -> None:
    (tmp_path / "Makefile").write_text("ok:\n\t@echo ran-ok\nbad:\n\t@exit 3\nlater:\n\t@echo ran-later\n")
    env = {**os.environ, "STAGE_MAKE": f"make --no-print-directory -f {tmp_path / 'Makefile'}"}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "run_stages.sh"), "ok", "bad", "later"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "ran-ok" in run.stdout and "ran-later" in run.stdout  # the stage after the failure still ran
    summary = run.stdout.split("make test: summary")[1]
    assert "ok" in summary and "bad           FAILED" in summary and "1 of 3 stages: bad" in summary


def test_cell_seconds_reads_nbclients_timestamps() -> None:
    """`make notebooks` names the slowest cells from the timestamps nbclient records."""
    import nbformat

    cell = nbformat.v4.new_code_cell("x = 1")
    assert execute_notebooks.cell_seconds(cell) == 0.0
    cell.metadata["execution"] = {"iopub.execute_input": "2026-12-05T21:00:00.250000Z",
                                  "shell.execute_reply": "2026-12-05T21:00:02.000000Z"}
    assert execute_notebooks.cell_seconds(cell) == 1.75
