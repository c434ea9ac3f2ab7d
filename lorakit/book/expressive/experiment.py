"""One experiment of the paper, end to end, and the paper's configuration grid, resumable (Chapters 4–6).

:class:`Config` holds the flags of the paper's ``run_exp.py``; :func:`run_experiment`
draws the models, optionally pretrains the frozen one, adapts it with 'ours', 'sgd' or
'flt' and reports validation and test MSE. :func:`run_grid` runs the paper's grid,
appending one JSON line per finished run to a results file and skipping runs already
there, so it can be interrupted and resumed.

Random streams (each a separate seeded ``torch.Generator``, so that no set overlaps
another — the paper's code reuses one stream and its test set overlaps the first
training batch): models from ``seed``; pretraining batches ``seed+1``; training batches
and then the validation batch ``seed+2``; the calibration batch of 'ours' ``seed+3``;
the test set ``seed+4``.

'ours' runs and is evaluated in float64 ('sgd' and 'flt' in float32, as in the paper):
the construction is exact in exact arithmetic, but its large biases (ReLU FNN, e.g. ~500
for D=16) and chains of inverses (transformer, depth 2) lose 1e-8 to 1e-2 MSE to float32
rounding, which would hide the exactness the theorems are about.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ...io import atomic_write
from .methods import adapt_ours_fnn, adapt_ours_tfn, mse, train_adapter, trainable_parameters
from .models import make_fnn_pair, make_tfn_pair, pretrain, sample_inputs

__all__ = ["Config", "Result", "format_mse", "validate", "make_pair", "run_experiment", "format_settings", "format_report", "grid", "run_grid", "summarize"]


@dataclass(frozen=True)
class Config:
    """The flags of the paper's ``run_exp.py`` (same names, same defaults) (Chapter 4).

    For ``exp="tfn"`` the frozen depth is ``target_depth`` (the paper's transformer
    experiments use equal depths); ``frozen_depth``, ``use_bias``, ``activation``,
    ``init_mode`` other than ``default``, ``tune_bias`` and ``last_layers`` do not apply.
    ``draw_order`` (not a flag of the paper's) is :func:`~.models.make_tfn_pair`'s: ``"paper"``
    (the frozen TFN changes with the rank, as in the paper's code) or ``"rank_independent"``.

    Example:
        >>> cfg = Config(width=8, rank=4, method="ours")
        >>> cfg.frozen_depth, cfg.seed
        (2, 123)
    """

    width: int = 16
    target_depth: int = 1
    frozen_depth: int = 2
    rank: int = 1
    use_bias: int = 1
    activation: str = "relu"
    std: float = 0.25
    method: str = "sgd"
    batch_size: int = 256
    n_epochs: int = 5000
    lr: float = 1e-3
    n_test: int = 5000
    weight_decay: float = 0.01
    init_mode: str = "default"
    pretrained: int = 0
    pretrained_epochs: int = 1000
    pretrained_lr: float = 1e-3
    pretrained_level: float = 3
    tune_bias: int = 1
    last_layers: int = 1
    seed: int = 123
    rank_step: int = 0
    n_head: int = 2
    seq_length: int = 10
    exp: str = "fnn"
    wandb: int = 0
    draw_order: str = "paper"


@dataclass
class Result:
    """What one run produced. Losses are MSE over all output entries (Chapter 4).

    Attributes:
        config: the configuration that ran.
        singular_values: ``σ(E_i)`` per block (FNN) or per adapted product pair (TFN 'ours').
        validation_loss: MSE on one fresh batch after training ('sgd'/'flt'); ``None`` for 'ours'.
        test_loss: MSE on ``n_test`` fresh inputs.
        pretrain_stop: the step where pretraining stopped, or ``None``.
        trainable: the number of trained (or, for 'ours', constructed LoRA) parameters.

    Example:
        >>> r = run_experiment(Config(width=4, rank=2, method="ours", n_test=100), progress=False, log=lambda *a: None)
        >>> r.validation_loss is None, r.test_loss < 1e-8
        (True, True)
    """

    config: Config
    singular_values: list[list[float]]
    validation_loss: float | None
    test_loss: float
    pretrain_stop: int | None
    trainable: int

    def to_json(self) -> dict:
        """A JSON-serialisable dict (one line of a :func:`run_grid` results file)."""
        return {
            "config": dataclasses.asdict(self.config),
            "singular_values": self.singular_values,
            "validation_loss": self.validation_loss,
            "test_loss": self.test_loss,
            "pretrain_stop": self.pretrain_stop,
            "trainable": self.trainable,
        }


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the problem and the fix if ``cfg`` cannot run (Chapter 4).

    Example:
        >>> validate(Config(rank=0))
        Traceback (most recent call last):
        ...
        ValueError: rank=0: the LoRA rank must be in 1..width=16
    """
    if cfg.exp not in ("fnn", "tfn"):
        raise ValueError(f"exp={cfg.exp!r} is unknown: use 'fnn' or 'tfn'")
    if cfg.method not in ("ours", "sgd", "flt"):
        raise ValueError(f"method={cfg.method!r} is unknown: use 'ours', 'sgd' or 'flt'")
    if cfg.width < 1:
        raise ValueError(f"width={cfg.width} must be >= 1")
    if not 1 <= cfg.rank <= cfg.width:
        raise ValueError(f"rank={cfg.rank}: the LoRA rank must be in 1..width={cfg.width}")
    if cfg.target_depth < 1:
        raise ValueError(f"target_depth={cfg.target_depth} must be >= 1")
    if cfg.std < 0:
        raise ValueError(f"std={cfg.std} must be >= 0 (the std of the LoRA factor A)")
    if cfg.batch_size < 1 or cfg.n_test < 1 or cfg.n_epochs < 1:
        raise ValueError("batch_size, n_test and n_epochs must all be >= 1")
    if cfg.method != "ours" and (cfg.lr <= 0 or cfg.weight_decay < 0):
        raise ValueError(f"lr={cfg.lr} must be > 0 and weight_decay={cfg.weight_decay} >= 0")
    if cfg.init_mode not in ("default", "uniform_singular_values"):
        raise ValueError(f"init_mode={cfg.init_mode!r} is unknown: use 'default' or 'uniform_singular_values'")
    if cfg.pretrained and (cfg.pretrained_level <= 1 or cfg.pretrained_epochs < 1 or cfg.pretrained_lr <= 0):
        raise ValueError("pretraining needs pretrained_level > 1, pretrained_epochs >= 1 and pretrained_lr > 0")
    if cfg.method == "ours" and cfg.rank_step != 0:
        raise ValueError("'ours' uses the same rank in every layer: set --rank_step 0")
    if cfg.exp == "tfn":
        if cfg.init_mode != "default":
            raise ValueError(
                "init_mode='uniform_singular_values' is defined for FNNs only (a transformer has no single error "
                "matrix per layer to overwrite): use --init_mode default with --exp tfn"
            )
        if cfg.method == "flt":
            raise ValueError("final-layer tuning ('flt') is defined for FNNs only: use --exp fnn or --method sgd")
        if cfg.n_head < 1 or cfg.seq_length < 1:
            raise ValueError(f"n_head={cfg.n_head} and seq_length={cfg.seq_length} must be >= 1")
        if cfg.rank_step != 0:
            raise ValueError("rank_step applies to FNNs only: set --rank_step 0 with --exp tfn")
        if cfg.draw_order not in ("paper", "rank_independent"):
            raise ValueError(f"draw_order={cfg.draw_order!r} is unknown: use 'paper' or 'rank_independent'")
        return
    if cfg.activation not in ("relu", "linear"):
        raise ValueError(f"activation={cfg.activation!r} is unknown: use 'relu' or 'linear'")
    if cfg.frozen_depth < cfg.target_depth:
        raise ValueError(
            f"frozen_depth={cfg.frozen_depth} < target_depth={cfg.target_depth}: every target layer needs at "
            "least one frozen layer; choose frozen_depth >= target_depth"
        )
    M = cfg.frozen_depth // cfg.target_depth
    if cfg.method == "ours" and cfg.activation == "relu" and not cfg.use_bias and cfg.frozen_depth > cfg.target_depth:
        raise ValueError(
            "'ours' with ReLU needs biases to make the intermediate ReLUs act linearly: "
            "use --use_bias 1, --activation linear, or frozen_depth == target_depth"
        )
    if cfg.method == "ours" and cfg.init_mode == "uniform_singular_values" and cfg.frozen_depth % cfg.target_depth:
        raise ValueError(
            f"uniform_singular_values with 'ours' needs frozen_depth to be a multiple of target_depth (got "
            f"{cfg.frozen_depth} and {cfg.target_depth}, M={M}): the error spectrum is set per block of M layers"
        )
    if cfg.method == "flt" and not 1 <= cfg.last_layers <= cfg.frozen_depth:
        raise ValueError(f"last_layers={cfg.last_layers} must be in 1..frozen_depth={cfg.frozen_depth}")


def format_mse(value: float, floor: float = 1e-12) -> str:
    """An MSE for printing: 4 significant digits, or ``"<1e-12"`` below ``floor`` (Chapter 4).

    Below ``floor`` the digits are floating-point rounding, which changes with the BLAS code path;
    printing them would make stored notebook outputs irreproducible.

    Example:
        >>> format_mse(0.034271), format_mse(3e-25)
        ('0.03427', '<1e-12')
    """
    return f"<{floor:g}" if value < floor else f"{value:.4g}"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_pair(cfg: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(target, frozen)`` of ``cfg``'s family, drawn from ``cfg.seed`` (Chapter 4).

    Example:
        >>> target, frozen = make_pair(Config(width=4, rank=2))
        >>> len(frozen.layers), len(target.layers)
        (2, 1)
    """
    torch.manual_seed(cfg.seed)
    if cfg.exp == "fnn":
        return make_fnn_pair(
            cfg.width, cfg.target_depth, cfg.frozen_depth, cfg.rank, use_bias=bool(cfg.use_bias),
            activation=cfg.activation, std=cfg.std, init_mode=cfg.init_mode, rank_step=cfg.rank_step, seed=cfg.seed,
        )
    return make_tfn_pair(cfg.width, cfg.target_depth, cfg.rank, n_head=cfg.n_head, std=cfg.std, seed=cfg.seed,
                         draw_order=cfg.draw_order)  # type: ignore[arg-type]


def run_experiment(cfg: Config, *, progress: bool = True, log: Callable[..., None] = print) -> Result:
    """Run one configuration and return its :class:`Result` (see the module doc for the random streams) (Chapter 4).

    Args:
        cfg: the configuration (checked with :func:`validate` first).
        progress: show progress bars for pretraining and training.
        log: where progress messages go (``print``; pass ``lambda *a: None`` to silence).

    Example:
        >>> r = run_experiment(Config(width=8, rank=4, method="ours", n_test=500), progress=False, log=lambda *a: None)
        >>> r.test_loss < 1e-8
        True
    """
    validate(cfg)
    D = cfg.width
    target, frozen = make_pair(cfg)
    stop = None
    if cfg.pretrained:
        log("Pretraining...")
        stop = pretrain(
            frozen, target, width=D, epochs=cfg.pretrained_epochs, lr=cfg.pretrained_lr, level=cfg.pretrained_level,
            batch_size=cfg.batch_size, generator=_gen(cfg.seed + 1), seq_length=cfg.seq_length, progress=progress,
        )
        log(f"Pretraining finished at epoch {stop}.")
    validation = None
    if cfg.method == "ours":
        # The construction is a statement about exact arithmetic; it is computed and evaluated in float64.
        target, frozen = target.double(), frozen.double()
        if cfg.exp == "fnn":
            calib = sample_inputs(frozen, cfg.batch_size, D, _gen(cfg.seed + 3)).double()
            spectra = adapt_ours_fnn(frozen, target, cfg.rank, calib)
        else:
            spectra = adapt_ours_tfn(frozen, target, cfg.rank)
        trainable = sum(m.A.numel() + m.B.numel() for m in frozen.modules() if hasattr(m, "A") and hasattr(m, "B"))
    else:
        spectra = _error_spectra(frozen, target, cfg)
        params = trainable_parameters(frozen, cfg.method, tune_bias=bool(cfg.tune_bias), last_layers=cfg.last_layers)
        trainable = sum(p.numel() for p in params)
        gen = _gen(cfg.seed + 2)
        train_adapter(
            frozen, target, params, width=D, n_epochs=cfg.n_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size, generator=gen, seq_length=cfg.seq_length, progress=progress,
        )
        validation = mse(frozen, target, sample_inputs(frozen, cfg.batch_size, D, gen, cfg.seq_length))
    X_test = sample_inputs(frozen, cfg.n_test, D, _gen(cfg.seed + 4), cfg.seq_length)
    X_test = X_test.to(next(frozen.parameters()).dtype)
    test = mse(frozen, target, X_test)
    return Result(cfg, [[float(s) for s in S] for S in spectra], validation, test, stop, trainable)


def _error_spectra(frozen: torch.nn.Module, target: torch.nn.Module, cfg: Config) -> list[torch.Tensor]:
    """σ(E_i) of each FNN block (TFN: of each attention product pair and the output pair)."""
    from .construct import chain_product
    from .models import block_sizes

    if cfg.exp == "fnn":
        out, start = [], 0
        W = [lin.weight for lin in frozen.base_linears()]
        for i, m in enumerate(block_sizes(cfg.target_depth, cfg.frozen_depth)):
            out.append(torch.linalg.svdvals(target.layers[i].weight.double() - chain_product(W[start : start + m])))
            start += m
        return out
    return []


def format_settings(cfg: Config) -> str:
    """The settings block the paper's script prints first (``Experiment Setting:`` then ``| flag: value``) (Chapter 4).

    Example:
        >>> format_settings(Config(lr=1e-4)).splitlines()[11]
        '| lr: 0.0001'
    """
    return "\n".join(["Experiment Setting:"] + [f"| {k}: {v:g}" if isinstance(v, float) else f"| {k}: {v}"
                                           for k, v in dataclasses.asdict(cfg).items()])


def format_report(res: Result) -> str:
    """The report of the paper's ``run_exp.py``: settings block, singular values, losses (Chapter 4).

    Example:
        >>> r = Result(Config(), [[0.5, 0.25]], None, 0.0329, None, 0)
        >>> format_report(r).splitlines()[-1]
        'Test loss: 0.0329'
    """
    lines = [format_settings(res.config)]
    for S in res.singular_values:
        values = "Singular values: tensor([" + ", ".join(f"{s:.4f}" for s in S) + "])"
        lines.append(textwrap.fill(values, width=88, subsequent_indent=" " * 25))
    if res.validation_loss is not None:
        lines.append(f"Validation loss: {res.validation_loss:.4g}")
    lines.append(f"Test loss: {res.test_loss:.4g}")
    return "\n".join(lines)


LRS = (1e-2, 1e-3, 1e-4)
WDS = (0.0, 1e-4, 1e-3, 1e-2)
FAMILIES = ("linear", "relu", "flt", "tfn")


def grid(family: str, *, width: int = 16, seeds: tuple[int, ...] = (0, 1, 2, 3, 4), n_epochs: int = 5000) -> Iterator[Config]:
    """The paper's configuration grid for one family (``linear``, ``relu``, ``flt``, ``tfn``) (Chapter 4).

    Follows the grid behind the paper's figures (``init_mode=default``, std 0.25,
    batch 256, 5000 steps, n_test 5000, 'sgd'/'flt' over lr ∈ {1e-2,1e-3,1e-4} × wd ∈
    {0,1e-4,1e-3,1e-2}, ranks 1..D, random and pretrained frozen models, 5 seeds).

    Example:
        >>> sum(1 for _ in grid("linear", seeds=(0,)))
        416
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown: use one of {FAMILIES}")
    base = dict(width=width, n_epochs=n_epochs, std=0.25)
    for seed in seeds:
        for pre in (0, 1):
            common = dict(base, seed=seed, pretrained=pre)
            if family == "linear":
                shapes = [dict(target_depth=1, frozen_depth=2, use_bias=0, activation="linear")]
            elif family == "relu":
                shapes = [dict(target_depth=a, frozen_depth=b, use_bias=1, activation="relu", tune_bias=tb)
                          for a, b in ((1, 2), (2, 4)) for tb in (1, 0)]
            elif family == "tfn":
                shapes = [dict(exp="tfn", target_depth=d, frozen_depth=d) for d in (1, 2)]
            else:
                shapes = [dict(target_depth=1, frozen_depth=8, use_bias=1, activation="relu")]
            for shape in shapes:
                if family == "flt":
                    for k in range(1, 8):
                        for lr in LRS:
                            for wd in WDS:
                                yield Config(**common, **shape, method="flt", last_layers=k, lr=lr, weight_decay=wd)
                for rank in range(1, width + 1):
                    for lr in LRS:
                        for wd in WDS:
                            yield Config(**common, **shape, rank=rank, method="sgd", lr=lr, weight_decay=wd)
                    if family != "flt" and shape.get("tune_bias", 1) == 1:
                        yield Config(**common, **shape, rank=rank, method="ours")


def _key(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def run_grid(configs: list[Config], results: str | Path, *, limit: int | None = None, progress: bool = True) -> int:
    """Run ``configs``, appending one JSON line per run to ``results``; runs already there are skipped (Chapter 4).

    Args:
        configs: the runs, e.g. ``list(grid("linear"))``.
        results: the JSON-lines file (created with its folder if missing); interrupt and rerun to resume.
        limit: run at most this many new configurations.
        progress: show a progress bar over the runs.

    Returns:
        How many runs were executed now.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
        >>> cfgs = [Config(width=4, rank=1, method="ours", n_test=10)]
        >>> run_grid(cfgs, path, progress=False), run_grid(cfgs, path, progress=False)
        (1, 0)
    """
    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    done = {_key(Config(**json.loads(line)["config"])) for line in lines}
    todo = [c for c in configs if _key(c) not in done][: limit if limit is not None else None]
    from tqdm.auto import tqdm

    for cfg in tqdm(todo, desc="grid", disable=not progress):
        res = run_experiment(cfg, progress=False, log=lambda *a: None)
        lines.append(json.dumps(res.to_json()))
        text = "\n".join(lines) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))  # the file always holds whole runs only
    return len(todo)


def summarize(rows: list[dict], x: str = "rank") -> dict[tuple, float]:
    """The paper's aggregation: per (setting, x, seed) the run with the lowest validation loss, then the median over seeds (Chapter 4).

    Args:
        rows: dicts as written by :func:`run_grid` (``{"config": …, "test_loss": …}``).
        x: the swept field (``"rank"`` or ``"last_layers"``).

    Returns:
        ``{(exp, method, target_depth, frozen_depth, pretrained, tune_bias, x_value): median test MSE}``.

    Example:
        >>> rows = [{"config": dataclasses.asdict(Config(seed=s, lr=lr)), "validation_loss": v, "test_loss": t}
        ...         for s, lr, v, t in [(0, 1e-2, 1.0, 5.0), (0, 1e-3, 0.5, 3.0), (1, 1e-2, 0.2, 1.0)]]
        >>> list(summarize(rows).values())
        [2.0]
    """
    best: dict[tuple, tuple[float, float]] = {}
    for row in rows:
        c = row["config"]
        key = (c["exp"], c["method"], c["target_depth"], c["frozen_depth"], c["pretrained"], c["tune_bias"], c[x])
        val = row["validation_loss"] if row["validation_loss"] is not None else row["test_loss"]
        k = key + (c["seed"],)
        if k not in best or val < best[k][0]:
            best[k] = (val, row["test_loss"])
    groups: dict[tuple, list[float]] = {}
    for k, (_, test) in best.items():
        groups.setdefault(k[:-1], []).append(test)
    return {k: statistics.median(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
