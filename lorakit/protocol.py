"""One protocol for every comparison in the book (Chapter 3).

A comparison between methods carries a conclusion only when it is made the same way every time:

1. **One split per task**, made once from a seed (:func:`make_split`): train, validation, test. The
   test part is reachable only through :meth:`Split.final_evaluation`, after every choice is made.
2. **Tuned on validation**: each method's learning rate (and any other tuned setting) is chosen on
   the validation part from a small declared grid (:func:`tune`); the grid and the choice are printed.
3. **Several seeds**: each method runs on ``S >= 3`` seeds (:func:`seeds`, 5 by default), each seed a
   fresh draw of everything random (:func:`derive_seed` gives init, batches and task their own stream).
4. **Statistics**: mean ± standard deviation and a 95 % Student-t interval per method
   (:func:`summarize`, :func:`method_table`); differences between methods are *paired* over seeds
   (:func:`paired_difference`), and :func:`lesson` turns one into the sentence a chapter prints:
   the verdict ("beats", "within noise", "is worse than") follows from whether the interval excludes 0.

The module is generic: it knows nothing of models; the chapter passes functions that train and score.

Example:
    The whole protocol on a made-up task, where ``score(method, lr, seed, part)`` stands for
    "train ``method`` with ``lr`` on seed ``seed``'s draw, evaluate on ``part``". Each seed's draw
    moves both methods alike, so the two intervals overlap while the *paired* difference does not:

    >>> def score(method, lr, seed, part):
    ...     task = torch.Generator().manual_seed(derive_seed(seed, part))  # the seed's draw: shared
    ...     own = torch.Generator().manual_seed(derive_seed(seed, method + part))
    ...     best_lr, best = {"LoRA": (1e-2, 0.81), "full": (1e-3, 0.80)}[method]
    ...     return (best - 0.02 * abs(math.log10(lr / best_lr))
    ...             + 0.02 * torch.randn(1, generator=task).item() + 0.003 * torch.randn(1, generator=own).item())
    >>> split = make_split(1000, seed=0)  # once per task; score() would train on split.take("train", ...)
    >>> choices = {m: tune({"lr": [1e-3, 1e-2, 1e-1]}, lambda s: score(m, s["lr"], 0, "val"), split=split)
    ...            for m in ("LoRA", "full")}
    >>> print(choices["full"].describe("full", metric="val acc"))
    full: lr ∈ {0.001, 0.01, 0.1} chosen on validation → lr=0.001 (val acc 0.807)
    >>> _ = split.final_evaluation()  # from here on, nothing more is chosen
    >>> test = {m: {s: score(m, c.best["lr"], s, "test") for s in seeds(5)} for m, c in choices.items()}
    >>> print(method_table(test, scale=100, metric="test acc %", notes={m: c.label() for m, c in choices.items()}))
    method  seeds  test acc %    95 % CI         note
    LoRA        5  80.76 ± 0.94  [79.59, 81.94]  lr=0.01
    full        5  79.80 ± 1.11  [78.41, 81.18]  lr=0.001
    >>> lesson("LoRA", test["LoRA"], "full", test["full"], prefix="Lesson: ")
    'Lesson: LoRA beats full by 1.0 ± 0.4 points (95 % CI, 5 seeds)'
"""

from __future__ import annotations

import hashlib
import itertools
import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = [
    "Split",
    "make_split",
    "Choice",
    "tune",
    "seeds",
    "derive_seed",
    "t_quantile",
    "Summary",
    "summarize",
    "paired_difference",
    "verdict",
    "lesson",
    "method_table",
]

LINE_WIDTH = 88
Values = Sequence[float] | Mapping[Any, float]


# --------------------------------------------------------------------------------------------------
# The split


class Split:
    """Train / validation / test indices of one task, made once (Chapter 3).

    ``train`` and ``val`` are open; the test indices are reachable only through
    :meth:`final_evaluation`, and once they have been taken :func:`tune` refuses to choose anything
    with this split: every choice happens before the test set is looked at.

    Attributes:
        train: sorted ``LongTensor`` of training indices (a copy: editing it changes nothing).
        val: sorted ``LongTensor`` of validation indices.
        n_test: how many test examples there are (the count only).
        seed: the seed the split was drawn from.
        test_opened: whether :meth:`final_evaluation` has been called.

    Example:
        >>> split = make_split(10, val=0.2, test=0.2, seed=0)
        >>> len(split.train), len(split.val), split.n_test
        (6, 2, 2)
        >>> split.test
        Traceback (most recent call last):
        ...
        AttributeError: the test part is reachable only through split.final_evaluation(), after every choice is made
        >>> X = torch.arange(10.0)
        >>> (X_test,) = split.final_evaluation(X); X_test.shape
        torch.Size([2])
    """

    __slots__ = ("_train", "_val", "_test", "seed", "_opened")

    def __init__(self, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor, seed: int) -> None:
        parts = [torch.as_tensor(p, dtype=torch.long).flatten().sort().values for p in (train, val, test)]
        together = torch.cat(parts)
        if together.unique().numel() != together.numel():
            raise ValueError("train, validation and test indices overlap: each example belongs to one part")
        self._train, self._val, self._test = parts
        self.seed = seed
        self._opened = False

    @property
    def train(self) -> torch.Tensor:
        return self._train.clone()

    @property
    def val(self) -> torch.Tensor:
        return self._val.clone()

    @property
    def test(self) -> torch.Tensor:
        raise AttributeError(
            "the test part is reachable only through split.final_evaluation(), after every choice is made"
        )

    @property
    def n_test(self) -> int:
        return int(self._test.numel())

    @property
    def test_opened(self) -> bool:
        return self._opened

    def take(self, part: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows of ``tensors`` (indexed on dim 0) in ``part``: ``"train"`` or ``"val"``.

        Example:
            >>> split = make_split(5, val=1, test=1, seed=0)
            >>> X, y = torch.arange(5.0), torch.arange(5)
            >>> [t.shape[0] for t in split.take("train", X, y)]
            [3, 3]
        """
        if part == "test":
            raise ValueError("the test part is not for choices: use split.final_evaluation(...) once, at the end")
        if part not in ("train", "val"):
            raise ValueError(f"part={part!r} must be 'train' or 'val'")
        index = self._train if part == "train" else self._val
        return tuple(t[index] for t in tensors)

    def final_evaluation(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The test rows of ``tensors`` (or the test indices if none are given), for the final report.

        After this call :func:`tune` refuses the split: nothing may be chosen once the test set is seen.

        Example:
            >>> split = make_split(5, val=1, test=1, seed=0)
            >>> (index,) = split.final_evaluation(); index.numel(), split.test_opened
            (1, True)
        """
        self._opened = True
        if not tensors:
            return (self._test.clone(),)
        return tuple(t[self._test] for t in tensors)

    def __repr__(self) -> str:
        return f"Split(train={self._train.numel()}, val={self._val.numel()}, test={self.n_test}, seed={self.seed})"


def _count(part: float | int, n: int, name: str) -> int:
    if isinstance(part, bool) or not isinstance(part, (int, float)):
        raise TypeError(f"{name}={part!r} must be a fraction in (0, 1) or a count of examples")
    if isinstance(part, float):
        if not 0.0 < part < 1.0:
            raise ValueError(f"{name}={part!r} must be a fraction in (0, 1) or a positive int count")
        return max(1, round(part * n))
    if part < 1:
        raise ValueError(f"{name}={part!r} must be at least 1 example")
    return part


def make_split(n: int, *, val: float | int = 0.2, test: float | int = 0.2, seed: int) -> Split:
    """Split ``n`` examples into train / validation / test once, from ``seed`` (Chapter 3).

    Args:
        n: number of examples (indices ``0..n-1``).
        val, test: fraction of ``n`` (a float in (0, 1)) or a count (an int); the rest is train.
        seed: the split's own seed; the same seed gives the same split.

    Returns:
        A :class:`Split`.

    Example:
        >>> a, b = make_split(100, seed=1), make_split(100, seed=1)
        >>> torch.equal(a.train, b.train), len(a.train), len(a.val), a.n_test
        (True, 60, 20, 20)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"n={n!r} must be an int >= 3 (one example per part at least)")
    n_val, n_test = _count(val, n, "val"), _count(test, n, "test")
    if n_val + n_test >= n:
        raise ValueError(f"val ({n_val}) + test ({n_test}) leave no training examples out of n={n}: make them smaller")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Split(order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test], seed)


# --------------------------------------------------------------------------------------------------
# Choosing settings on validation


@dataclass(frozen=True)
class Choice:
    """The result of :func:`tune`: the declared grid, each setting's validation score, the choice (Chapter 3).

    Example:
        >>> val_acc = {1e-3: 0.71, 1e-2: 0.76, 1e-1: 0.52}
        >>> choice = tune({"lr": [1e-3, 1e-2, 1e-1]}, lambda s: val_acc[s["lr"]])
        >>> choice.best
        {'lr': 0.01}
        >>> print(choice.describe("LoRA", metric="val acc"))
        LoRA: lr ∈ {0.001, 0.01, 0.1} chosen on validation → lr=0.01 (val acc 0.76)
    """

    grid: tuple[dict, ...]
    scores: tuple[float, ...]
    best: dict
    best_score: float
    maximize: bool

    def label(self) -> str:
        """The chosen setting as ``"lr=0.01, wd=0.1"`` (e.g. the note of a :func:`method_table` row)."""
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best.items())

    def describe(self, name: str = "", *, metric: str = "val") -> str:
        """One line for the chapter: the grid of each tuned setting and the choice."""
        keys = list(self.grid[0]) if self.grid else []
        axes = []
        for key in keys:
            seen: list = []
            for setting in self.grid:
                if setting[key] not in seen:
                    seen.append(setting[key])
            axes.append(f"{key} ∈ {{{', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in seen)}}}")
        chosen = self.label()
        head = f"{name}: " if name else ""
        line = f"{head}{'; '.join(axes)} chosen on validation → {chosen} ({metric} {self.best_score:.4g})"
        return textwrap.fill(line, LINE_WIDTH, subsequent_indent="  ")


def _settings(grid: Mapping[str, Sequence] | Sequence[Mapping]) -> list[dict]:
    if isinstance(grid, Mapping):
        for key, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise ValueError(f"grid[{key!r}]={values!r} must be a non-empty list of values to try")
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if isinstance(grid, Sequence) and grid and all(isinstance(s, Mapping) for s in grid):
        return [dict(s) for s in grid]
    raise ValueError(f"grid={grid!r} must be a dict of lists ({{'lr': [1e-3, 1e-2]}}) or a non-empty list of dicts")


def tune(
    grid: Mapping[str, Sequence] | Sequence[Mapping],
    score: Callable[[dict], float],
    *,
    maximize: bool = True,
    split: Split | None = None,
) -> Choice:
    """Choose a method's settings on validation from a small declared grid (Chapter 3).

    Args:
        grid: ``{"lr": [1e-3, 3e-3, 1e-2]}`` (all combinations of several keys, in order) or a list of
            setting dicts.
        score: ``score(setting) -> float``, the *validation* score of one setting (e.g. train on
            ``split.take("train", ...)``, evaluate on ``split.take("val", ...)``; average a few seeds if
            the budget allows). A NaN or infinite score (a diverged run) never wins.
        maximize: ``True`` for accuracy-like scores, ``False`` for losses.
        split: the task's :class:`Split`; if given, tuning is refused once its test part was opened.

    Returns:
        A :class:`Choice`; ties go to the first setting in grid order.

    Example:
        >>> choice = tune({"lr": [0.1, 1.0, 10.0]}, lambda s: float("nan") if s["lr"] > 5 else s["lr"])
        >>> choice.best, choice.scores
        ({'lr': 1.0}, (0.1, 1.0, nan))
    """
    if split is not None and split.test_opened:
        raise ValueError(
            "this split's test part was already opened with final_evaluation(): choose settings before "
            "looking at the test set (make the choices first, then evaluate once)"
        )
    settings = _settings(grid)
    scores = tuple(float(score(dict(s))) for s in settings)
    finite = [i for i, v in enumerate(scores) if math.isfinite(v)]
    if not finite:
        raise ValueError(f"every setting of the grid scored NaN/inf ({settings}): widen the grid towards smaller steps")
    best = max(finite, key=lambda i: (scores[i] if maximize else -scores[i], -i))
    return Choice(tuple(settings), scores, settings[best], scores[best], maximize)


# --------------------------------------------------------------------------------------------------
# Seeds


def seeds(n: int = 5, *, base: int = 0) -> tuple[int, ...]:
    """The ``n`` seeds every method of a comparison runs on (Chapter 3): ``base, base+1, …``.

    Every method uses the same seeds, so the differences between methods can be paired by seed.

    Example:
        >>> seeds()
        (0, 1, 2, 3, 4)
        >>> seeds(3, base=100)
        (100, 101, 102)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"n={n!r} seeds: a comparison needs at least 3 (5 where the budget allows)")
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ValueError(f"base={base!r} must be a non-negative int")
    return tuple(range(base, base + n))


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed for one random ``purpose`` ("init", "batches", "task") of one run (Chapter 3).

    So that each seed is a fresh draw of *everything* random, and changing how batches are drawn does
    not change the initialisation.

    Example:
        >>> derive_seed(0, "init") == derive_seed(0, "init"), derive_seed(0, "init") == derive_seed(0, "batches")
        (True, False)
        >>> g = torch.Generator().manual_seed(derive_seed(3, "init"))
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63, what torch.manual_seed accepts


# --------------------------------------------------------------------------------------------------
# Statistics


def _t_cdf(t: float, dof: int) -> float:
    """Student-t CDF for an integer number of degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    term = total = 1.0
    if dof % 2:
        for k in range(1, (dof - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2.0 / math.pi * (theta + (s * math.cos(theta) * total if dof > 1 else 0.0))
    else:
        for k in range(1, (dof - 2) // 2 + 1):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return 0.5 + math.copysign(inside / 2.0, t)


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (Chapter 3).

    Exact for integer ``dof`` (closed-form CDF, solved by bisection): no scipy needed.

    Example:
        >>> round(t_quantile(0.975, 4), 6)  # the 95 % interval of 5 seeds
        2.776445
        >>> round(t_quantile(0.975, 1), 4), round(t_quantile(0.5, 7), 12)
        (12.7062, 0.0)
    """
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"dof={dof!r} must be a positive int (n - 1 for n seeds)")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _fmt(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")  # no "−0.0"
    return text.replace("-", "−")


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and Student-t interval of one metric over seeds (Chapter 3).

    Attributes:
        values: the per-seed values, in order.
        n: the number of seeds.
        mean: their mean.
        sd: their sample standard deviation (``n - 1`` in the denominator).
        level: the interval's coverage (0.95).
        half_width: ``t(1 - (1 - level)/2, n - 1) · sd / √n``; the interval is ``[lo, hi] = mean ± half_width``.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0])
        >>> s.mean, s.sd, round(s.half_width, 4)
        (2.0, 1.0, 2.4841)
        >>> s.format(2)
        '2.00 ± 1.00 (95 % CI [−0.48, 4.48], 3 seeds)'
    """

    values: tuple[float, ...]
    n: int
    mean: float
    sd: float
    level: float
    half_width: float

    @property
    def lo(self) -> float:
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or entirely below 0."""
        return self.lo > 0.0 or self.hi < 0.0

    def format(self, decimals: int = 2, *, scale: float = 1.0) -> str:
        """``mean ± sd (95 % CI [lo, hi], n seeds)`` with fixed ``decimals``, values times ``scale``."""
        pct = f"{100 * self.level:g} %"
        return (f"{_fmt(scale * self.mean, decimals)} ± {_fmt(scale * self.sd, decimals)} "
                f"({pct} CI [{_fmt(scale * self.lo, decimals)}, {_fmt(scale * self.hi, decimals)}], {self.n} seeds)")


def _values(values: Values, name: str = "values") -> list[float]:
    if isinstance(values, Mapping):
        values = list(values.values())
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a list of numbers (one per seed) or a dict seed -> number: {exc}") from None
    if len(out) < 2:
        raise ValueError(f"{name} has {len(out)} value(s): an interval needs at least 2 seeds (use 3 or more)")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name}={out} contains NaN/inf: a diverged run has no place in a mean; fix or exclude it")
    return out


def summarize(values: Values, *, level: float = 0.95) -> Summary:
    """Summarize per-seed values: mean ± sd and a Student-t interval at ``level`` (Chapter 3).

    Args:
        values: one number per seed (a list, a 1-D tensor, or a dict ``seed -> value``).
        level: the interval's coverage, 0.95 by default.

    Example:
        >>> s = summarize({0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69, 4: 0.73})
        >>> print(s.format(2, scale=100))
        71.00 ± 1.58 (95 % CI [69.04, 72.96], 5 seeds)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1), e.g. 0.95")
    xs = _values(values)
    n = len(xs)
    mean = math.fsum(xs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Summary(tuple(xs), n, mean, sd, level, half)


def paired_difference(a: Values, b: Values, *, higher_is_better: bool = True, level: float = 0.95) -> Summary:
    """The per-seed differences ``a - b`` (``b - a`` when lower is better), summarized (Chapter 3).

    Pairing by seed removes what both methods share in a seed (the task draw, the split, the data
    order), so the interval is usually much narrower than comparing two unpaired means.

    Args:
        a, b: one value per seed for each method: two lists in the same seed order, or two dicts
            ``seed -> value`` with the same seeds.
        higher_is_better: the sign convention: a positive difference always means "a is better".

    Example:
        >>> d = paired_difference([0.80, 0.82, 0.81], [0.78, 0.80, 0.80])
        >>> round(d.mean, 4), d.excludes_zero
        (0.0167, True)
        >>> paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 2: 2.0})
        Traceback (most recent call last):
        ...
        ValueError: a and b were run on different seeds ([0, 1] vs [0, 2]): run both methods on the same seeds
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"a and b were run on different seeds ({sorted(a)} vs {sorted(b)}): "
                             "run both methods on the same seeds")
        keys = list(a)
        xa, xb = _values([a[k] for k in keys], "a"), _values([b[k] for k in keys], "b")
    elif isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("give a and b both as lists (same seed order) or both as dicts seed -> value")
    else:
        xa, xb = _values(a, "a"), _values(b, "b")
        if len(xa) != len(xb):
            raise ValueError(f"a has {len(xa)} seeds and b {len(xb)}: pairing needs the same seeds for both")
    sign = 1.0 if higher_is_better else -1.0
    return summarize([sign * (x - y) for x, y in zip(xa, xb)], level=level)


def verdict(difference: Summary) -> str:
    """``"beats"``, ``"within noise"`` or ``"worse"``: what a paired difference's interval allows (Chapter 3).

    Example:
        >>> [verdict(summarize(d)) for d in ([1.0, 1.2, 0.9], [1.0, -1.0, 0.5], [-2.0, -2.1, -1.9])]
        ['beats', 'within noise', 'worse']
    """
    if difference.lo > 0.0:
        return "beats"
    if difference.hi < 0.0:
        return "worse"
    return "within noise"


def lesson(
    a_name: str,
    a: Values,
    b_name: str,
    b: Values,
    *,
    unit: str = "points",
    scale: float = 100.0,
    decimals: int = 1,
    higher_is_better: bool = True,
    level: float = 0.95,
    prefix: str = "",
) -> str:
    """The sentence a chapter prints about method A against method B (Chapter 3).

    The difference is paired over seeds (:func:`paired_difference`), shown as ``mean ± half-width of
    the interval``; the verdict follows from whether the interval excludes 0. Lines are wrapped at 88
    characters.

    Args:
        a_name, b_name: the methods' names as the chapter calls them.
        a, b: their per-seed values (same seeds).
        unit, scale: how a difference is shown: by default accuracies in [0, 1] as percentage points.
        decimals: fixed decimals of the shown numbers.
        higher_is_better: ``False`` for losses (then "beats" means a lower loss).
        prefix: e.g. ``"Lesson: "``.

    Example:
        >>> lesson("LoRA r=8", [0.781, 0.776, 0.779, 0.784, 0.780], "LoRA r=4", [0.760, 0.758, 0.766, 0.762, 0.759])
        'LoRA r=8 beats LoRA r=4 by 1.9 ± 0.5 points (95 % CI, 5 seeds)'
        >>> lesson("A", [0.70, 0.72, 0.69], "B", [0.71, 0.70, 0.71])
        'A and B are within noise: −0.3 ± 5.2 points (95 % CI, 3 seeds)'
        >>> lesson("A", [0.31, 0.30, 0.32], "B", [0.25, 0.26, 0.25], unit="loss", scale=1, decimals=3,
        ...        higher_is_better=False)
        'A is worse than B by 0.057 ± 0.038 loss (95 % CI, 3 seeds)'
    """
    d = paired_difference(a, b, higher_is_better=higher_is_better, level=level)
    how = verdict(d)
    ci = f"({100 * level:g} % CI, {d.n} seeds)"
    half = _fmt(scale * d.half_width, decimals)
    if how == "beats":
        text = f"{a_name} beats {b_name} by {_fmt(scale * d.mean, decimals)} ± {half} {unit} {ci}"
    elif how == "worse":
        text = f"{a_name} is worse than {b_name} by {_fmt(-scale * d.mean, decimals)} ± {half} {unit} {ci}"
    else:
        text = f"{a_name} and {b_name} are within noise: {_fmt(scale * d.mean, decimals)} ± {half} {unit} {ci}"
    return textwrap.fill(prefix + text, LINE_WIDTH, subsequent_indent="  ")


def method_table(
    results: Mapping[str, Values],
    *,
    decimals: int = 2,
    scale: float = 1.0,
    metric: str = "mean ± sd",
    notes: Mapping[str, str] | None = None,
    level: float = 0.95,
) -> str:
    """A fixed-decimal table of methods: seeds, mean ± sd, the interval, and a note (Chapter 3).

    Args:
        results: ``{method: per-seed values}``, in the order to print.
        decimals, scale: fixed decimals of every number, shown times ``scale`` (100 for percentages).
        metric: the heading of the ``mean ± sd`` column, e.g. ``"test acc % (mean ± sd)"``.
        notes: an optional last column per method, e.g. the learning rate chosen on validation.

    Example:
        >>> print(method_table({"LoRA": [0.781, 0.776, 0.779], "full": [0.79, 0.80, 0.785]},
        ...                    scale=100, metric="test acc %", notes={"LoRA": "lr=0.01", "full": "lr=0.001"}))
        method  seeds  test acc %    95 % CI         note
        LoRA        3  77.87 ± 0.25  [77.24, 78.49]  lr=0.01
        full        3  79.17 ± 0.76  [77.27, 81.06]  lr=0.001
    """
    if not results:
        raise ValueError("results is empty: give {method: per-seed values}")
    rows = []
    for name, values in results.items():
        s = summarize(values, level=level)
        row = [str(name), str(s.n), f"{_fmt(scale * s.mean, decimals)} ± {_fmt(scale * s.sd, decimals)}",
               f"[{_fmt(scale * s.lo, decimals)}, {_fmt(scale * s.hi, decimals)}]"]
        if notes is not None:
            row.append(str(notes.get(name, "")))
        rows.append(row)
    head = ["method", "seeds", metric, f"{100 * level:g} % CI"] + (["note"] if notes is not None else [])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {1}  # the seed count is right-aligned, the rest left

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join(line(r) for r in [head] + rows)
