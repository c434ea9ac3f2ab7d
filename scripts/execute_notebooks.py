"""Re-execute notebooks in place: the project's one way to regenerate stored outputs.

For each notebook: run it top to bottom in a fresh kernel (the venv's Python), merge
stream fragments (rpy2 and tqdm write many), save the widget state so
the static site can show widgets, and record the run time in book/status.md.

Usage: python scripts/execute_notebooks.py notebooks/01_minimal_lora.ipynb [...]
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
# nbval merges streams this way before comparing; storing them merged the same way keeps diffs honest.
from nbval.plugin import coalesce_streams

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "book" / "execution_times.json"
STATUS = ROOT / "book" / "status.md"
BUDGET_S = 120


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True, record_timing=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
            cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return elapsed


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
    for name in paths:
        path = Path(name).resolve()
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        seconds = execute(path)
        record_time(str(path.relative_to(ROOT)), seconds)
        print(f"  done in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
