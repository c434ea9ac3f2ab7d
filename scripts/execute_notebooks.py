"""Re-execute notebooks in place: the project's one way to regenerate stored outputs.

For each notebook: run it top to bottom in a fresh kernel (the venv's Python) under the pinned
CPU numerics of scripts/numerics.env, merge stream fragments (rpy2 and tqdm write many), save
the widget state so the static site can show widgets, give every progress bar the text of its
final state, record the run time in book/status.md, and print the slowest cells (where to look
when a chapter is over its budget).

Usage: python scripts/execute_notebooks.py notebooks/01_minimal_lora.ipynb [...]
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
# nbval merges streams this way before comparing; storing them merged the same way keeps diffs honest.
from nbval.plugin import coalesce_streams

import check_numerics

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "book" / "execution_times.json"
STATUS = ROOT / "book" / "status.md"
BUDGET_S = 120
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def final_progress_text(model_id: str, state: dict) -> str | None:
    """The text tqdm would print for the progress-bar widget ``model_id`` in its final state.

    A notebook stores, beside the widget, the text a viewer without widgets shows (GitHub, a
    text export, nbval). The kernel sends that text when the bar first appears ("0/40 0%");
    the widget state saved at the end holds the finished bar, so rebuild its text from that.
    """
    box = state.get(model_id, {})
    children = [c.removeprefix("IPY_MODEL_") for c in box.get("state", {}).get("children", [])]
    if box.get("model_name") != "HBoxModel" or len(children) != 3:
        return None
    left, bar, right = (state.get(c, {}) for c in children)
    if bar.get("model_name") != "FloatProgressModel":
        return None
    value, total = bar["state"].get("value", 0), bar["state"].get("max") or 0
    filled = round(10 * value / total) if total else 0

    def text(model: dict) -> str:  # tqdm writes figure spaces and HTML entities into its labels
        return html.unescape(model.get("state", {}).get("value", "")).replace("\u2007", " ")

    return f"{text(left)}|{'█' * filled}{' ' * (10 - filled)}|{text(right)}"


def store_final_progress_text(nb) -> None:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            final = view and final_progress_text(view["model_id"], state)
            if final:
                output["data"]["text/plain"] = final


def cell_seconds(cell) -> float:
    """A cell's run time from the timestamps nbclient records (0 if it has none)."""
    stamps = cell.metadata.get("execution", {})
    start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def execute(path: Path) -> tuple[float, list[tuple[float, int]]]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True, record_timing=True,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    slowest = sorted(((cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"),
                     reverse=True)[:5]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
            cell.metadata.pop("execution", None)  # timestamps would make every run a diff
    store_final_progress_text(nb)
    nbformat.write(nb, path)
    return elapsed, slowest


def write_status(times: dict[str, float]) -> None:
    rows = "\n".join(
        f"| [{Path(name).stem}](../notebooks/{Path(name).stem}.ipynb) | {seconds:.1f} | "
        f"{'✅' if seconds <= BUDGET_S else '⚠️ over budget'} |"
        for name, seconds in sorted(times.items())
    )
    STATUS.write_text(
        "# Execution status\n\n"
        "Each chapter's run time when its stored outputs were last regenerated with `make notebooks`\n"
        f"(on a 2-core CPU machine; budget {BUDGET_S} s per notebook, 10 min for the book). CI re-runs every\n"
        "notebook with nbval and compares the outputs to the stored ones.\n\n"
        "| notebook | run time (s) | within budget |\n|---|---|---|\n"
        f"{rows}\n\n**Total: {sum(times.values()):.1f} s.**\n"
    )


def record_time(name: str, seconds: float) -> None:
    """Add one run time to the record, under a lock: two `make notebooks` may run at once."""
    with open(TIMES.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
        times[name] = round(seconds, 1)
        times = {k: v for k, v in times.items() if (ROOT / k).exists()}
        TIMES.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
        write_status(times)


def main(paths: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.update(check_numerics.pinned())  # the kernels inherit it: outputs are stored pinned
    if check_numerics.main(["--quiet"]) != 0:
        sys.exit(1)
    for name in paths:
        path = Path(name).resolve()
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        seconds, slowest = execute(path)
        record_time(str(path.relative_to(ROOT)), seconds)
        cells = ", ".join(f"[{i}] {t:.1f} s" for t, i in slowest)
        print(f"  done in {seconds:.1f} s; slowest cells: {cells}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
