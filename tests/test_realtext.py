"""The stored real-text task of Chapter 13 (quotations from Debian's fortunes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorakit.book import realtext
from lorakit.book.realtext import FORTUNES_PATH, PER_TOPIC, TOPICS, build, load_fortunes, parse_fortunes, to_csv

DEBIAN = Path("/usr/share/games/fortunes")


def test_stored_task_is_balanced_unique_and_labelled():
    rows = load_fortunes()
    assert len(rows) == PER_TOPIC * len(TOPICS)
    for label, topic in enumerate(TOPICS):
        assert sum(r["topic"] == topic for r in rows) == PER_TOPIC
        assert all(r["label"] == label for r in rows if r["topic"] == topic)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts)
    assert all(5 <= len(t.split()) <= 12 and "\n" not in t for t in texts)


def test_licence_is_next_to_the_data():
    notice = FORTUNES_PATH.with_name("fortunes_LICENSE.txt").read_text()
    assert "The Regents of the University of California" in notice
    assert "Redistribution and use" in notice
    assert "Regents of the University of California" in realtext.__doc__


def test_parse_drops_attributions_and_length_outliers():
    text = "Short one.\n%\nA quotation that is long enough to keep here.\n\t-- Someone\n%\n"
    assert parse_fortunes(text) == ["A quotation that is long enough to keep here."]
    with pytest.raises(ValueError, match="min_words"):
        parse_fortunes(text, min_words=3, max_words=2)


def test_build_is_deterministic_and_drops_cross_topic_duplicates(tmp_path):
    shared = "this quotation sits in two different files"
    for i, topic in enumerate(TOPICS):
        lines = [f"quotation {j} of topic {topic} here" for j in range(3)] + ([shared] if i < 2 else [])
        (tmp_path / topic).write_text("\n%\n".join(lines) + "\n%\n")
    rows = build(tmp_path, per_topic=3)
    assert rows == build(tmp_path, per_topic=3)
    assert shared not in {t for t, _, _ in rows}
    with pytest.raises(ValueError, match="fewer than per_topic"):
        build(tmp_path, per_topic=4)
    (tmp_path / "food").unlink()
    with pytest.raises(ValueError, match="lacks the fortune files"):
        build(tmp_path)


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's fortunes package is not installed")
def test_stored_file_matches_debians_fortunes():
    assert FORTUNES_PATH.read_bytes() == to_csv(build(DEBIAN)).encode("utf-8")


def test_main_check_reports_a_difference(tmp_path, monkeypatch, capsys):
    for topic in TOPICS:
        (tmp_path / topic).write_text("".join(f"one two three four {topic} {j}\n%\n" for j in range(60)))
    copy = tmp_path / "copy.csv"
    shutil.copy(FORTUNES_PATH, copy)
    monkeypatch.setattr(realtext, "FORTUNES_PATH", copy)
    assert realtext.main([str(tmp_path), "--check"]) == 1
    assert "DIFFERS" in capsys.readouterr().out
    assert realtext.main([str(tmp_path)]) == 0
    assert realtext.main([str(tmp_path), "--check"]) == 0
