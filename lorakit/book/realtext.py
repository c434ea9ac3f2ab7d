"""Real human-written text for Chapter 13: quotations from Debian's ``fortunes`` files, by topic.

The task: given a short quotation, say which of four fortune files it comes from —
``computers``, ``food``, ``love`` or ``politics`` (topic classification, 4 classes). The quotations were
written by people (authors from Mark Twain to anonymous Usenet posters), collected in the BSD
``fortune`` program's data files, and packaged by Debian as ``fortunes`` (version 1:1.99.1-7.3).

**Licence.** Debian's ``/usr/share/doc/fortunes/copyright`` states that the package (program and
data files) "falls under the BSD copyright" of the University of California (the 4-clause BSD
licence with its advertising clause 3 deleted, i.e. the 3-clause BSD licence)::

    Copyright (c) 1991 The Regents of the University of California.
    All rights reserved.

    Redistribution and use in source and binary forms, with or without modification, are permitted
    provided that the following conditions are met:
    1. Redistributions of source code must retain the above copyright notice, this list of
       conditions and the following disclaimer.
    2. Redistributions in binary form must reproduce the above copyright notice, this list of
       conditions and the following disclaimer in the documentation and/or other materials
       provided with the distribution.
    3. [Deleted.]
    4. Neither the name of the University nor the names of its contributors may be used to endorse
       or promote products derived from this software without specific prior written permission.

    THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND ANY EXPRESS OR IMPLIED
    WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS
    FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE
    FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT
    NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR
    BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
    LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
    SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

The notice is kept here (this module ships in the wheel) and in
``lorakit/book/assets/fortunes_LICENSE.txt``. BSD is compatible with the book's MIT licence.

**The stored subset.** ``lorakit/book/assets/fortunes.csv`` (:data:`FORTUNES_PATH`, shipped inside the
package, so Colab needs no download) holds :data:`PER_TOPIC` quotations of each topic: entries of 5 to
12 words, attribution lines (``-- Author``) removed, whitespace joined to one line, quotations found in
more than one of the four files dropped, then a seeded sample (``random.Random(0)``).
``python -m lorakit.book.realtext DIR`` rebuilds it from the fortune files in ``DIR`` (e.g. after
``apt-get download fortunes && dpkg -x fortunes_*.deb x``: ``x/usr/share/games/fortunes``), and
``python -m lorakit.book.realtext DIR --check`` verifies it byte for byte.

Columns: ``text``, ``topic`` (a name of :data:`TOPICS`), ``label`` (its index).
"""

from __future__ import annotations

import csv
import io
import random
import re
import sys
from pathlib import Path
from typing import Sequence

from ..io import atomic_write

__all__ = ["FORTUNES_PATH", "TOPICS", "PER_TOPIC", "parse_fortunes", "build", "to_csv", "load_fortunes", "main"]

#: The stored quotations (``lorakit/book/assets/fortunes.csv``), inside the package (Chapter 13).
FORTUNES_PATH = Path(__file__).with_name("assets") / "fortunes.csv"
#: The four fortune files used as topics; a quotation's label is its topic's index (Chapter 13).
TOPICS = ("computers", "food", "love", "politics")
#: Quotations stored per topic (Chapter 13).
PER_TOPIC = 50
_COLUMNS = ("text", "topic", "label")


def parse_fortunes(text: str, *, min_words: int = 5, max_words: int = 20) -> list[str]:
    """The quotations of one fortune file (entries separated by ``%`` lines), cleaned (Chapter 13).

    Attribution lines (starting with ``--``) are dropped, the rest joined into one line; entries
    with fewer than ``min_words`` or more than ``max_words`` words are skipped.

    Example:
        >>> parse_fortunes("Eat, drink and be merry, for tomorrow we diet.\\n"
        ...                "\\t\\t-- anonymous\\n%\\nToo short.\\n%\\n")
        ['Eat, drink and be merry, for tomorrow we diet.']
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    out = []
    for entry in re.split(r"^%\s*$", text, flags=re.M):
        lines = [line.strip() for line in entry.splitlines()]
        kept = " ".join(line for line in lines if line and not line.startswith("--"))
        kept = re.sub(r"\s+", " ", kept).strip()
        if kept and min_words <= len(kept.split()) <= max_words:
            out.append(kept)
    return out


def build(directory: str | Path, *, per_topic: int = PER_TOPIC, seed: int = 0) -> list[tuple[str, str, int]]:
    """The stored rows ``(text, topic, label)``, rebuilt from the fortune files in ``directory`` (Chapter 13).

    Args:
        directory: holds one file per name of :data:`TOPICS` (Debian: ``/usr/share/games/fortunes``).
        per_topic: quotations sampled per topic.
        seed: seeds the sample and the row order.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for i, topic in enumerate(TOPICS):
        ...     _ = (d / topic).write_text(f"quotation number {i} about {topic}\\n%\\n")
        >>> build(d, per_topic=1)[0]
        ('quotation number 0 about computers', 'computers', 0)
    """
    directory = Path(directory)
    missing = [t for t in TOPICS if not (directory / t).is_file()]
    if missing:
        raise ValueError(f"{directory} lacks the fortune files {missing}: pass /usr/share/games/fortunes "
                         "(apt-get install fortunes) or the folder dpkg -x extracted it to")
    quotes = {t: parse_fortunes((directory / t).read_text(encoding="utf-8", errors="replace"), max_words=12)
              for t in TOPICS}
    counts: dict[str, int] = {}
    for topic in TOPICS:
        for q in set(quotes[topic]):
            counts[q] = counts.get(q, 0) + 1
    rng = random.Random(seed)
    rows = []
    for label, topic in enumerate(TOPICS):
        unique = sorted({q for q in quotes[topic] if counts[q] == 1})
        if len(unique) < per_topic:
            raise ValueError(f"{topic}: only {len(unique)} quotations fit, fewer than per_topic={per_topic}")
        rows += [(q, topic, label) for q in rng.sample(unique, per_topic)]
    rng.shuffle(rows)
    return rows


def to_csv(rows: Sequence[tuple[str, str, int]]) -> str:
    """The rows as CSV text with the header ``text,topic,label`` (Chapter 13).

    Example:
        >>> to_csv([("Eat, drink and be merry.", "food", 1)]).splitlines()
        ['text,topic,label', '"Eat, drink and be merry.",food,1']
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def load_fortunes() -> list[dict[str, object]]:
    """The stored quotations as dicts with keys ``text``, ``topic``, ``label`` (an ``int``) (Chapter 13).

    Example:
        >>> rows = load_fortunes()
        >>> len(rows), sorted(rows[0]), sorted({r["topic"] for r in rows}) == sorted(TOPICS)
        (200, ['label', 'text', 'topic'], True)
    """
    with FORTUNES_PATH.open(newline="", encoding="utf-8") as handle:
        return [dict(row, label=int(row["label"])) for row in csv.DictReader(handle)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lorakit.book.realtext DIR [--check]``: rebuild :data:`FORTUNES_PATH`, or check it (Chapter 13).

    Returns the exit status (1 when ``--check`` finds that the file differs from :func:`build`).

    Example:
        >>> main([])
        Traceback (most recent call last):
        ...
        SystemExit: usage: python -m lorakit.book.realtext DIR [--check] (DIR: the fortune files)
    """
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    if len(paths) != 1:
        raise SystemExit("usage: python -m lorakit.book.realtext DIR [--check] (DIR: the fortune files)")
    data = to_csv(build(paths[0])).encode("utf-8")
    if check:
        same = FORTUNES_PATH.is_file() and FORTUNES_PATH.read_bytes() == data
        print(f"{FORTUNES_PATH}: {'matches' if same else 'DIFFERS from'} the fortune files")
        return 0 if same else 1
    atomic_write(FORTUNES_PATH, lambda tmp: Path(tmp).write_bytes(data))
    print(f"wrote {FORTUNES_PATH} ({len(data.splitlines()) - 1} quotations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
