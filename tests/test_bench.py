"""Tests for lorakit.book.bench, Chapter 14's CPU benchmark of one LoRA layer."""

import json

import pytest

from lorakit.book import bench


def test_bench_times_more_work_as_slower_and_its_ratios_are_the_medians():
    res = bench.bench_one(256, 64, 4, repeats=5, warmup=1, min_time=0.005)
    assert set(res.timings) == set(bench.CASES)
    t = {case: timing.median for case, timing in res.timings.items()}
    # a training step (forward, dx, dW: three T·d² matmuls) costs more than a bare forward (one)
    assert t["full_step"] > 1.5 * t["linear_fwd"]
    summary = res.summary()
    assert summary["ideal"] == pytest.approx(2 / 3 + 2 * 4 / 256)
    assert summary["lorakit_vs_full"] == pytest.approx(t["lorakit_step"] / t["full_step"])
    assert summary["merged_vs_plain"] == pytest.approx(t["merged_fwd"] / t["linear_fwd"])
    for timing in res.timings.values():  # the summary statistics are those of the samples
        assert len(timing.samples) == 5 and min(timing.samples) <= timing.median <= max(timing.samples)


def test_bench_rejects_a_rank_above_d_and_writes_its_report(tmp_path):
    with pytest.raises(ValueError, match="r=65 exceeds d=64"):
        bench.bench_one(64, 32, 65)
    out = tmp_path / "b.json"
    assert bench.main(["--d", "32", "--tokens", "16", "--r", "2", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(row["d"], row["tokens"], row["r"]) for row in report["results"]] == [(32, 16, 2)]
    assert not list(tmp_path.glob(".b.json.*"))  # written atomically: no temporary file left behind
