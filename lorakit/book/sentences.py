"""A small sentence task where negation decides the label (Chapter 13's data).

Every sentence is built from the templates below (no text is copied from any corpus), so
the file is ours to ship; it is released with the book under the book's licence (CC0 for
the data). The 576 rows are stored in ``lorakit/book/assets/sentences.csv`` (:data:`SENTENCES_PATH`,
shipped inside the package so Colab has it too); ``python -m lorakit.book.sentences`` rebuilds that
file from the templates, and ``python -m lorakit.book.sentences --check`` verifies it byte for byte.
The output is deterministic (``random.Random(0)``).

Each sentence says something about a subject with a positive or negative adjective,
either plainly ("the coffee was great."), negated ("the coffee was not great.",
"the coffee was anything but great.") or in a contrast whose main clause decides
("the coffee was great, but the staff was awful."). The label is 1 for a positive
overall meaning and 0 for a negative one: a negated positive adjective is labelled 0,
and a contrast takes the polarity of its second (main) clause. A mean-pooled sentence
embedding weighs both adjectives of a contrast alike, so a linear classifier on the
frozen encoder cannot get these right; adapting the encoder can.

Columns: ``text``, ``label`` (0/1), ``kind`` (``plain``/``negated``/``contrast``), ``split`` (``train``/``test``). The split holds out
whole (subject, adjective) pairs, so test sentences are new combinations.
"""

import csv
import io
import itertools
import random
import sys
from pathlib import Path
from typing import Sequence

from ..io import atomic_write

__all__ = ["SENTENCES_PATH", "COLUMNS", "build", "to_csv", "load_sentences", "main"]

#: The stored task, inside the package (``lorakit/book/assets/sentences.csv``) (Chapter 13).
SENTENCES_PATH = Path(__file__).with_name("assets") / "sentences.csv"
#: The CSV's columns, in order (Chapter 13).
COLUMNS = ("text", "label", "kind", "split")

SUBJECTS = ["the food", "the movie", "the service", "the hotel room", "the book", "the concert",
            "the staff", "the coffee", "the game", "the phone", "the lecture", "the flight"]
POSITIVE = ["good", "great", "excellent", "wonderful", "pleasant", "lovely", "superb", "enjoyable"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "disappointing", "poor", "dreadful", "unpleasant"]
PLAIN = ["{s} was {a}.", "honestly, {s} was {a}.", "i thought {s} was really {a}.", "{s} is {a}."]
CONTRAST = ["{s} was {a}, but {t} was {b}.", "although {s} was {a}, {t} was {b}.",
            "{s} was {a}; however, {t} was {b}."]
NEGATED = ["{s} was not {a}.", "{s} was never {a}.", "{s} was anything but {a}.", "{s} was far from {a}.",
           "i would not say {s} was {a}.", "{s} is not {a} at all."]


def build(seed: int = 0, test_fraction: float = 0.3) -> list[tuple[str, int, str, str]]:
    """Every sentence of the task, as ``(text, label, kind, split)`` rows in a shuffled order (Chapter 13).

    Args:
        seed: seeds the choice of templates, of the held-out pairs and the row order.
        test_fraction: share of (subject, adjective) pairs whose sentences go to ``"test"``.

    Example:
        >>> rows = build()
        >>> len(rows), sorted({kind for _, _, kind, _ in rows})
        (576, ['contrast', 'negated', 'plain'])
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    rng = random.Random(seed)
    pairs = list(itertools.product(SUBJECTS, POSITIVE + NEGATIVE))
    rng.shuffle(pairs)
    test_pairs = set(pairs[: int(len(pairs) * test_fraction)])
    rows = []
    for subject, adjective in sorted(pairs):
        positive = adjective in POSITIVE
        template = rng.choice(PLAIN)
        rows.append((template.format(s=subject, a=adjective), int(positive), "plain"))
        template = rng.choice(NEGATED)
        rows.append((template.format(s=subject, a=adjective), int(not positive), "negated"))
        other = rng.choice([t for t in SUBJECTS if t != subject])
        second = rng.choice(NEGATIVE if positive else POSITIVE)
        template = rng.choice(CONTRAST)
        rows.append((template.format(s=subject, a=adjective, t=other, b=second), int(not positive), "contrast"))
    rng.shuffle(rows)
    out = []
    for text, label, kind in rows:
        # The split key is the first (subject, adjective) pair of the sentence.
        subject = min((text.find(s), s) for s in SUBJECTS if s in text)[1]
        adjective = min((text.find(f" {a}"), a) for a in POSITIVE + NEGATIVE if f" {a}" in text)[1]
        out.append((text, label, kind, "test" if (subject, adjective) in test_pairs else "train"))
    return out


def to_csv(rows: Sequence[tuple[str, int, str, str]]) -> str:
    """The rows as CSV text with a header line (``\\r\\n`` line ends, as the ``csv`` module writes) (Chapter 13).

    Example:
        >>> to_csv([("the food was good.", 1, "plain", "train")]).splitlines()
        ['text,label,kind,split', 'the food was good.,1,plain,train']
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def load_sentences(split: str | None = None) -> list[dict[str, object]]:
    """The stored sentences as dicts with keys :data:`COLUMNS` (``label`` an ``int``) (Chapter 13).

    Args:
        split: ``"train"`` or ``"test"`` for one split; ``None`` for all 576 rows.

    Example:
        >>> rows = load_sentences("test")
        >>> len(rows), sorted(rows[0])
        (171, ['kind', 'label', 'split', 'text'])
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split={split!r}; pass 'train', 'test' or None for both")
    with SENTENCES_PATH.open(newline="") as handle:
        rows = [dict(row, label=int(row["label"])) for row in csv.DictReader(handle)]
    return [row for row in rows if split is None or row["split"] == split]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lorakit.book.sentences [--check]``: rebuild :data:`SENTENCES_PATH`, or check it (Chapter 13).

    Returns the exit status (1 when ``--check`` finds the file differs from :func:`build`).

    Example:
        >>> main(["--check"])  # doctest: +ELLIPSIS
        /.../lorakit/book/assets/sentences.csv: matches the templates
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        raise SystemExit(f"unknown arguments {args}; usage: python -m lorakit.book.sentences [--check]")
    text = to_csv(build())
    if args == ["--check"]:
        same = SENTENCES_PATH.is_file() and SENTENCES_PATH.read_bytes() == text.encode()
        print(f"{SENTENCES_PATH}: {'matches' if same else 'DIFFERS from'} the templates")
        return 0 if same else 1
    atomic_write(SENTENCES_PATH, lambda tmp: Path(tmp).write_bytes(text.encode()))  # never a half-written file
    print(f"wrote {SENTENCES_PATH} ({len(text.splitlines()) - 1} sentences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
