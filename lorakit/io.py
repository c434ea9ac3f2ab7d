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

__all__ = ["atomic_write", "read_safetensors", "read_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create or replace ``path`` with what ``write(tmp_path)`` writes, all at once (Chapter 1).

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


def read_safetensors(path: str | os.PathLike, *, fix: str) -> tuple[dict, dict[str, str]]:
    """The tensors and string metadata of a safetensors file, or a ``ValueError`` naming the file (Chapter 1).

    A missing file raises ``FileNotFoundError``; a truncated, corrupt or non-safetensors file, or one
    holding NaN/Inf, raises ``ValueError`` saying which file, what is wrong, and ``fix`` (what to do).

    Example:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> save_file({"x": torch.ones(2)}, str(path), metadata={"format": "pt"})
        >>> tensors, meta = read_safetensors(path, fix="re-save it")
        >>> sorted(tensors), meta
        (['x'], {'format': 'pt'})
        >>> _ = path.write_bytes(path.read_bytes()[:20])
        >>> read_safetensors(path, fix="re-save it")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: .../t.safetensors is not a readable safetensors file (truncated or corrupt: ...); re-save it
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt: {error}); {fix}") from None
    bad = sorted(key for key, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all()))
    if bad:
        shown = ", ".join(bad[:6]) + (" …" if len(bad) > 6 else "")
        raise ValueError(f"{path} holds NaN/Inf values in tensor(s) {shown}; nothing was loaded — {fix}")
    return tensors, metadata


def read_json(path: str | os.PathLike, *, fix: str) -> dict:
    """The JSON object stored at ``path``, or a ``ValueError`` naming the file, the problem and ``fix`` (Chapter 13).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "c.json"
        >>> _ = path.write_text('{"r": 4,')
        >>> read_json(path, fix="write it again")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: .../c.json is not valid JSON (Expecting ... line 1 column 9 (char 8)); write it again
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 text file ({error}); {fix}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
