"""R inside the notebooks, through rpy2, with a clean skip where R is missing (Chapter 1).

:func:`load_r_magic` loads rpy2's ``%%R`` cell magic when R and rpy2 work. When
they do not (a laptop without R, or Colab), it registers a stand-in ``%%R`` magic
that prints one line saying the cell was skipped, so the notebook still runs from
top to bottom.
"""

from __future__ import annotations

from typing import Any

__all__ = ["r_available", "load_r_magic"]

SKIP_MESSAGE = "R cell skipped: R and rpy2 are not available here (install r-base and rpy2==3.5.17 to run it)."


def r_available() -> bool:
    """True when rpy2 imports and can start an embedded R (Chapter 1).

    Example:
        >>> r_available()  # with R and rpy2 installed; False without  # doctest: +SKIP
        True
    """
    try:
        import rpy2.robjects as robjects

        robjects.r("1")
    except Exception:  # noqa: BLE001 — any failure means "no usable R", which is the answer
        return False
    return True


def load_r_magic(ipython: Any) -> bool:
    """Enable ``%%R`` cells in ``ipython``; return whether real R runs them (Chapter 1).

    R warns once, deferred, that the user library is empty; that warning is
    silenced while the extension loads so it does not land in the first R cell.

    Example:
        >>> from IPython.core.interactiveshell import InteractiveShell
        >>> shell = InteractiveShell.instance()
        >>> load_r_magic(shell) == r_available()  # real R, or the stand-in that skips cells
        True
        >>> "R" in shell.magics_manager.magics["cell"]  # %%R cells work either way
        True
    """
    if r_available():
        import rpy2.robjects as robjects

        robjects.r("options(warn = -1)")
        ipython.run_line_magic("load_ext", "rpy2.ipython")
        robjects.r("invisible(capture.output(suppressWarnings(library(utils)))); options(warn = 0)")
        return True

    def skipped_r_cell(line: str, cell: str | None = None) -> None:
        print(SKIP_MESSAGE)

    ipython.register_magic_function(skipped_r_cell, magic_kind="cell", magic_name="R")
    return False
