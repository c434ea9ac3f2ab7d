"""Writing files so that a reader never sees half of one (Chapter 1).

Every file lorakit writes (adapters, peft adapter directories, stored results, cached data) goes
through :func:`atomic_write`: the content is written to a temporary file in the same folder and
moved into place in one step, so an interrupted run leaves the old file or none, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create or replace ``path`` with what ``write(tmp_path)`` writes, all at once.

    Args:
        path: the file to create or replace; its folder must exist.
        write: called with the name of a temporary file beside ``path``; it writes the full
            content there. If it raises, ``path`` is left as it was and the temporary file removed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "note.txt"
        >>> atomic_write(target, lambda tmp: Path(tmp).write_text("done")).read_text()
        'done'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
