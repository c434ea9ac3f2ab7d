"""Generate ``data/sentences.csv``: a small sentiment task where negation decides the label.

Every sentence is built from the templates below (no text is copied from any corpus), so
the file is ours to ship; it is released with the book under the book's licence (CC0 for
the data). Run ``python data/make_sentences.py`` to rebuild it: the output is
deterministic (``random.Random(0)``).

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
import itertools
import random
from pathlib import Path

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


if __name__ == "__main__":
    path = Path(__file__).with_name("sentences.csv")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "kind", "split"])
        writer.writerows(build())
    print(f"wrote {path}")
