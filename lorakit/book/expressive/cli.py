"""``python -m lorakit.book.expressive``: the paper's ``run_exp.py`` command line, plus the full grid (Chapters 4–6).

Single run (the paper's flags; ``--wandb`` is accepted and ignored)::

    python -m lorakit.book.expressive --exp fnn --width 8 --target_depth 1 --frozen_depth 2 --rank 4 --method ours

The paper's grid, resumable (one JSON line per finished run; rerun the same command to continue)::

    python -m lorakit.book.expressive --grid linear --results results/expressive_linear.jsonl

An invalid configuration prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .experiment import FAMILIES, Config, format_report, format_settings, grid, run_experiment, run_grid, validate

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: every field of :class:`~lorakit.book.expressive.experiment.Config` as ``--name`` (Chapter 4).

    Example:
        >>> build_parser().parse_args(["--rank", "4", "--taget_depth", "2"]).target_depth
        2
    """
    parser = argparse.ArgumentParser(
        prog="python -m lorakit.book.expressive",
        description="Reproduce one run of Zeng & Lee (2024), 'The Expressive Power of Low-Rank Adaptation'.",
    )
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(Config):
        parser.add_argument(f"--{f.name}", type=types[f.type], default=f.default, help=f"default {f.default}")
    parser.add_argument("--taget_depth", dest="target_depth", type=int, help=argparse.SUPPRESS)  # the README's typo
    parser.add_argument("--grid", choices=FAMILIES, help="run the paper's grid for this family instead of one run")
    parser.add_argument("--results", default="expressive_results.jsonl", help="JSON-lines file for --grid (resumable)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..n-1) for --grid")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many new grid runs, then stop")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run, print the report; return the exit status (0 ok, 2 invalid configuration) (Chapter 5).

    Example:
        >>> main(["--rank", "0"])
        2
    """
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    if args.wandb:
        print("note: --wandb is accepted for compatibility and ignored; results are printed (and, with --grid, "
              "written to --results)")
    try:
        if args.grid:
            n_epochs = values["n_epochs"]
            configs = list(grid(args.grid, width=values["width"], seeds=tuple(range(args.seeds)), n_epochs=n_epochs))
            done = run_grid(configs, args.results, limit=args.limit, progress=not args.no_progress)
            print(f"{done} runs executed; {len(configs)} in the '{args.grid}' grid; results in {args.results}")
            return 0
        cfg = Config(**values)
        validate(cfg)
        print(format_settings(cfg))
        res = run_experiment(cfg, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return 2
    print("\n".join(line for line in format_report(res).splitlines() if not line.startswith(("|", "Experiment"))))
    return 0

