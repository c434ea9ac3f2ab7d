"""lorakit.protocol: the split, tuning on validation, seeds, intervals, the lesson sentence, the table."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from lorakit import protocol
from lorakit.protocol import (
    Split,
    derive_seed,
    lesson,
    make_split,
    method_table,
    paired_difference,
    seeds,
    summarize,
    t_quantile,
    tune,
    verdict,
)

# Student-t 0.975 quantiles (two-sided 95 %) from the standard table (scipy.stats.t.ppf(0.975, dof)).
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
        9: 2.262157163, 19: 2.093024054, 29: 2.045229642, 100: 1.983971519}


def test_doctests() -> None:
    failures, tried = doctest.testmod(protocol, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 10 and failures == 0


@pytest.mark.parametrize("dof", sorted(T975))
def test_t_quantile_matches_the_table(dof: int) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(T975[dof], abs=1e-8)
    assert t_quantile(0.025, dof) == pytest.approx(-T975[dof], abs=1e-8)


def test_t_quantile_matches_scipy_where_available() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed: the table test covers the quantiles")
    for dof in (1, 2, 3, 6, 7, 15, 40):
        for p in (0.6, 0.9, 0.95, 0.995):
            assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=1e-9)


def test_summary_interval_is_the_small_sample_t_interval() -> None:
    values = [0.71, 0.74, 0.69, 0.73, 0.70]
    s = summarize(values)
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    assert (s.n, s.mean, s.sd) == (5, pytest.approx(mean), pytest.approx(sd))
    assert s.half_width == pytest.approx(T975[4] * sd / math.sqrt(5))
    assert (s.lo, s.hi) == (pytest.approx(mean - s.half_width), pytest.approx(mean + s.half_width))


def test_summarize_refuses_too_few_or_non_finite_values() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        summarize([0.5])
    with pytest.raises(ValueError, match="NaN"):
        summarize([0.5, float("nan"), 0.4])
    with pytest.raises(ValueError, match="level"):
        summarize([0.5, 0.6], level=95)


def test_paired_difference_pairs_by_seed() -> None:
    # a is b plus 1 point on every seed, while seeds differ by much more: pairing sees the gain
    b = {0: 0.60, 1: 0.80, 2: 0.70, 3: 0.90, 4: 0.65}
    a = {seed: v + 0.01 for seed, v in reversed(list(b.items()))}  # other order, same seeds
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.01) and d.sd == pytest.approx(0.0, abs=1e-12)
    assert verdict(d) == "beats"
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(TypeError, match="both as lists"):
        paired_difference({0: 0.1, 1: 0.2}, [0.1, 0.2])


@pytest.mark.parametrize(
    ("a", "b", "expected", "start"),
    [
        ([0.80, 0.82, 0.81, 0.83, 0.80], [0.78, 0.80, 0.80, 0.80, 0.79], "beats", "A beats B by 1.8 ± "),
        ([0.78, 0.80, 0.80, 0.80, 0.79], [0.80, 0.82, 0.81, 0.83, 0.80], "worse", "A is worse than B by 1.8 ± "),
        ([0.80, 0.79, 0.81, 0.78, 0.80], [0.79, 0.80, 0.80, 0.79, 0.81], "within noise",
         "A and B are within noise: −0.2 ± "),
    ],
)
def test_lesson_verdict_follows_the_interval(a: list, b: list, expected: str, start: str) -> None:
    d = paired_difference(a, b)
    assert verdict(d) == expected
    assert (d.lo > 0 or d.hi < 0) == (expected != "within noise")
    text = lesson("A", a, "B", b)
    assert text.startswith(start) and text.endswith("points (95 % CI, 5 seeds)"), text


def test_lesson_for_losses_and_long_names_wraps_at_88() -> None:
    low, high = [0.20, 0.21, 0.19], [0.30, 0.31, 0.32]
    assert lesson("A", low, "B", high, unit="loss", scale=1, decimals=2, higher_is_better=False).startswith(
        "A beats B by 0.11 ± ")
    long = lesson("LoRA with rank 8 on every attention projection and the MLP", [0.8, 0.81, 0.82],
                  "full fine-tuning of every weight of the transformer", [0.7, 0.71, 0.72], prefix="Lesson: ")
    assert long.startswith("Lesson: ") and "\n" in long
    assert all(len(line) <= 88 for line in long.splitlines())


def test_method_table_has_fixed_decimals() -> None:
    table = method_table({"LoRA": [0.7, 0.71, 0.72], "full fine-tuning": [0.8, 0.8, 0.8]}, decimals=3, scale=100)
    lines = table.splitlines()
    assert lines[0].split() == ["method", "seeds", "mean", "±", "sd", "95", "%", "CI"]
    assert "71.000 ± 1.000" in lines[1] and "[68.516, 73.484]" in lines[1]
    assert "80.000 ± 0.000  [80.000, 80.000]" in lines[2]
    assert len({line.index("[") for line in lines[1:]}) == 1  # aligned columns
    with pytest.raises(ValueError, match="empty"):
        method_table({})


def test_split_is_a_partition_and_reproducible() -> None:
    split = make_split(50, val=0.2, test=10, seed=3)
    (test_index,) = make_split(50, val=0.2, test=10, seed=3).final_evaluation()
    together = torch.cat([split.train, split.val, test_index])
    assert sorted(together.tolist()) == list(range(50))
    assert (len(split.train), len(split.val), split.n_test) == (30, 10, 10)
    assert not torch.equal(make_split(50, seed=4).val, split.val)
    with pytest.raises(ValueError, match="no training examples"):
        make_split(10, val=0.5, test=0.5, seed=0)
    with pytest.raises(ValueError, match="overlap"):
        Split(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2]), seed=0)


def test_tuning_never_sees_the_test_indices() -> None:
    split = make_split(40, val=0.25, test=0.25, seed=0)
    X = torch.arange(40.0)
    seen: set[int] = set()

    def validation_score(setting: dict) -> float:  # trains on train, scores on validation
        (X_train,), (X_val,) = split.take("train", X), split.take("val", X)
        seen.update(int(v) for v in torch.cat([X_train, X_val]))
        return -abs(setting["lr"] - 0.01)

    choice = tune({"lr": [0.001, 0.01, 0.1]}, validation_score, split=split)
    assert choice.best == {"lr": 0.01} and len(choice.scores) == 3
    assert not split.test_opened
    (test_index,) = split.final_evaluation()
    assert seen.isdisjoint(test_index.tolist()) and len(seen) == 30
    # the test part cannot be reached as an attribute, nor taken like the other parts ...
    with pytest.raises(AttributeError, match="final_evaluation"):
        split.test  # noqa: B018
    with pytest.raises(ValueError, match="final_evaluation"):
        split.take("test", X)
    # ... and once it has been opened, nothing more may be chosen with this split
    with pytest.raises(ValueError, match="already opened"):
        tune({"lr": [0.001, 0.01]}, validation_score, split=split)
    # the open parts are copies: editing them does not move examples between parts
    split.train[0] = int(test_index[0])
    assert int(test_index[0]) not in split.train.tolist()


def test_tune_grids_ties_and_diverged_runs() -> None:
    choice = tune({"lr": [1e-3, 1e-2], "wd": [0.0, 0.1]}, lambda s: 1.0, maximize=True)
    assert len(choice.grid) == 4 and choice.best == {"lr": 1e-3, "wd": 0.0}  # ties: first in grid order
    losses = {1e-3: 0.5, 1e-2: 0.3, 1e-1: float("inf")}
    choice = tune({"lr": list(losses)}, lambda s: losses[s["lr"]], maximize=False)
    assert choice.best == {"lr": 1e-2}
    assert "lr ∈ {0.001, 0.01, 0.1}" in choice.describe("LoRA") and "lr=0.01" in choice.describe("LoRA")
    with pytest.raises(ValueError, match="NaN/inf"):
        tune({"lr": [1.0]}, lambda s: float("nan"))
    with pytest.raises(ValueError, match="non-empty list"):
        tune({"lr": []}, lambda s: 0.0)


def test_seeds_and_derived_seeds() -> None:
    assert seeds() == (0, 1, 2, 3, 4) and len(seeds(3)) == 3
    with pytest.raises(ValueError, match="at least 3"):
        seeds(2)
    streams = {derive_seed(s, p) for s in seeds() for p in ("init", "batches", "task")}
    assert len(streams) == 15 and all(0 <= v < 2**63 for v in streams)
    torch.manual_seed(derive_seed(4, "task"))  # accepted by torch
