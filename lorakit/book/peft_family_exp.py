"""Chapter 7's comparison under the book's protocol: PEFT methods as replicas, tuned on validation (Chapter 7).

Chapter 7 compares BitFit, adapters, prefix tuning, LoRA, full fine-tuning and training in a random
subspace on the TinyViT downstream task. Every method follows :mod:`lorakit.protocol`:

* :func:`downstream_split` — the chapter's 2,000 training images, 1,000 more images of the same
  FashionMNIST training pool as a validation part, and the 2,000 test images behind
  :meth:`~lorakit.protocol.Split.final_evaluation`;
* :func:`train_replicas` — several seeds or learning rates of one method as one computation
  (:class:`lorakit.replicas.ReplicaTrainer`, AdamW, cross-entropy, each seed its own batch order);
* :func:`tune_then_seeds` and :class:`MethodRuns` — a learning rate chosen on validation from a small
  grid with the first seed, then the other seeds at the chosen rate; test accuracies per seed only
  after the split's test part is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import protocol
from ..replicas import ReplicaTrainer, shuffled
from .tinyformer import load_task

__all__ = ["downstream_split", "train_replicas", "replica_accuracy", "MethodRuns", "tune_then_seeds"]


def downstream_split(n_train: int = 2000, n_val: int = 1000, n_test: int = 2000):
    """The Part IV task with a validation part: ``(split, X_all, y_all)`` (Chapter 7).

    The first ``n_train`` images are exactly :func:`lorakit.book.tinyformer.downstream_task`'s training
    images (the same seeded draw, taken longer); the next ``n_val`` of that draw are the validation
    part, and the test part is the task's ``n_test`` test images. Index ``X_all`` with the split.

    Example:
        >>> split, X_all, y_all = downstream_split(20, 10, 10)   # doctest: +SKIP
        >>> split, X_all.shape                                   # doctest: +SKIP
        (Split(train=20, val=10, test=10, seed=0), torch.Size([40, 784]))
    """
    X_pool, y_pool = load_task("downstream", "train", n_train + n_val, seed=0)
    X_test, y_test = load_task("downstream", "test", n_test, seed=0)
    n = n_train + n_val
    split = protocol.Split(train=torch.arange(n_train), val=torch.arange(n_train, n),
                           test=torch.arange(n, n + n_test), seed=0)
    return split, torch.cat([X_pool, X_test]), torch.cat([y_pool, y_test])


def _cross_entropy(model: Callable[[torch.Tensor], torch.Tensor], batch: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def train_replicas(
    model_fn: Callable[[int], nn.Module],
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    seeds: Sequence[int],
    lrs: float | Sequence[float],
    epochs: int = 3,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "replicas",
) -> ReplicaTrainer:
    """Train ``len(seeds)`` replicas ``model_fn(seed)`` with AdamW and cross-entropy, as one computation (Chapter 7).

    Replica ``k`` is built by ``model_fn(seeds[k])``, trained with learning rate ``lrs[k]`` (or one
    rate for all) on its seed's own batch order; replicas with the same seed share their batches.
    Each epoch is ``len(X) // batch_size`` steps (the last incomplete batch is dropped).

    Example:
        >>> def model_fn(seed):
        ...     torch.manual_seed(seed)
        ...     return nn.Linear(4, 3)
        >>> X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> trainer = train_replicas(model_fn, X, y, seeds=[0, 0, 1], lrs=[1e-2, 1e-1, 1e-2], batch_size=8)
        >>> trainer.K, trainer.step_count
        (3, 12)
    """
    if len(seeds) < 1:
        raise ValueError("seeds is empty: give one seed per replica")
    steps = epochs * (len(X) // batch_size)
    trainer = ReplicaTrainer(model_fn, len(seeds), seeds=list(seeds), lr=lrs, optimizer="adamw", chunk=3)
    trainer.fit(_cross_entropy, shuffled(X, y, batch_size=batch_size), steps, progress=progress, desc=desc)
    return trainer


def replica_accuracy(trainer: ReplicaTrainer, X: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Every replica's accuracy on ``(X, y)``, a list of ``trainer.K`` floats (Chapter 7).

    Example:
        >>> trainer = train_replicas(lambda s: nn.Linear(2, 2), torch.zeros(8, 2), torch.zeros(8, dtype=torch.long),
        ...                          seeds=[0, 1], lrs=0.1, batch_size=4)
        >>> replica_accuracy(trainer, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
        [1.0, 1.0]
    """
    def metric(model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (model(X).argmax(-1) == y).float().mean()

    return [float(a) for a in trainer.evaluate(metric, X, y)]


@dataclass
class MethodRuns:
    """One method's runs under the protocol: the learning-rate choice and the trained replicas (Chapter 7).

    Attributes:
        choice: the :class:`~lorakit.protocol.Choice` made on validation with ``seeds[0]``.
        seeds: the seeds; ``seeds[0]`` also tuned.
        lr: the chosen learning rate.
        trainable: trainable numbers per replica.
        val: validation accuracy of every seed at the chosen rate, ``{seed: acc}``.

    Example:
        >>> runs = tune_then_seeds(lambda s: nn.Linear(2, 2), [0.1, 0.3], [0, 1, 2], torch.zeros(8, 2),
        ...                        torch.zeros(8, dtype=torch.long), torch.zeros(4, 2),
        ...                        torch.zeros(4, dtype=torch.long), batch_size=4)
        >>> runs.lr, runs.trainable, sorted(runs.val)
        (0.1, 6, [0, 1, 2])
    """

    choice: protocol.Choice
    seeds: tuple[int, ...]
    lr: float
    trainable: int
    val: dict[int, float]
    _where: dict[int, tuple[ReplicaTrainer, int]] = field(default_factory=dict, repr=False)

    def test_accuracy(self, X_test: torch.Tensor, y_test: torch.Tensor) -> dict[int, float]:
        """Test accuracy of every seed at the chosen rate, ``{seed: acc}`` (call after ``final_evaluation``)."""
        out = {}
        for seed in self.seeds:
            trainer, k = self._where[seed]
            out[seed] = replica_accuracy(trainer, X_test, y_test)[k]
        return out

    def module(self, seed: int) -> nn.Module:
        """The trained model of ``seed`` at the chosen rate, as a stand-alone module."""
        trainer, k = self._where[seed]
        return trainer.module_of(k)


def tune_then_seeds(
    model_fn: Callable[[int], nn.Module],
    grid: Sequence[float],
    seeds: Sequence[int],
    X: torch.Tensor,
    y: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    split: protocol.Split | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    desc: str = "method",
) -> MethodRuns:
    """Choose the learning rate on validation with ``seeds[0]``, then train the other seeds at it (Chapter 7).

    The grid's runs are one :func:`train_replicas` computation, the other seeds another. The choice
    goes through :func:`lorakit.protocol.tune` (refused once ``split``'s test part is open).

    Returns:
        A :class:`MethodRuns`.

    Example:
        >>> X, y = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(16, dtype=torch.long)
        >>> runs = tune_then_seeds(lambda s: nn.Linear(2, 2), [1e-4, 0.1], [0, 1, 2], X, y, X, y, batch_size=4)
        >>> print(runs.choice.describe("linear", metric="val acc"))
        linear: lr ∈ {0.0001, 0.1} chosen on validation → lr=0.1 (val acc 1)
    """
    seeds = tuple(seeds)
    first = train_replicas(model_fn, X, y, seeds=[seeds[0]] * len(grid), lrs=list(grid), epochs=epochs,
                           batch_size=batch_size, desc=desc)
    val_first = replica_accuracy(first, X_val, y_val)
    choice = protocol.tune({"lr": list(grid)}, lambda s: val_first[list(grid).index(s["lr"])], split=split)
    lr = choice.best["lr"]
    where = {seeds[0]: (first, list(grid).index(lr))}
    val = {seeds[0]: val_first[where[seeds[0]][1]]}
    if len(seeds) > 1:
        rest = train_replicas(model_fn, X, y, seeds=seeds[1:], lrs=lr, epochs=epochs, batch_size=batch_size,
                              desc=desc)
        for k, (seed, acc) in enumerate(zip(seeds[1:], replica_accuracy(rest, X_val, y_val))):
            where[seed], val[seed] = (rest, k), acc
    return MethodRuns(choice, seeds, lr, int(first.params.shape[1]), val, where)
