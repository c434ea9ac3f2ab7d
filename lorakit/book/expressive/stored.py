"""The paper's grid as stored results, trained on the replica engine (Chapters 4–6).

The expressive-power paper's figures aggregate thousands of runs: for every frozen model (family,
seed, random or pretrained) and every rank, the gradient method ('sgd': Adam on the LoRA factors,
and the biases where they are tuned) over 3 learning rates × 4 weight decays, and the construction
('ours') once. One configuration at a time that is a day of CPU (:func:`~.experiment.run_grid`).

Here one stored entry is one (frozen model, rank, method): its 12 learning-rate × weight-decay runs
share the frozen model and the batch stream, so they are trained as 12 replicas of one computation
(:class:`lorakit.replicas.ReplicaTrainer`, grouped-``bmm`` engine). Each replica equals one
:func:`~.experiment.run_experiment` of the same :class:`~.experiment.Config` to float32 rounding
(``tests/test_expressive_stored.py``, on short runs: over thousands of steps float32 rounding
differences can grow, and the two may end a few percent apart); the random streams are the same (models from ``seed``,
pretraining ``seed+1``, batches then the validation batch ``seed+2``, the test set ``seed+4``).

The families stored: ``linear`` (Fig. 1: ``L̄ = 1``, ``L = 2``, no biases) in
:data:`LINEAR_GRID`; the ReLU FNNs (``(L̄, L) ∈ {(1, 2), (2, 4)}``, fixed and tunable biases) in
:data:`RELU_GRID`; final-layer tuning against LoRA at ``L = 8`` in :data:`FLT_GRID`; the rank-step
runs in :data:`RANK_STEP_GRID`; the transformer at depth 1 and ranks 4, 8, 16 in :data:`TFN_SLICE`
(the whole transformer family, :data:`TFN_GRID`, is defined but not stored: about 45 CPU-hours here);
the README's transformer examples in :data:`README_TFN`.
:func:`paper_median` aggregates them as the paper does. Make one with ``make results-run EXPERIMENT=lorakit.book.expressive.stored:LINEAR_GRID``.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ...replicas import ReplicaTrainer, mse_loss, stacked
from ...results import Experiment
from ..storage import results_file
from .experiment import LRS, WDS, Config, _gen, make_pair, run_experiment
from .methods import trainable_parameters
from .models import pretrain, sample_inputs

__all__ = ["run_point", "grid_points", "results_path", "command", "flt_points", "rank_step_points", "tfn_points",
           "paper_median", "LINEAR_GRID", "RELU_GRID", "FLT_GRID", "RANK_STEP_GRID", "TFN_GRID", "TFN_SLICE", "README_TFN", "run_command",
           "SHAPES"]

#: The frozen/target shapes of each family, as :class:`~.experiment.Config` fields (Chapter 4).
SHAPES: dict[str, dict[str, Any]] = {
    "linear": dict(target_depth=1, frozen_depth=2, use_bias=0, activation="linear"),
    "relu_1_2": dict(target_depth=1, frozen_depth=2, use_bias=1, activation="relu"),
    "relu_2_4": dict(target_depth=2, frozen_depth=4, use_bias=1, activation="relu"),
    "relu_1_8": dict(target_depth=1, frozen_depth=8, use_bias=1, activation="relu"),
    # Chapter 6: the transformer (D = 16, H = 2, N = 10), frozen base drawn independently of R
    "tfn_1": dict(exp="tfn", target_depth=1, frozen_depth=1, draw_order="rank_independent"),
    "tfn_2": dict(exp="tfn", target_depth=2, frozen_depth=2, draw_order="rank_independent"),
}


def _config(config: dict, lr: float = LRS[0], weight_decay: float = WDS[0]) -> Config:
    fields = dict(SHAPES[config["shape"]], width=config["width"], n_epochs=config["n_epochs"],
                  batch_size=config["batch_size"], n_test=config["n_test"], std=config["std"],
                  seed=config["seed"], pretrained=config["pretrained"], rank=config["rank"],
                  method=config["method"], tune_bias=config["tune_bias"],
                  last_layers=config.get("last_layers", 1), rank_step=config.get("rank_step", 0),
                  lr=lr, weight_decay=weight_decay)
    return Config(**fields)


def run_point(config: dict) -> dict[str, Any]:
    """One stored entry: the construction once, or the gradient method over the lr × wd grid (Chapter 4).

    Args:
        config: the experiment's settings merged with one grid point: ``shape`` (a key of
            :data:`SHAPES`), ``seed``, ``pretrained``, ``rank``, ``method`` (``"sgd"``, ``"ours"``, or
            ``"flt"`` with ``last_layers``), ``tune_bias``, and ``width``, ``n_epochs``, ``batch_size``, ``n_test``, ``std``, ``lrs``,
            ``wds``.

    Returns:
        ``{"lr": […], "weight_decay": […], "validation_loss": […], "test_loss": […], "trainable": n}``,
        one value per replica (``validation_loss`` is ``[None]`` for the construction).

    Example:
        >>> point = dict(shape="linear", seed=0, pretrained=0, rank=2, method="sgd", tune_bias=1,
        ...              width=4, n_epochs=20, batch_size=32, n_test=100, std=0.25,
        ...              lrs=[1e-2, 1e-3], wds=[0.0])
        >>> out = run_point(point)
        >>> len(out["test_loss"]), out["trainable"]
        (2, 32)
    """
    if config["method"] == "ours":
        res = run_experiment(_config(config), progress=False, log=lambda *a: None)
        return {"lr": [None], "weight_decay": [None], "validation_loss": [None],
                "test_loss": [res.test_loss], "trainable": res.trainable}
    settings = [(lr, wd) for lr in config["lrs"] for wd in config["wds"]]
    cfg = _config(config)
    target, frozen = make_pair(cfg)
    if cfg.pretrained:
        pretrain(frozen, target, width=cfg.width, epochs=cfg.pretrained_epochs, lr=cfg.pretrained_lr,
                 level=cfg.pretrained_level, batch_size=cfg.batch_size, generator=_gen(cfg.seed + 1),
                 seq_length=cfg.seq_length, progress=False)
    params = trainable_parameters(frozen, cfg.method, tune_bias=bool(cfg.tune_bias), last_layers=cfg.last_layers)
    K = len(settings)
    # The 12 runs share the frozen model and the batch stream: one model draw, one data seed.
    trainer = ReplicaTrainer(lambda _: copy.deepcopy(frozen), K, seeds=[cfg.seed] * K,
                             lr=[lr for lr, _ in settings], weight_decay=[wd for _, wd in settings],
                             optimizer="adam", data_seeds=[cfg.seed + 2] * K)

    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        X = sample_inputs(frozen, cfg.batch_size, cfg.width, g, cfg.seq_length)
        with torch.no_grad():
            return X, target(X)

    trainer.fit(mse_loss, stacked(batch), cfg.n_epochs, record_every=cfg.n_epochs, progress=False)

    def scored(X: torch.Tensor) -> list[float]:
        with torch.no_grad():
            y = target(X)
        return trainer.evaluate(lambda model, x, t: F.mse_loss(model(x), t), X, y).tolist()

    (generator,) = trainer.generators()  # after n_epochs batches: the validation batch comes next
    validation = scored(sample_inputs(frozen, cfg.batch_size, cfg.width, generator, cfg.seq_length))
    test = scored(sample_inputs(frozen, cfg.n_test, cfg.width, _gen(cfg.seed + 4), cfg.seq_length))
    return {"lr": [lr for lr, _ in settings], "weight_decay": [wd for _, wd in settings],
            "validation_loss": validation, "test_loss": test, "trainable": sum(p.numel() for p in params)}


def grid_points(shapes: list[str], *, width: int = 16, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[dict]:
    """The grid points of :func:`~.experiment.grid` for ``shapes``, lr × wd folded into one entry (Chapter 4).

    Example:
        >>> len(grid_points(["linear"], seeds=(0,)))
        64
    """
    points = []
    for seed in seeds:
        for pretrained in (0, 1):
            for shape in shapes:
                biases = (1, 0) if SHAPES[shape]["use_bias"] else (1,)
                for tune_bias in biases:
                    for rank in range(1, width + 1):
                        base = dict(shape=shape, seed=seed, pretrained=pretrained, rank=rank, tune_bias=tune_bias)
                        points.append(dict(base, method="sgd"))
                        if tune_bias == 1:
                            points.append(dict(base, method="ours"))
    return points


def flt_points(*, width: int = 16, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[dict]:
    """The grid of the paper's LoRA-vs-final-layers figure: L̄ = 1, L = 8 (Chapter 5).

    Final-layer tuning of the last ``k`` = 1..7 layers and gradient LoRA of rank 1..16 on all 8
    layers, random and pretrained frozen models; both over the lr × wd grid.

    Example:
        >>> len(flt_points(seeds=(0,)))
        46
    """
    points = []
    for seed in seeds:
        for pretrained in (0, 1):
            base = dict(shape="relu_1_8", seed=seed, pretrained=pretrained, tune_bias=1)
            points += [dict(base, method="flt", rank=1, last_layers=k) for k in range(1, 8)]
            points += [dict(base, method="sgd", rank=R, last_layers=1) for R in range(1, width + 1)]
    return points


def rank_step_points(*, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[dict]:
    """The paper's rank-step runs: L̄ = 2, L = 4, R = 8, layer ``l`` (from 0) of rank ``8 + step·l`` (Chapter 5).

    Gradient LoRA with tunable biases, ``step`` ∈ {−2, −1, 1, 2}, random and pretrained frozen
    models. The constant-rank runs (``step`` = 0) are the ``relu_2_4``, ``R = 8`` entries of
    :data:`RELU_GRID`: the same frozen models, since an FNN's base weights are drawn before any factor.

    Example:
        >>> len(rank_step_points(seeds=(0,)))
        8
    """
    return [dict(shape="relu_2_4", seed=seed, pretrained=pretrained, rank=8, method="sgd", tune_bias=1,
                 rank_step=step)
            for seed in seeds for pretrained in (0, 1) for step in (-2, -1, 1, 2)]


def tfn_points(*, ranks=range(1, 17), depths: tuple[int, ...] = (1, 2), pretrained: tuple[int, ...] = (0, 1),
               methods: tuple[str, ...] = ("sgd", "ours"), seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[dict]:
    """The paper's transformer family (D = 16, H = 2, N = 10, L̄ = L = depth), or a slice of it (Chapter 6).

    Example:
        >>> len(tfn_points(seeds=(0,))), len(tfn_points(ranks=(8,), depths=(1,), pretrained=(0,), methods=("sgd",)))
        (128, 5)
    """
    return [dict(shape=f"tfn_{depth}", seed=seed, pretrained=pre, rank=rank, method=method, tune_bias=1)
            for seed in seeds for pre in pretrained for depth in depths for rank in ranks for method in methods]


_SETTINGS = dict(width=16, n_epochs=5000, batch_size=256, n_test=5000, std=0.25, lrs=list(LRS), wds=list(WDS))

#: Fig. 1's grid — the linear model, random and pretrained, ranks 1–16, 5 seeds (Chapter 4).
LINEAR_GRID = Experiment("ch04_linear_grid", run_point, grid=grid_points(["linear"]), settings=_SETTINGS)

#: Fig. 2's grid — the ReLU FNNs, (L̄, L) = (1, 2) and (2, 4), fixed and tunable biases (Chapter 5).
RELU_GRID = Experiment("ch05_relu_grid", run_point, grid=grid_points(["relu_1_2", "relu_2_4"]),
                       settings=_SETTINGS)

#: The LoRA-vs-final-layers grid — L̄ = 1, L = 8, by number of tunable parameters (Chapter 5).
FLT_GRID = Experiment("ch05_flt_grid", run_point, grid=flt_points(), settings=_SETTINGS)


#: The rank-step runs — layers of unequal rank around R = 8, L̄ = 2, L = 4 (Chapter 5).
RANK_STEP_GRID = Experiment("ch05_rank_step_grid", run_point, grid=rank_step_points(), settings=_SETTINGS)

#: The transformer family at the paper's protocol, not stored (about 45 CPU-hours here) (Chapter 6).
TFN_GRID = Experiment("ch06_tfn_grid", run_point, grid=tfn_points(), settings=_SETTINGS)

#: The stored slice of :data:`TFN_GRID` — gradient LoRA, depth 1, random frozen models, R ∈ {4, 8, 16}
#: (below, at and above the threshold D/2), 5 seeds, the paper's 12 settings and 5000 steps (Chapter 6).
TFN_SLICE = Experiment("ch06_tfn_slice", run_point, settings=_SETTINGS, verify_sample=1,
                       grid=tfn_points(ranks=(4, 8, 16), depths=(1,), pretrained=(0,), methods=("sgd",)))


_README_3 = ("--width 8 --target_depth 1 --rank 2 --n_head 2 --batch_size 256 --seq_length 10 --method sgd "
             "--n_epochs 800 --lr .001 --weight_decay .01 --exp tfn --wandb 0 --std 0.25 --n_test 5000")
_README_4 = _README_3 + " --pretrained 1 --pretrained_epochs 1000 --pretrained_lr .002 --pretrained_level 3"


def run_command(config: dict) -> dict[str, Any]:
    """One ``python -m lorakit.book.expressive`` run with the flags ``config["flags"]`` (Chapter 6).

    Example:
        >>> run_command({"flags": "--width 4 --rank 2 --method ours --n_test 10"})["test_loss"] < 1e-12
        True
    """
    from .cli import build_parser  # the command line's own parser, so the flags mean what they mean there

    args = vars(build_parser().parse_args(config["flags"].split()))
    res = run_experiment(Config(**{k: args[k] for k in Config.__dataclass_fields__}), progress=False,
                         log=lambda *a: None)
    return {"validation_loss": res.validation_loss, "test_loss": res.test_loss, "pretrain_stop": res.pretrain_stop}


#: The paper's README examples 3 and 4 (a D = 8 transformer, 800 steps), run with its flags (Chapter 6).
README_TFN = Experiment("ch06_readme_examples", run_command,
                        grid=[{"example": 3, "flags": _README_3}, {"example": 4, "flags": _README_4}])


def command(experiment: Experiment) -> str:
    """The committed command that (re)makes ``experiment``'s stored file, from the repository root (Chapter 4).

    Example:
        >>> command(LINEAR_GRID)
        'make results-run EXPERIMENT=lorakit.book.expressive.stored:LINEAR_GRID WORKERS=2'
    """
    name = next(k for k, v in globals().items() if v is experiment and k.isupper())
    return f"make results-run EXPERIMENT={__name__}:{name} WORKERS=2"


def results_path(experiment: Experiment) -> Path:
    """Where ``experiment``'s stored file is, in ``lorakit/book/results/`` (Chapter 4).

    Raises:
        FileNotFoundError: it is missing; the message says how to make it.

    Example:
        >>> results_path(LINEAR_GRID).name
        'ch04_linear_grid.jsonl'
    """
    return results_file(experiment, command(experiment))


def paper_median(entries, *, by: str = "rank", **match: Any) -> tuple[dict, dict]:
    """The paper's aggregation of stored entries: best validation setting per seed, median over seeds (Chapter 5).

    For each value of ``by`` (the rank, or ``last_layers`` for final-layer tuning), every matching
    entry (one seed) contributes the test MSE of its lr × wd setting with the lowest validation loss
    (the construction, which has one setting and no validation loss, its one test MSE).

    Args:
        entries: ``(point, result)`` pairs, e.g. ``results.load(...).entries``.
        by: the point field on the x axis.
        **match: point fields an entry must have, e.g. ``shape="relu_2_4", method="sgd"``.

    Returns:
        ``({x: median over seeds}, {x: {seed: value}})``, sorted by ``x`` (the second pairs methods
        by seed).

    Example:
        >>> runs = [({"rank": 1, "method": "sgd", "seed": s},
        ...          {"validation_loss": [0.2, 0.1], "test_loss": [9.0, 0.1 * s]}) for s in (1, 2, 3)]
        >>> paper_median(runs, method="sgd")[0]
        {1: 0.2}
    """
    per_x: dict[Any, dict[int, float]] = {}
    for point, result in entries:
        if any(point.get(key) != value for key, value in match.items()):
            continue
        score = result["test_loss"] if point["method"] == "ours" else result["validation_loss"]
        best = min(range(len(score)), key=score.__getitem__)
        seeds = per_x.setdefault(point[by], {})
        if point["seed"] in seeds:
            raise ValueError(f"two entries for {by}={point[by]}, seed {point['seed']}: match more fields "
                             f"than {sorted(match)}")
        seeds[point["seed"]] = result["test_loss"][best]
    per_x = dict(sorted(per_x.items()))
    return {x: statistics.median(v.values()) for x, v in per_x.items()}, per_x
