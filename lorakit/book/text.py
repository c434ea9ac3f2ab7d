"""Printing prose from a notebook cell so that the site never cuts it (every chapter, from Chapter 1).

The book's site shows at most 88 characters of a printed line; a longer "Lesson:" line is cut
mid-sentence. :func:`say` wraps a sentence the code composed (numbers included) at that width.
"""

from __future__ import annotations

import textwrap

__all__ = ["WIDTH", "say"]

#: The widest line the site shows without cutting it (Chapter 1).
WIDTH = 88


def say(text: str, width: int = WIDTH) -> None:
    """Print ``text`` wrapped at ``width`` characters, continuation lines indented (Chapter 1).

    Each paragraph (separated by a newline) is wrapped on its own.

    Example:
        >>> say("Lesson: " + "the adapter is task-specific; " * 4)
        Lesson: the adapter is task-specific; the adapter is task-specific; the adapter is
          task-specific; the adapter is task-specific;
    """
    for paragraph in text.split("\n"):
        print(textwrap.fill(paragraph, width=width, subsequent_indent="  ", break_on_hyphens=False))
