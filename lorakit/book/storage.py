"""Where the book's stored full-scale results live, and the one way a chapter finds one (Chapters 2–6).

The files ship inside the package (``lorakit/book/results/``), so a wheel, and so Colab, has them
too; :mod:`lorakit.results` writes and verifies them.
"""

from __future__ import annotations

from pathlib import Path

from ..results import Experiment

__all__ = ["RESULTS_DIR", "results_file"]

#: The folder of the stored results files (Chapter 3).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_file(experiment: Experiment, command: str, cost: str | None = None) -> Path:
    """The stored file of ``experiment``; if it is missing, say how to make it (Chapter 3).

    Args:
        experiment: the stored experiment.
        command: the committed command that makes its file, run from the repository's root.
        cost: how long that takes, for the message (e.g. ``"about 10 min on one core"``).

    Raises:
        FileNotFoundError: the file is missing; the message gives ``command``.

    Example:
        >>> from lorakit.book.adaptation import ADAPTATION, COMMAND
        >>> results_file(ADAPTATION, COMMAND).name
        'ch03_adaptation.jsonl'
    """
    path = RESULTS_DIR / f"{experiment.name}.jsonl"
    if not path.is_file():
        when = f" ({cost})" if cost else ""
        raise FileNotFoundError(f"{path} is missing: make it{when}, from the repository's root, with: {command}")
    return path
