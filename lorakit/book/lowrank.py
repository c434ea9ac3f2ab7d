"""Can low-rank matrices replace full-rank weights? (Chapter 2)

A re-implementation of the comparison in Julian Roth's ``mathmerizing/LoRALinear``
repository (2024) on the PyTorch quickstart MLP (784→512→512→10, ReLU), trained on
FashionMNIST. Three kinds of model, every ``nn.Linear(in, out)`` replaced the same way:

* ``"mlp"``: the full-rank baseline, ``σ(W x + b)``;
* ``"lowrank"``: :class:`LowRankLinear`, ``σ(B A x + b)`` with the source's
  rank-aware init (every entry of ``A`` and ``B`` uniform in ``±1/√r``);
* ``"ae"``: the "autoencoder" pair ``nn.Linear(in, r, bias=False)`` →
  ``nn.Linear(r, out)`` with PyTorch's default init.

Notation follows the book: ``A`` is ``r × in`` and ``B`` is ``out × r``. The source
names them the other way round (its ``A`` is ``out × r``, its ``B`` is ``r × in``).

The source's full-length sweep (100 epochs, every rank, three seeds) is the stored experiment
:data:`SOURCE_SWEEP`, made by ``make results-run EXPERIMENT=lorakit.book.lowrank:SOURCE_SWEEP``
and re-verified (its first epoch) by ``make test``. ``python -m lorakit.book.lowrank --epochs N``
still trains single-seed runs one model at a time (e.g. on a GPU: ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..io import atomic_write
from ..results import Experiment
from .scaffold import FinetuneResult, finetune
from .storage import results_file

__all__ = [
    "LAYER_SIZES",
    "SOURCE_RANKS",
    "LowRankLinear",
    "quickstart_mlp",
    "build_model",
    "expected_parameters",
    "product_variance",
    "theoretical_product_variance",
    "train_comparison_model",
    "run_comparison",
    "run_source_sweep",
    "SOURCE_SWEEP",
    "SOURCE_SWEEP_COMMAND",
    "ADAM_RUNS",
    "ADAM_RUNS_COMMAND",
    "sweep_results_path",
]

Kind = Literal["mlp", "lowrank", "ae"]

#: The (in, out) sizes of the quickstart MLP's three linear layers (Chapter 2).
LAYER_SIZES: tuple[tuple[int, int], ...] = ((784, 512), (512, 512), (512, 10))

#: The ranks of the source's sweep (``src/run.sh``) (Chapter 2).
SOURCE_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def _check_rank(r: int) -> None:
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"rank r must be an int, got {type(r).__name__}; pass e.g. r=8")
    if r < 1:
        raise ValueError(f"rank r={r} must be >= 1")


class LowRankLinear(nn.Module):
    """A linear layer whose weight is a product of two thin factors: ``y = x (B A)ᵀ + b`` (Chapter 2).

    Unlike :class:`lorakit.LoRALinear` there is no frozen ``W``: the low-rank product
    *is* the weight. The forward pass applies ``A`` first and ``B`` second, which costs
    ``r·(in + out)`` multiply-adds per example instead of ``in·out``.

    Args:
        in_features, out_features: the layer's sizes.
        r: the rank, ``>= 1``. As in the source, ``r`` may exceed ``min(in, out)``
            (the product then simply has rank ``min(in, out)`` at most).
        bias: add a bias ``b`` of shape ``(out,)``.

    Init (the source's): every entry of ``A`` (``r × in``) and ``B`` (``out × r``) is
    uniform in ``±1/√r``, the bias uniform in ``±1/√in``. An entry of ``B A`` then has
    variance ``r · (1/(3r))² = 1/(9r)``, independent of ``in``.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``.

    Example:
        >>> layer = LowRankLinear(784, 512, r=4)
        >>> layer.A.shape, layer.B.shape
        (torch.Size([4, 784]), torch.Size([512, 4]))
        >>> sum(p.numel() for p in layer.parameters()) == 4 * (784 + 512) + 512
        True
        >>> layer(torch.zeros(2, 784)).shape
        torch.Size([2, 512])
    """

    def __init__(self, in_features: int, out_features: int, r: int, bias: bool = True) -> None:
        _check_rank(r)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"sizes in={in_features}, out={out_features} must both be >= 1")
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.empty(out_features, r))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The source's rank-aware init (see the class docstring)."""
        bound = 1.0 / math.sqrt(self.r)
        with torch.no_grad():
            self.A.uniform_(-bound, bound)
            self.B.uniform_(-bound, bound)
            if self.bias is not None:
                fan_in = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-fan_in, fan_in)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``B A`` (``out × in``)."""
        return self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def replica_dense(self) -> list[tuple[str, str | None]]:
        """``forward`` as successive products, ``(weight, bias)`` names: ``A`` then ``B`` with the bias.

        :class:`lorakit.ReplicaTrainer` uses it to train replicas with its grouped-``bmm`` engine.
        """
        return [("A", None), ("B", "bias" if self.bias is not None else None)]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, bias={self.bias is not None}"


def _layer(kind: Kind, in_features: int, out_features: int, r: int | None) -> nn.Module:
    if kind == "mlp":
        return nn.Linear(in_features, out_features)
    assert r is not None
    if kind == "lowrank":
        return LowRankLinear(in_features, out_features, r)
    return nn.Sequential(nn.Linear(in_features, r, bias=False), nn.Linear(r, out_features))


def build_model(kind: Kind, r: int | None = None) -> nn.Sequential:
    """The quickstart MLP with each linear layer of the given ``kind`` (see the module docstring) (Chapter 2).

    Args:
        kind: ``"mlp"``, ``"lowrank"`` or ``"ae"``.
        r: the rank, required for ``"lowrank"`` and ``"ae"`` and refused for ``"mlp"``.

    Returns:
        ``Sequential(layer, ReLU, layer, ReLU, layer)`` mapping ``(N, 784)`` images to
        ``(N, 10)`` logits. Its parameters are drawn from torch's global generator.

    Example:
        >>> sum(p.numel() for p in build_model("ae", r=4).parameters())
        12402
    """
    if kind not in ("mlp", "lowrank", "ae"):
        raise ValueError(f"kind={kind!r} is unknown: use 'mlp', 'lowrank' or 'ae'")
    if kind == "mlp" and r is not None:
        raise ValueError("the full-rank 'mlp' has no rank: leave r=None")
    if kind != "mlp":
        if r is None:
            raise ValueError(f"kind={kind!r} needs a rank: pass e.g. r=8")
        _check_rank(r)
    (i1, o1), (i2, o2), (i3, o3) = LAYER_SIZES
    return nn.Sequential(
        _layer(kind, i1, o1, r), nn.ReLU(), _layer(kind, i2, o2, r), nn.ReLU(), _layer(kind, i3, o3, r)
    )


def quickstart_mlp() -> nn.Sequential:
    """The PyTorch quickstart network: ``Linear(784,512)–ReLU–Linear(512,512)–ReLU–Linear(512,10)`` (Chapter 2).

    Example:
        >>> sum(p.numel() for p in quickstart_mlp().parameters())
        669706
    """
    return build_model("mlp")


def expected_parameters(kind: Kind, r: int | None = None) -> int:
    """The parameter count by formula: ``Σ (in·out + out)`` or ``Σ (r·(in+out) + out)`` (Chapter 2).

    Example:
        >>> expected_parameters("mlp"), expected_parameters("lowrank", 1)
        (669706, 3876)
    """
    if kind == "mlp":
        return sum(i * o + o for i, o in LAYER_SIZES)
    if kind not in ("lowrank", "ae"):
        raise ValueError(f"kind={kind!r} is unknown: use 'mlp', 'lowrank' or 'ae'")
    if r is None:
        raise ValueError(f"kind={kind!r} needs a rank: pass e.g. r=8")
    _check_rank(r)
    return sum(r * (i + o) + o for i, o in LAYER_SIZES)


def _effective_weight(kind: Kind, in_features: int, out_features: int, r: int | None) -> torch.Tensor:
    layer = _layer(kind, in_features, out_features, r)
    if kind == "mlp":
        return layer.weight
    if kind == "lowrank":
        return layer.weight
    return layer[1].weight @ layer[0].weight


@torch.no_grad()
def product_variance(
    kind: Kind, r: int | None = None, in_features: int = 784, out_features: int = 512, draws: int = 1
) -> float:
    """The measured variance of the entries of a freshly initialised layer's effective weight (Chapter 2).

    The effective weight is ``W`` (``"mlp"``), ``B A`` (``"lowrank"``) or the product of
    the two ``nn.Linear`` weights (``"ae"``); it is drawn ``draws`` times from torch's
    global generator and the entry variance is pooled.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> round(product_variance("mlp", in_features=300, out_features=300) * 3 * 300, 1)
        1.0
    """
    if draws < 1:
        raise ValueError(f"draws={draws} must be >= 1")
    weights = torch.stack([_effective_weight(kind, in_features, out_features, r) for _ in range(draws)])
    return float(weights.double().var())


def theoretical_product_variance(kind: Kind, r: int | None = None, in_features: int = 784) -> float:
    """The entry variance of the effective weight at init, by formula (Chapter 2).

    * ``"mlp"``: ``W ~ U(±1/√in)``, variance ``1/(3·in)``;
    * ``"lowrank"``: a sum of ``r`` products of two ``U(±1/√r)`` entries, ``r·(1/(3r))² = 1/(9r)``;
    * ``"ae"``: ``r`` products of ``U(±1/√in)`` and ``U(±1/√r)`` entries, ``r·(1/(3in))·(1/(3r)) = 1/(9·in)``.

    Example:
        >>> theoretical_product_variance("lowrank", 4), theoretical_product_variance("ae", 4, 784) * 9 * 784
        (0.027777777777777776, 1.0)
    """
    if kind == "mlp":
        return 1.0 / (3 * in_features)
    if r is None:
        raise ValueError(f"kind={kind!r} needs a rank: pass e.g. r=8")
    _check_rank(r)
    if kind == "lowrank":
        return 1.0 / (9 * r)
    if kind == "ae":
        return 1.0 / (9 * in_features)
    raise ValueError(f"kind={kind!r} is unknown: use 'mlp', 'lowrank' or 'ae'")


def train_comparison_model(
    model: nn.Module, *data: torch.Tensor, epochs: int, lr: float = 1e-3, **options: object
) -> FinetuneResult:
    """Train as the source does, scoring the test accuracy after each epoch (Chapter 2).

    The source's recipe: cross-entropy, ``torch.optim.SGD(lr=1e-3)`` without momentum
    or weight decay, batches of 64 in a fixed order (its ``DataLoader`` does not
    shuffle), the test accuracy evaluated after every epoch. It is the book's one fine-tuning
    helper, :func:`lorakit.book.scaffold.finetune`, with those settings.

    Args:
        model: the model to train (all its parameters).
        data: ``X, y, X_test, y_test`` (a :class:`~lorakit.book.scaffold.Task` unpacked).
        epochs, lr: passes over ``X`` and SGD's learning rate.
        options: more :func:`~lorakit.book.scaffold.finetune` arguments (``batch_size``, ``progress``, ``desc``).

    Returns:
        A :class:`~lorakit.book.scaffold.FinetuneResult`; ``.history.metric("accuracy")`` is the
        test accuracy after each epoch.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> X, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
        >>> res = train_comparison_model(build_model("lowrank", 2), X, y, X, y, epochs=2, progress=False)
        >>> len(res.history.metric("accuracy")), res.trainable
        (2, 6718)
    """
    options = {"batch_size": 64, **options}
    return finetune(model, *data, epochs=epochs, lr=lr, optimizer="sgd", sampling="sequential", eval_every=1, **options)


def _run_name(kind: str, r: int | None) -> str:
    return kind if r is None else f"{kind}_r{r}"


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, sort_keys=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_comparison(
    runs: Sequence[tuple[Kind, int | None]],
    *,
    epochs: int,
    seed: int = 0,
    n_train: int | None = None,
    results: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict]:
    """Train each ``(kind, r)`` of ``runs`` with the source's recipe; return their results (Chapter 2).

    Every run re-seeds torch with ``seed`` before building its model, so a run's
    numbers do not depend on which runs came before it. With ``results`` set, the
    results are written there (JSON, atomically) after each run, and runs already in
    the file with the same settings are skipped: an interrupted sweep resumes.

    Args:
        runs: e.g. ``[("mlp", None), ("lowrank", 4), ("ae", 4)]``.
        epochs: passes over the training set.
        seed: the seed of every run's init.
        n_train: use only the first ``n_train`` training images (``None``: all 60,000).
        results: a JSON file to resume from and write to.
        device: ``"cpu"``, ``"cuda"``…; the data are moved there once.
        progress: progress bars.

    Returns:
        ``{name: {"kind", "r", "parameters", "accuracy": [per epoch], "step_seconds", "device"}}``
        (``step_seconds``: wall-clock seconds per optimisation step, the scaffold's one timing convention)
        with names like ``"mlp"`` and ``"lowrank_r4"``.

    Example:
        >>> out = run_comparison([("lowrank", 2)], epochs=1, n_train=640, progress=False)
        >>> out["lowrank_r2"]["parameters"], len(out["lowrank_r2"]["accuracy"])
        (6718, 1)
    """
    from .data import load_fashion_mnist
    from ..repro import seed_everything

    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    for kind, r in runs:  # validate every run before training any
        build_model(kind, r)
    settings = {"epochs": epochs, "seed": seed, "n_train": n_train, "lr": 1e-3, "batch_size": 64}
    path = Path(results) if results is not None else None
    done: dict[str, dict] = {}
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            done = stored.get("runs", {})
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    if n_train is not None:
        X, y = X[:n_train], y[:n_train]
    X, y, X_test, y_test = (t.to(device) for t in (X, y, X_test, y_test))
    outer = tqdm(runs, desc="runs", disable=not progress)
    for kind, r in outer:
        name = _run_name(kind, r)
        if name in done:
            continue
        seed_everything(seed, threads=None)
        model = build_model(kind, r).to(device)
        res = train_comparison_model(model, X, y, X_test, y_test, epochs=epochs, progress=progress, desc=name)
        done[name] = {
            "kind": kind,
            "r": r,
            "parameters": sum(p.numel() for p in model.parameters()),
            "accuracy": res.history.metric("accuracy"),
            "step_seconds": res.step_seconds,
            "device": device,
        }
        if path is not None:
            _write_json_atomic(path, {"settings": settings, "runs": done})
    return {_run_name(kind, r): done[_run_name(kind, r)] for kind, r in runs}


def run_source_sweep(config: dict) -> dict:
    """One stored point of the source's 100-epoch sweep: one ``(kind, r)``, every seed at once (Chapter 2).

    The source's protocol: cross-entropy, plain SGD (``lr`` 1e-3, no momentum, no weight decay), the
    60,000 training images in their fixed order in batches of 64 (938 a pass, the last of 32, as its
    unshuffled ``DataLoader``), the test accuracy after every pass. The seeds draw the initialisation
    only (the source has no seed and a fixed batch order); they are trained side by side as replicas
    of one model (:class:`lorakit.ReplicaTrainer`, grouped-``bmm`` engine), which equals one run per
    seed to float rounding.

    Args:
        config: ``{"kind", "r", "seeds", "epochs", "lr", "batch_size", "n_train"}`` (a point of
            :data:`SOURCE_SWEEP` merged with its settings; ``n_train`` ``None`` for all 60,000 images),
            and optionally ``"optimizer"`` (``"sgd"``, the source's, or ``"adam"``).

    Returns:
        ``{"parameters", "test_accuracy": [seed][epoch], "train_loss": [seed][epoch]}``: the fraction
        of the 10,000 test images classified right after each epoch, and the mean training loss of
        each epoch's batches.

    Example:
        >>> out = run_source_sweep({"kind": "lowrank", "r": 2, "seeds": [0], "epochs": 1, "lr": 1e-3,
        ...                         "batch_size": 64, "n_train": 640})
        >>> out["parameters"], len(out["test_accuracy"][0])
        (6718, 1)
    """
    from .data import load_fashion_mnist
    from ..replicas import ReplicaTrainer

    kind, r, seeds = config["kind"], config["r"], list(config["seeds"])
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    n_train = config.get("n_train") or len(X)
    starts = range(0, n_train, config["batch_size"])
    batches = [slice(a, min(a + config["batch_size"], n_train)) for a in starts]

    def model_fn(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(kind, r)

    def data(step: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        part = batches[step % len(batches)]
        return X[part].unsqueeze(0), y[part].unsqueeze(0)

    def correct(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (model(X).argmax(1) == y).sum()

    trainer = ReplicaTrainer(model_fn, len(seeds), seeds=seeds, lr=config["lr"],
                             optimizer=config.get("optimizer", "sgd"), data_seeds=[0] * len(seeds))
    history = trainer.fit(
        lambda model, b: F.cross_entropy(model(b[0]), b[1]), data, config["epochs"] * len(batches),
        eval_fn=lambda t, step: t.evaluate(correct, X_test, y_test), eval_every=len(batches), progress=False,
    )
    epoch_loss = history.loss.view(config["epochs"], len(batches), len(seeds)).double().mean(1)
    return {
        "parameters": expected_parameters(kind, r),
        "test_accuracy": (torch.stack([n for _, n in history.evals], 1).double() / len(y_test)).tolist(),
        "train_loss": epoch_loss.t().tolist(),
    }


#: The source's sweep — the MLP, then the low-rank and AE models at every rank of ``run.sh`` (Chapter 2).
SOURCE_SWEEP = Experiment(
    "ch02_source_sweep", run_source_sweep,
    grid=[{"kind": "mlp", "r": None}] + [{"kind": k, "r": r} for k in ("lowrank", "ae") for r in SOURCE_RANKS],
    settings={"epochs": 100, "lr": 1e-3, "batch_size": 64, "seeds": [0, 1, 2], "n_train": None},
    check={"epochs": 1},
)

#: The committed command that (re)makes the stored sweep, from the repository root (Chapter 2).
SOURCE_SWEEP_COMMAND = "make results-run EXPERIMENT=lorakit.book.lowrank:SOURCE_SWEEP WORKERS=2"

#: Chapter 2's optimizer check — three of the sweep's models, its batches and seeds, Adam at its
#: default rate 1e-3 instead of SGD, for 2 epochs (Chapter 2).
ADAM_RUNS = Experiment(
    "ch02_adam_runs", run_source_sweep,
    grid=[{"kind": "mlp", "r": None}, {"kind": "lowrank", "r": 16}, {"kind": "ae", "r": 16}],
    settings={"epochs": 2, "lr": 1e-3, "batch_size": 64, "seeds": [0, 1, 2], "n_train": None,
              "optimizer": "adam"},
    check={"epochs": 1},
)

#: The committed command that (re)makes :data:`ADAM_RUNS`'s file (about a minute) (Chapter 2).
ADAM_RUNS_COMMAND = "make results-run EXPERIMENT=lorakit.book.lowrank:ADAM_RUNS WORKERS=2"


def sweep_results_path() -> Path:
    """Where the stored sweep is: ``lorakit/book/results/ch02_source_sweep.jsonl`` (Chapter 2).

    Raises:
        FileNotFoundError: it is missing; the message says how to make it.

    Example:
        >>> sweep_results_path().name
        'ch02_source_sweep.jsonl'
    """
    return results_file(SOURCE_SWEEP, SOURCE_SWEEP_COMMAND, "about an hour on two cores")


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Command line: the source's full-length comparison (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.lowrank", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per model (source: 100)")
    parser.add_argument("--ranks", type=int, nargs="+", default=list(SOURCE_RANKS), help="ranks (source: 1..128)")
    parser.add_argument("--kinds", nargs="+", default=["mlp", "lowrank", "ae"], choices=["mlp", "lowrank", "ae"])
    parser.add_argument("--results", default="lowrank_full.json", help="JSON results file (resumable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    runs: list[tuple[Kind, int | None]] = [("mlp", None)] if "mlp" in args.kinds else []
    runs += [(kind, r) for kind in ("lowrank", "ae") if kind in args.kinds for r in args.ranks]
    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = run_comparison(runs, epochs=args.epochs, seed=args.seed, results=args.results, device=args.device)
    for name, run in out.items():
        accs = run["accuracy"]
        print(f"{name:12s} {run['parameters']:>8,} params  epoch 1: {100 * accs[0]:.4g}%  last: {100 * accs[-1]:.4g}%")
    return out


if __name__ == "__main__":
    main()
