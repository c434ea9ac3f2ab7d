"""The training loop every chapter shares (Chapter 1).

Data live in memory as tensors (the book's data sets are small), and mini-batches
are slices of them: for small models this is several times faster than a
``DataLoader``. The loop shows a ``tqdm`` progress bar (a widget in notebooks)
and returns the loss history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["History", "fit", "batch_indices", "accuracy"]

Sampling = Literal["shuffle", "sequential", "random_subsets"]


@dataclass
class History:
    """What :func:`fit` records (Chapter 1).

    Attributes:
        train_loss: mean training loss of each epoch.
        evals: one dict per evaluation, ``{"epoch": e, **metrics}``.

    Example:
        >>> h = History(train_loss=[0.9, 0.5], evals=[{"epoch": 1, "mse": 0.4}, {"epoch": 2, "mse": 0.2}])
        >>> h.metric("mse")
        [0.4, 0.2]
    """

    train_loss: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def metric(self, name: str) -> list[float]:
        """The values of one evaluated metric, in epoch order."""
        return [record[name] for record in self.evals]


def batch_indices(n: int, batch_size: int, sampling: Sampling, generator: torch.Generator | None) -> list[torch.Tensor]:
    """The index batches of one epoch over ``n`` examples (Chapter 1).

    * ``"shuffle"``: a fresh permutation cut into batches (the last may be short);
    * ``"sequential"``: ``0..n-1`` in order, cut into batches;
    * ``"random_subsets"``: ``n // batch_size`` batches, each an independent draw of
      ``batch_size`` distinct indices (R's ``sample.int(n, batch_size)`` per step).

    Example:
        >>> [batch.tolist() for batch in batch_indices(5, 2, "sequential", None)]
        [[0, 1], [2, 3], [4]]
        >>> g = torch.Generator().manual_seed(0)
        >>> sorted(torch.cat(batch_indices(5, 2, "shuffle", g)).tolist())  # each index once
        [0, 1, 2, 3, 4]
        >>> [len(batch) for batch in batch_indices(10, 4, "random_subsets", g)]  # 10 // 4 batches
        [4, 4]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if sampling == "shuffle":
        return list(torch.randperm(n, generator=generator).split(batch_size))
    if sampling == "sequential":
        return list(torch.arange(n).split(batch_size))
    if sampling == "random_subsets":
        return [torch.randperm(n, generator=generator)[:batch_size] for _ in range(max(n // batch_size, 1))]
    raise ValueError(f"sampling={sampling!r} is unknown: use 'shuffle', 'sequential' or 'random_subsets'")


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    sampling: Sampling = "shuffle",
    generator: torch.Generator | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 1,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Train ``model`` on ``(X, y)`` with mini-batches; return its :class:`History` (Chapter 1).

    If a batch's loss is NaN or Inf, training stops before that loss is back-propagated or any
    optimizer step is taken with it: a ``ValueError`` names the epoch and the batch, and the model
    keeps the parameters of the last good step.

    Args:
        model: put in train mode during the steps and in eval mode for ``evaluate``.
        X, y: the whole training set, first dimension = examples.
        loss_fn: ``loss_fn(model(X_batch), y_batch)`` → scalar.
        optimizer: already holding the parameters to train.
        epochs: passes over the data.
        batch_size, sampling, generator: see :func:`batch_indices`.
        evaluate: called every ``eval_every`` epochs (and after the last) under
            ``torch.no_grad()``; its dict is stored in ``History.evals``.
        progress: show a progress bar.
        desc: the progress bar's label.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> X, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> h = fit(model, X, y, loss_fn=nn.functional.mse_loss, optimizer=opt,
        ...         epochs=2, batch_size=16, progress=False)
        >>> len(h.train_loss)
        2
        >>> y[40] = float("nan")
        >>> fit(model, X, y, loss_fn=nn.functional.mse_loss, optimizer=opt, epochs=2, batch_size=16,
        ...     sampling="sequential", progress=False)
        Traceback (most recent call last):
            ...
        ValueError: the loss became nan at epoch 1, batch 3 of 4 (examples 32..47); training stopped before using it (no backward, no optimizer step). Check the inputs and labels of that batch, or lower the learning rate
    """
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} examples but y has {len(y)}; they must match")
    if epochs < 1 or eval_every < 1:
        raise ValueError(f"epochs={epochs} and eval_every={eval_every} must both be >= 1")
    history = History()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        batches = batch_indices(len(X), batch_size, sampling, generator)
        for number, idx in enumerate(batches, start=1):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            if not torch.isfinite(loss.detach()).all():
                bar.close()
                where = f"examples {int(idx.min())}..{int(idx.max())}" if sampling == "sequential" else f"{len(idx)} examples"
                raise ValueError(
                    f"the loss became {float(loss.detach().flatten()[0])} at epoch {epoch}, batch {number} of "
                    f"{len(batches)} ({where}); training stopped before using it (no backward, no optimizer step). "
                    "Check the inputs and labels of that batch, or lower the learning rate"
                )
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.train_loss.append(total / count)
        postfix = {"loss": f"{history.train_loss[-1]:.4g}"}
        if evaluate is not None and (epoch % eval_every == 0 or epoch == epochs):
            model.eval()
            with torch.no_grad():
                metrics = {key: float(value) for key, value in evaluate(model).items()}
            history.evals.append({"epoch": epoch, **metrics})
            postfix.update({key: f"{value:.4g}" for key, value in metrics.items()})
        bar.set_postfix(postfix, refresh=False)
    return history


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """The fraction of ``X``'s rows whose arg-max logit equals ``y`` (Chapter 2).

    The model runs in eval mode (its mode is restored afterwards) and without gradients: evaluation
    records no autograd graph.

    Args:
        model: maps ``(n, ...)`` inputs to ``(n, classes)`` logits.
        X: ``(N, ...)`` inputs; y: ``(N,)`` int labels.
        batch_size: rows per forward pass (only memory depends on it).

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)); _ = model.bias.zero_()
        >>> accuracy(model, torch.tensor([[1., 0.], [0., 1.], [1., 0.]]), torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"X has {len(X)} rows and y has {len(y)}; they must match and be non-empty")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(X), batch_size):
            logits = model(X[start : start + batch_size])
            correct += int((logits.argmax(dim=-1) == y[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(X)
