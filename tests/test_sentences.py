"""The Chapter 13 sentence task: generated from templates, stored in the package, loaded by split."""

from __future__ import annotations

import pytest

from lorakit.book import sentences


def test_stored_file_is_exactly_what_the_templates_generate() -> None:
    assert sentences.SENTENCES_PATH.read_bytes() == sentences.to_csv(sentences.build()).encode(), (
        "lorakit/book/assets/sentences.csv is stale: run `python -m lorakit.book.sentences`")
    assert sentences.main(["--check"]) == 0


def test_splits_hold_out_whole_subject_adjective_pairs() -> None:
    rows = sentences.build()
    assert len(rows) == 576 and len(set(r[0] for r in rows)) == 576
    train, test = sentences.load_sentences("train"), sentences.load_sentences("test")
    assert len(train) + len(test) == 576 and len(test) == 171

    def first_pair(text: str) -> tuple[str, str]:
        subject = min((text.find(s), s) for s in sentences.SUBJECTS if s in text)[1]
        adjective = min((text.find(f" {a}"), a) for a in sentences.POSITIVE + sentences.NEGATIVE if f" {a}" in text)[1]
        return subject, adjective

    assert not {first_pair(r["text"]) for r in train} & {first_pair(r["text"]) for r in test}


def test_labels_follow_the_meaning() -> None:
    for row in sentences.load_sentences():
        # plain and negated sentences hold one adjective (contrasts hold two, and the second decides)
        adjective_positive = any(f" {a}" in row["text"] for a in sentences.POSITIVE)
        if row["kind"] == "plain":
            assert row["label"] == int(adjective_positive), row
        elif row["kind"] == "negated":
            assert row["label"] == int(not adjective_positive), row
    assert {r["label"] for r in sentences.load_sentences()} == {0, 1}


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'train', 'test'"):
        sentences.load_sentences("dev")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        sentences.build(test_fraction=1.0)
    with pytest.raises(SystemExit, match="usage"):
        sentences.main(["--write"])


def test_a_different_seed_changes_the_file() -> None:
    assert sentences.to_csv(sentences.build(seed=1)) != sentences.to_csv(sentences.build())
