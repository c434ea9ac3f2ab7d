"""Chapter 3's adaptation comparison under the evidence protocol, stored at full scale (Chapter 3).

The comparison of :mod:`lorakit.book.transfer`'s methods on the rotated FashionMNIST task, made
the way :mod:`lorakit.protocol` says a comparison is made:

* **one split, made once**: train on the :data:`~lorakit.book.transfer.DOWNSTREAM_N_TRAIN` rotated
  images of :func:`~lorakit.book.transfer.downstream_task`; *validate* on the other
  :data:`N_VAL` rotated training images that neither pretraining nor fine-tuning ever sees
  (:func:`validation_set`); the rotated test split is used only for the final report;
* **a declared learning-rate grid** (:data:`LR_GRID`, half-decade steps) for every method that
  trains; each method's rate is chosen on validation accuracy after the last epoch, averaged
  over the seeds (the notebook does this with :func:`lorakit.protocol.tune`);
* **5 seeds** (:data:`SEEDS`), each a fresh draw of everything random in a run: LoRA's ``A``
  init (``derive_seed(seed, "init")``) and the batch order (``derive_seed(seed, "batches")``).
  Full and last-layer tuning start from the pretrained weights, so for them only the batch
  order is random; the frozen model has nothing random (its 5 "seeds" are one number);
* **a fixed budget**: :data:`EPOCHS` epochs of Adam, batches of 64 — the curves still rise at the
  last epoch, so this compares methods at a budget, not at convergence.

One stored entry is one ``(method, r, lr, seed)`` run: its validation accuracy after every epoch
and its test accuracy after the last. :data:`ADAPTATION` is the :class:`lorakit.results.Experiment`;
the stored file ``lorakit/book/results/ch03_adaptation.jsonl`` is (re)made, under the pinned
numerics, from the repository's root by::

    make results-run EXPERIMENT=lorakit.book.adaptation:ADAPTATION
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..protocol import derive_seed
from ..results import Experiment
from ..train import accuracy
from .data import load_fashion_mnist
from .scaffold import finetune, rotate
from .storage import RESULTS_DIR, results_file
from .transfer import DOWNSTREAM_N_TRAIN, PRETRAIN_N, downstream_task, prepare_finetuning, pretrained_mlp

__all__ = [
    "EPOCHS",
    "BATCH_SIZE",
    "N_VAL",
    "LR_GRID",
    "RANKS",
    "SEEDS",
    "METHODS",
    "method_name",
    "validation_set",
    "train_run",
    "run_adaptation",
    "step_memory",
    "ADAPTATION",
    "COMMAND",
    "RESULTS_DIR",
    "results_path",
]

#: Passes over the 5,000 training images — a fixed budget, the curves still rise here (Chapter 3).
EPOCHS = 5
#: Mini-batch size of every method (Chapter 3).
BATCH_SIZE = 64
#: Validation images — the rotated training images after the fine-tuning ones (Chapter 3).
N_VAL = 60_000 - PRETRAIN_N - DOWNSTREAM_N_TRAIN
#: The declared learning-rate grid, in half-decade steps, for every method that trains (Chapter 3).
LR_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: LoRA ranks compared (``alpha = r``, on both hidden layers) (Chapter 3).
RANKS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: The seeds every method runs on (Chapter 3).
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: The methods, as ``(method, r)`` pairs of :func:`lorakit.book.transfer.prepare_finetuning` (Chapter 3).
METHODS: tuple[tuple[str, int | None], ...] = (
    ("frozen", None), ("last_layer", None), ("full", None), *(("lora", r) for r in RANKS)
)


def method_name(method: str, r: int | None = None) -> str:
    """The name the chapter prints for a method: ``"last layer"``, ``"LoRA r=8"`` (Chapter 3).

    Example:
        >>> method_name("lora", 8), method_name("last_layer"), method_name("full")
        ('LoRA r=8', 'last layer', 'full FT')
    """
    if method == "lora":
        return f"LoRA r={r}"
    return {"frozen": "frozen", "last_layer": "last layer", "full": "full FT"}[method]


@lru_cache(maxsize=1)
def _data() -> tuple[torch.Tensor, ...]:
    X, y, X_test, y_test = downstream_task()
    return (X, y, *validation_set(), X_test, y_test)


@lru_cache(maxsize=1)
def _base() -> nn.Module:
    return pretrained_mlp(progress=False)


def validation_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split: the last :data:`N_VAL` training images, rotated by 90° (Chapter 3).

    Neither pretraining (the first 50,000) nor fine-tuning (the next 5,000) uses them, and they are
    not the test split: every choice of the chapter is made on them.

    Returns:
        ``(X_val, y_val)``: ``(5000, 784)`` and ``(5000,)``.

    Example:
        >>> X_val, y_val = validation_set()
        >>> X_val.shape, y_val.shape
        (torch.Size([5000, 784]), torch.Size([5000]))
    """
    X, y = load_fashion_mnist("train")
    start = PRETRAIN_N + DOWNSTREAM_N_TRAIN
    return rotate(X[start:]), y[start:].clone()


def _model(method: str, r: int | None, seed: int) -> nn.Module:
    model = copy.deepcopy(_base())  # before seeding: the first, uncached load builds a model (draws)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))  # LoRA's A; nothing else draws here
        return prepare_finetuning(model, method, r)


def train_run(config: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Train one stored run's model and score it; return the model too (Chapter 3).

    :func:`run_adaptation` is this function without the model; the notebook uses it to re-run a
    stored entry live and keep the trained adapter.

    Args:
        config: ``{"method", "r", "lr", "seed", "epochs", "batch_size"}`` (a point of
            :data:`ADAPTATION` merged with its settings).

    Returns:
        ``(model, result)``: the fine-tuned MLP (eval mode) and :func:`run_adaptation`'s dict.

    Example:
        >>> model, out = train_run({"method": "frozen", "r": None, "lr": None, "seed": 0,
        ...                         "epochs": 5, "batch_size": 64})
        >>> round(out["test_acc"], 4), out["trainable"], out["val_acc"]
        (0.0355, 0, [0.0352])
    """
    X, y, X_val, y_val, X_test, y_test = _data()
    model = _model(config["method"], config["r"], config["seed"])
    res = finetune(
        model, X, y, X_val, y_val, epochs=config["epochs"], lr=config["lr"] or 0.0, optimizer="adam",
        batch_size=config["batch_size"], eval_every=1, progress=False,
        generator=torch.Generator().manual_seed(derive_seed(config["seed"], "batches")),
    )
    return model.eval(), {
        "val_acc": res.history.metric("accuracy"),
        "test_acc": accuracy(model, X_test, y_test),
        "trainable": res.trainable,
        "optimizer_bytes": res.optimizer_bytes,
    }


def run_adaptation(config: dict[str, Any]) -> dict[str, Any]:
    """One stored run: train ``config``'s method and score it on validation and test (Chapter 3).

    Args:
        config: ``{"method", "r", "lr", "seed", "epochs", "batch_size"}`` (a point of
            :data:`ADAPTATION` merged with its settings).

    Returns:
        ``{"val_acc": [per epoch], "test_acc": after the last epoch, "trainable", "optimizer_bytes"}``;
        the frozen model has one validation value (it does not train).

    Example:
        >>> out = run_adaptation({"method": "frozen", "r": None, "lr": None, "seed": 0,
        ...                       "epochs": 5, "batch_size": 64})
        >>> round(out["test_acc"], 4), out["trainable"]
        (0.0355, 0)
    """
    return train_run(config)[1]


def step_memory(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes one Adam training step holds, measured on tensors: weights, gradients, Adam state, activations (Chapter 3).

    * ``weights``: every parameter of ``model`` (frozen or not);
    * ``gradients``: the ``.grad`` tensors after one backward pass;
    * ``optimizer``: Adam's state after one step (two moments per trainable number, plus a step count);
    * ``activations``: the tensors autograd saves for the backward pass
      (``torch.autograd.graph.saved_tensors_hooks``; a tensor saved twice counts once; the
      input batch counts when a layer saves it; saved weights do not, they are counted as weights).

    The step is taken on a deep copy: ``model`` is unchanged.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> m = step_memory(model, torch.randn(2, 4), torch.tensor([0, 1]))
        >>> m["weights"], m["gradients"]   # (12 + 3) float32 numbers each
        (60, 60)
        >>> m["activations"]   # x (2×4), logits and log-probabilities (2×3 each), labels, a scalar
        76
    """
    from .scaffold import optimizer_state_bytes

    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    saved: dict[tuple[int, int], int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:  # a view of a batch counts its own bytes
            saved[(t.data_ptr(), t.numel() * t.element_size())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(X), y)
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    if params:
        loss.backward()
        opt.step()
    return {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": optimizer_state_bytes(opt) if opt is not None else 0,
        "activations": sum(saved.values()) if params else 0,
    }


def _grid() -> list[dict[str, Any]]:
    points = []
    for method, r in METHODS:
        for lr in (None,) if method == "frozen" else LR_GRID:
            points += [{"method": method, "r": r, "lr": lr, "seed": s} for s in SEEDS]
    return points


#: The stored comparison — 5 frozen entries + 7 methods × 5 learning rates × 5 seeds (Chapter 3).
ADAPTATION = Experiment(
    "ch03_adaptation", run_adaptation, grid=_grid(),
    settings={"epochs": EPOCHS, "batch_size": BATCH_SIZE, "optimizer": "adam", "alpha": "r",
              "targets": ["0", "2"], "n_train": DOWNSTREAM_N_TRAIN, "n_val": N_VAL},
)

#: The committed command that (re)makes the stored file, from the repository root (Chapter 3).
COMMAND = "make results-run EXPERIMENT=lorakit.book.adaptation:ADAPTATION"


#: The book's stored results, inside the package so that a wheel (Colab) carries them (Chapter 3).
def results_path() -> Path:
    """Where the stored ``ch03_adaptation.jsonl`` is: ``lorakit/book/results/`` (Chapter 3).

    Raises:
        FileNotFoundError: it is missing; the message says how to make it.

    Example:
        >>> results_path().relative_to(RESULTS_DIR.parent).as_posix()
        'results/ch03_adaptation.jsonl'
    """
    return results_file(ADAPTATION, COMMAND, "about 10 min on one core")
