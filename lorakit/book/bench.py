"""How fast is a LoRA layer? A CPU benchmark of one linear layer's training step and inference (Chapter 14).

Run the full grid with ``make bench`` (or ``python -m lorakit.book.bench``); it prints a table
and writes a JSON report (default ``bench-results/bench.json``).

For every ``d`` (a square ``d × d`` layer), number of tokens ``T`` and rank ``r`` it
times, interleaved in one process (each repeat runs every case once, in turn, so a
slow moment of a shared machine hits all cases alike), after warm-up:

* ``linear_fwd`` — plain ``nn.Linear`` forward (no autograd);
* ``full_step`` — full fine-tuning step: forward + backward, gradients for ``W``, ``b`` and ``x``;
* ``lorakit_step`` — :class:`~lorakit.layer.LoRALinear` forward + backward (``W`` frozen);
* ``peft_step`` — 🤗 peft's ``lora.Linear`` forward + backward (skipped if peft is absent);
* ``naive_step`` — LoRA written the obvious way, ``x @ (W + s·B A)ᵀ``: it rebuilds the
  full weight every step, so autograd also forms the full ``d × d`` weight gradient;
* ``merged_fwd`` — a merged LoRA layer's forward (should cost what ``linear_fwd`` costs).

With ``ablations=True`` (``--ablations``) it also times lorakit's layer with its speed choices undone
one at a time (:func:`lorakit.book.bench_e2e.ablate`), so each choice's gain is measured:

* ``row_major_B_step`` — ``B`` stored row-major ``out × r`` (fused otherwise);
* ``unfused_step`` — the plain autograd expression instead of the fused function;
* ``unfused_scale_output_step`` — unfused, and scaling the ``tokens × out`` result (as peft does);
* ``unfused_scale_output_row_major_B_step`` — all three undone.

The input ``x`` requires a gradient in every step, as inside a network. A full step
costs three ``T·d²`` matmuls (forward, ``dx``, ``dW``); a LoRA step skips ``dW`` and
adds six ``T·d·r`` ones, hence the ideal ratio ``2/3 + 2r/d``.

Times are per-thread CPU seconds (``time.thread_time``) when torch runs on one
thread — robust to other processes on a shared machine — and wall-clock seconds
otherwise. The report holds the median and the interquartile range of each case.

Why a hand-written loop rather than ``torch.utils.benchmark``: a sample here is what
``Timer.timeit(number)`` measures (``number`` calls, calibrated so a sample lasts ``min_time``),
but ``blocked_autorange`` and ``Compare`` time one statement to the end before the next, with no
interleaving, and ``timeit`` adds at least two untimed calls before every sample, which would
triple the cost of the slow cases of the grid. The whole-model benchmark
(:mod:`lorakit.book.bench_e2e`), with few, long samples, uses ``Timer`` itself.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_write
from ..layer import LoRALinear

__all__ = ["ABLATION_CASES", "ABLATION_FLAGS", "ideal_ratio", "CaseTiming", "BenchResult", "bench_one", "run_grid", "format_table", "main"]

CASES = ("linear_fwd", "full_step", "lorakit_step", "peft_step", "naive_step", "merged_fwd")
#: The extra cases of ``ablations=True``: lorakit's layer with speed choices undone (Chapter 14).
ABLATION_CASES = ("row_major_B_step", "unfused_step", "unfused_scale_output_step",
                  "unfused_scale_output_row_major_B_step")
#: Which of lorakit's speed choices each ablation keeps (Chapter 14).
ABLATION_FLAGS = {
    "row_major_B_step": dict(fused=True, scale_intermediate=True, transposed_B=False),
    "unfused_step": dict(fused=False, scale_intermediate=True, transposed_B=True),
    "unfused_scale_output_step": dict(fused=False, scale_intermediate=False, transposed_B=True),
    "unfused_scale_output_row_major_B_step": dict(fused=False, scale_intermediate=False, transposed_B=False),
}


def ideal_ratio(d: int, r: int) -> float:
    """FLOP ratio of a LoRA step to a full step for a ``d × d`` layer: ``2/3 + 2r/d`` (Chapter 14).

    Example:
        >>> round(ideal_ratio(1024, 8), 4)
        0.6823
    """
    if d < 1 or r < 1:
        raise ValueError(f"d={d} and r={r} must both be >= 1")
    return 2 / 3 + 2 * r / d


@dataclass
class CaseTiming:
    """Timings of one case: ``median`` and interquartile range ``q1``–``q3``, in seconds (Chapter 14).

    Example:
        >>> t = CaseTiming(median=0.002, q1=0.0018, q3=0.0025, samples=[0.0018, 0.002, 0.0025])
        >>> t.median, len(t.samples)
        (0.002, 3)
    """

    median: float
    q1: float
    q3: float
    samples: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    """All cases for one ``(d, tokens, r)`` point, and the ratios the chapter discusses (Chapter 14).

    Example:
        >>> res = BenchResult(d=256, tokens=512, r=8, timings={
        ...     "full_step": CaseTiming(median=0.004, q1=0.004, q3=0.004),
        ...     "lorakit_step": CaseTiming(median=0.003, q1=0.003, q3=0.003)})
        >>> round(res.ratio("lorakit_step"), 4), round(res.ideal, 4)
        (0.75, 0.7292)
        >>> res.ratio("peft_step") is None  # a skipped case
        True
    """

    d: int
    tokens: int
    r: int
    timings: dict[str, CaseTiming]

    @property
    def ideal(self) -> float:
        return ideal_ratio(self.d, self.r)

    def ratio(self, case: str, reference: str = "full_step") -> float | None:
        """``median(case) / median(reference)``, or ``None`` if a case was skipped."""
        if case not in self.timings or reference not in self.timings:
            return None
        return self.timings[case].median / self.timings[reference].median

    def summary(self) -> dict[str, float | int | None]:
        return {
            "d": self.d,
            "tokens": self.tokens,
            "r": self.r,
            "ideal": self.ideal,
            "lorakit_vs_full": self.ratio("lorakit_step"),
            "peft_vs_full": self.ratio("peft_step"),
            "naive_vs_full": self.ratio("naive_step"),
            "lorakit_vs_peft": self.ratio("lorakit_step", "peft_step"),
            "merged_vs_plain": self.ratio("merged_fwd", "linear_fwd"),
            **{f"{case}_vs_lorakit": self.ratio(case, "lorakit_step") for case in ABLATION_CASES
               if case in self.timings},
        }


def _clock() -> Callable[[], float]:
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def _make_cases(d: int, tokens: int, r: int, seed: int, ablations: bool = False) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d, d)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d, d, generator=g) / d**0.5)
        base.bias.copy_(torch.randn(d, generator=g) * 0.1)
    x = torch.randn(tokens, d, generator=g)
    gy = torch.randn(tokens, d, generator=g)
    A0, B0 = torch.randn(r, d, generator=g) / d**0.5, torch.randn(d, r, generator=g) * 0.01
    scaling = 2.0  # alpha = 2r

    full = nn.Linear(d, d)
    full.load_state_dict(base.state_dict())

    ours = LoRALinear(nn.Linear(d, d), r=r, alpha=2 * r)
    ours.base.load_state_dict(base.state_dict())
    merged = LoRALinear(nn.Linear(d, d), r=r, alpha=2 * r)
    merged.base.load_state_dict(base.state_dict())
    with torch.no_grad():
        for layer in (ours, merged):
            layer.A.copy_(A0)
            layer.B.copy_(B0)
    merged.merge()

    naive_A = A0.clone().requires_grad_(True)
    naive_B = B0.clone().requires_grad_(True)
    W, b = base.weight.detach(), base.bias.detach()

    def step(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for p in module.parameters():
                p.grad = None
            xi = x.detach().requires_grad_(True)
            module(xi).backward(gy)

        return run

    def naive() -> None:
        naive_A.grad = naive_B.grad = None
        xi = x.detach().requires_grad_(True)
        F.linear(xi, W + scaling * naive_B @ naive_A, b).backward(gy)

    def forward(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                module(x)

        return run

    cases: dict[str, Callable[[], None]] = {
        "linear_fwd": forward(base),
        "full_step": step(full),
        "lorakit_step": step(ours),
    }
    try:
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLinear
    except ImportError:  # peft is optional: a benchmark dependency, not lorakit's
        PeftLinear = None
    if PeftLinear is not None:
        theirs_base = nn.Linear(d, d)
        theirs_base.load_state_dict(base.state_dict())
        theirs_base.requires_grad_(False)  # frozen, as peft's get_peft_model leaves it
        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0)
        theirs = PeftLinear(theirs_base, "default", config=config, r=r, lora_alpha=2 * r)
        with torch.no_grad():
            theirs.lora_A["default"].weight.copy_(A0)
            theirs.lora_B["default"].weight.copy_(B0)
        cases["peft_step"] = step(theirs)
    cases["naive_step"] = naive
    cases["merged_fwd"] = forward(merged)
    if ablations:
        from .bench_e2e import ablate

        for case, flags in ABLATION_FLAGS.items():
            layer = LoRALinear(nn.Linear(d, d), r=r, alpha=2 * r)
            layer.base.load_state_dict(base.state_dict())
            with torch.no_grad():
                layer.A.copy_(A0)
                layer.B.copy_(B0)
            holder = nn.Sequential(layer)
            ablate(holder, **flags)
            cases[case] = step(holder)
    return cases


def bench_one(
    d: int, tokens: int, r: int, *, repeats: int = 9, warmup: int = 2, seed: int = 0, min_time: float = 0.02,
    ablations: bool = False,
) -> BenchResult:
    """Time every case for one ``(d, tokens, r)``, interleaved; return a :class:`BenchResult` (Chapter 14).

    Args:
        d: the layer is ``d × d`` (``1 <= r <= d``).
        tokens: rows of the input ``x`` (batch × sequence length), shape ``(tokens, d)``.
        r: LoRA rank.
        repeats: timed rounds; each round runs every case once, in a rotating order.
        warmup: untimed rounds first.
        seed: seeds the weights and inputs.
        min_time: a sample lasts at least this many seconds: a case faster than that runs
            several times per sample (the count is set from the last warm-up round) and the
            sample is the mean, so the clock's resolution and call overheads do not dominate.
        ablations: also time :data:`ABLATION_CASES` (lorakit's layer with speed choices undone).

    Example:
        >>> res = bench_one(64, 32, 4, repeats=3, warmup=1)
        >>> sorted(res.timings)[:3]
        ['full_step', 'linear_fwd', 'lorakit_step']
        >>> res.ratio("merged_fwd", "linear_fwd") > 0
        True
    """
    for name, value in (("d", d), ("tokens", tokens), ("r", r), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if r > d:
        raise ValueError(f"r={r} exceeds d={d}: choose 1 <= r <= d")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    if not min_time >= 0:
        raise ValueError(f"min_time={min_time} must be >= 0 seconds")
    cases = _make_cases(d, tokens, r, seed, ablations)
    names = list(cases)
    clock = _clock()
    samples: dict[str, list[float]] = {name: [] for name in names}
    calls = dict.fromkeys(names, 1)
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            for _ in range(calls[name]):
                cases[name]()
            elapsed = (clock() - start) / calls[name]
            if round_ == warmup - 1 and elapsed > 0:
                calls[name] = max(1, math.ceil(min_time / elapsed))
            if round_ >= warmup:
                samples[name].append(elapsed)
    timings = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        timings[name] = CaseTiming(median=statistics.median(values), q1=q[0], q3=q[2], samples=values)
    return BenchResult(d=d, tokens=tokens, r=r, timings=timings)


def run_grid(
    ds: Sequence[int] = (256, 1024, 2048),
    tokens: Sequence[int] = (512, 4096),
    ranks: Sequence[int] = (1, 8, 64),
    *,
    repeats: int = 9,
    warmup: int = 2,
    min_time: float = 0.02,
    progress: bool = True,
    ablations: bool = False,
) -> list[BenchResult]:
    """:func:`bench_one` over the grid ``ds × tokens × ranks`` (Chapter 14).

    Returns one :class:`BenchResult` per point, ``d`` outermost, then ``tokens``, then ``r``.
    The default grid takes minutes; a tiny grid takes well under a second.

    Example:
        >>> results = run_grid([32], [16], [1, 4], repeats=1, warmup=0, progress=False)
        >>> [(res.d, res.tokens, res.r) for res in results]
        [(32, 16, 1), (32, 16, 4)]
        >>> results = run_grid()  # the full default grid, minutes  # doctest: +SKIP
    """
    results = []
    for d in ds:
        for t in tokens:
            for r in ranks:
                if progress:
                    print(f"  timing d={d} tokens={t} r={r} …", file=sys.stderr, flush=True)
                results.append(bench_one(d, t, r, repeats=repeats, warmup=warmup, min_time=min_time,
                                         ablations=ablations))
    return results


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.3f}"


def format_table(results: Sequence[BenchResult]) -> str:
    """A text table: per point, the full step's time and each ratio (Chapter 14).

    Columns: ``ideal`` = 2/3 + 2r/d; ``lorakit``, ``peft``, ``naive`` = step time ÷
    full step; ``k/peft`` = lorakit ÷ peft; ``merged`` = merged ÷ plain forward.

    Example:
        >>> res = BenchResult(d=256, tokens=512, r=8, timings={
        ...     "full_step": CaseTiming(median=0.004, q1=0.004, q3=0.004),
        ...     "lorakit_step": CaseTiming(median=0.003, q1=0.003, q3=0.003)})
        >>> print(format_table([res]).splitlines()[2])
          256    512   8     4.00  0.729   0.750   n/a   n/a    n/a    n/a
    """
    header = f"{'d':>5} {'tokens':>6} {'r':>3} {'full ms':>8}  {'ideal':>5} {'lorakit':>7} {'peft':>5} {'naive':>5} {'k/peft':>6} {'merged':>6}"
    lines = [header, "-" * len(header)]
    for res in results:
        s = res.summary()
        lines.append(
            f"{res.d:>5} {res.tokens:>6} {res.r:>3} {1e3 * res.timings['full_step'].median:8.2f}  "
            f"{_fmt(s['ideal'])} {_fmt(s['lorakit_vs_full']):>7} {_fmt(s['peft_vs_full'])} "
            f"{_fmt(s['naive_vs_full'])} {_fmt(s['lorakit_vs_peft']):>6} {_fmt(s['merged_vs_plain']):>6}"
        )
    return "\n".join(lines)


def report(results: Sequence[BenchResult]) -> dict:
    """The JSON-ready report: environment, per-point summaries and raw timings."""
    return {
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "clock": "thread CPU time" if torch.get_num_threads() == 1 else "wall time",
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "dtype": "float32",
        },
        "results": [{**res.summary(), "timings": {k: asdict(v) for k, v in res.timings.items()}} for res in results],
    }


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints, e.g. 256,1024") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive ints, e.g. 256,1024")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lorakit.book.bench [--d 256,1024,2048] [--tokens 512,4096] [--r 1,8,64]`` (Chapter 14).

    Times the grid, prints :func:`format_table` and writes the JSON report to ``--out``;
    returns the exit status ``0``. Bad arguments exit with status 2 and a message.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     try:
        ...         main(["--d", "8", "--r", "16"])  # every rank must be <= every d
        ...     except SystemExit as stop:
        ...         print("exit status", stop.code)
        exit status 2
        >>> main(["--d", "256", "--tokens", "512", "--r", "8"])  # one point; writes the report  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=_int_list, default=[256, 1024, 2048], help="layer widths (default 256,1024,2048)")
    parser.add_argument("--tokens", type=_int_list, default=[512, 4096], help="tokens per step (default 512,4096)")
    parser.add_argument("--r", type=_int_list, default=[1, 8, 64], help="LoRA ranks (default 1,8,64)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per point (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per point (default 2)")
    parser.add_argument("--min-time", type=float, default=0.02,
                        help="shortest sample in seconds; faster cases repeat within a sample (default 0.02)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--ablations", action="store_true", help="also time lorakit's layer with its speed choices undone")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"), help="JSON report path")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or not args.min_time >= 0:
        parser.error("--threads and --repeats must be >= 1, --warmup and --min-time >= 0")
    if max(args.r) > min(args.d):
        parser.error(f"every rank must be <= every d: got r up to {max(args.r)} and d down to {min(args.d)}")
    torch.set_num_threads(args.threads)
    results = run_grid(args.d, args.tokens, args.r, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                       ablations=args.ablations)
    print(format_table(results))
    if args.ablations:
        print("ablations: step time / lorakit's step time")
        for res in results:
            print(f"  d={res.d} tokens={res.tokens} r={res.r}: " + ", ".join(
                f"{case.removesuffix('_step')} {res.ratio(case, 'lorakit_step'):.3f}" for case in ABLATION_CASES))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report(results), indent=2) + "\n"
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))  # never a half-written report
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
