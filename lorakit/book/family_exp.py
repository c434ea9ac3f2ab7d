"""The LoRA family compared with tuned learning rates, and the rsLoRA rank sweep (Chapter 11).

Chapter 11 compares nine ways of adapting Part II's pretrained FashionMNIST MLP to the rotated
images under the book's protocol (:mod:`lorakit.protocol`): every method's learning rate is chosen
on a validation split, then the chosen setting runs on several seeds. :func:`run_family` trains one
method once; :data:`FAMILY` lists the methods and :func:`prepare_family` says how each is built;
:func:`rank_sweep` runs LoRA or rsLoRA at one rank for a grid of learning rates × seeds as one
computation (:class:`lorakit.replicas.ReplicaTrainer`).

The recipes differ from :func:`lorakit.book.compare.prepare_variant` (the untuned fixed-budget recipes,
one learning rate for all) where a tuned learning rate makes a fixed correction pointless or the paper
says otherwise:
AdaLoRA uses the learning rate as given (no ``10 lr``), GaLore its ``scale = 0.25`` without dividing
the rate by it, and ReLoRA the paper's jagged cosine schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import LoraConfig
from ..inject import count_parameters, inject_adapter
from ..protocol import derive_seed
from ..replicas import ReplicaTrainer, shuffled
from ..train import accuracy, fit
from ..variants.adalora import AdaLoRAController, orthogonal_regularizer
from ..variants.galore import GaLoreAdamW
from ..variants.relora import ReLoRA
from .compare import effective_weight, prepare_variant
from .scaffold import optimizer_state_bytes
from .transfer import LORA_TARGETS, pretrained_mlp

__all__ = ["FAMILY", "FamilyRun", "prepare_family", "run_family", "rank_sweep"]

#: The methods of Chapter 11's comparison, in the order the chapter shows them (Chapter 11).
FAMILY: tuple[str, ...] = ("full", "lora", "lora+", "rslora", "dora", "pissa", "adalora", "relora", "galore")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _adalora(model: nn.Module, r: int, lr: float, total_steps: int) -> tuple[torch.optim.Optimizer, Loss, str]:
    r0 = r + r // 2  # 1.5 r per layer, pruned to an average of r
    inject_adapter(model, LoraConfig(target_modules=LORA_TARGETS, match="exact", variant="adalora",
                                     r=r0, alpha=float(r0)))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    controller = AdaLoRAController(model, target_rank=r * len(LORA_TARGETS), total_steps=total_steps,
                                   warmup_steps=total_steps // 10, final_steps=total_steps // 5)
    controller.attach(opt)
    model._adalora_controller = controller  # type: ignore[attr-defined]  # read back by run_family

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) + 0.1 * orthogonal_regularizer(model)

    return opt, loss_fn, f"rank {r0}/layer → {r * len(LORA_TARGETS)} total"


def _relora(model: nn.Module, r: int, lr: float, total_steps: int, seed: int):
    inject_adapter(model, LoraConfig(target_modules=LORA_TARGETS, match="exact", r=r))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    every = -(-total_steps // 4)  # 4 cycles
    ReLoRA(model, opt, reset_every=every, warmup_steps=min(5, every - 1), prune_ratio=0.99, seed=seed,
           schedule="jagged_cosine", total_steps=total_steps, first_warmup_steps=10)
    return opt, F.cross_entropy, f"restart every {every} steps, jagged cosine"


def _galore(model: nn.Module, r: int, lr: float, total_steps: int):
    for p in model.parameters():
        p.requires_grad_(True)
    projected = [model.get_submodule(name).weight for name in LORA_TARGETS]
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if id(p) not in ids]
    gap = -(-total_steps // 4)  # 4 projectors
    opt = GaLoreAdamW([{"params": projected, "rank": r}, {"params": rest}], lr=lr, update_proj_gap=gap,
                      scale=0.25)
    return opt, F.cross_entropy, f"rank {r}, scale 0.25, projector every {gap} steps"


def prepare_family(
    method: str, model: nn.Module, *, r: int = 8, lr: float = 1e-3, total_steps: int = 100, seed: int = 0
) -> tuple[torch.optim.Optimizer, Loss, str]:
    """Turn the pretrained ``model`` into ``method``'s trainable form, in place (Chapter 11).

    ``full``, ``lora``, ``lora+`` (ratio 16), ``rslora``, ``dora`` (detached norm) and ``pissa`` are
    :func:`lorakit.book.compare.prepare_variant`'s recipes. ``adalora``: rank ``1.5 r`` per layer
    pruned to ``r`` per layer on average, ``γ = 0.1``, Adam at ``lr``. ``relora``: 4 cycles, 99 % state
    pruning, the paper's jagged cosine schedule (first warm-up 10 steps, re-warm-ups 5, floor 0.1),
    restarts drawn from ``seed``. ``galore``: rank ``r``, 4 projectors, ``scale = 0.25`` on the
    projected step at ``lr`` (the other parameters take ``lr`` itself).

    Returns:
        ``(optimizer, loss_fn, notes)``.

    Example:
        >>> model = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        ...                       nn.Linear(16, 10))
        >>> opt, loss_fn, notes = prepare_family("galore", model, r=2, total_steps=40)
        >>> notes
        'rank 2, scale 0.25, projector every 10 steps'
    """
    if method not in FAMILY:
        raise ValueError(f"method={method!r} is unknown: choose one of {', '.join(FAMILY)}")
    if method == "adalora":
        return _adalora(model, r, lr, total_steps)
    if method == "relora":
        return _relora(model, r, lr, total_steps, seed)
    if method == "galore":
        return _galore(model, r, lr, total_steps)
    return prepare_variant(method, model, r=r, lr=lr, total_steps=total_steps)


@dataclass
class FamilyRun:
    """One trained run of :func:`run_family` (Chapter 11).

    Attributes:
        method, lr, seed: what was run.
        model: the trained model (evaluate it on the test set only after every choice is made).
        val_accuracy: accuracy on the evaluation set given to :func:`run_family`.
        trainable: trainable parameters; ``optimizer_bytes``: the optimizer's state after training.
        step_seconds: mean wall-clock seconds per step (a timing: varies run to run).
        before: the hidden layers' weights before training (for the total update).
        notes: the recipe's settings (AdaLoRA: the final ranks appended).

    Example:
        >>> run = FamilyRun("lora", 1e-3, 0, nn.Linear(2, 2), 0.5, 6, 48, 0.01, {})
        >>> run.method, run.notes
        ('lora', '')
    """

    method: str
    lr: float
    seed: int
    model: nn.Module
    val_accuracy: float
    trainable: int
    optimizer_bytes: int
    step_seconds: float
    before: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: str = ""

    def delta(self, name: str) -> torch.Tensor:
        """The total update ``W_after − W_before`` of hidden layer ``name``, shape ``(out, in)``."""
        return effective_weight(self.model.get_submodule(name)) - self.before[name]


def run_family(
    method: str, lr: float, seed: int, X: torch.Tensor, y: torch.Tensor, X_val: torch.Tensor,
    y_val: torch.Tensor, *, r: int = 8, epochs: int = 2, batch_size: int = 64,
) -> FamilyRun:
    """Fine-tune a fresh pretrained MLP with ``method`` at ``lr`` on seed ``seed`` (Chapter 11).

    The seed is a fresh draw of everything random: the adapter's initialisation (from
    ``derive_seed(seed, "init")``), the batch order (``"batches"``) and ReLoRA's restarts
    (``"relora"``). The model is scored on ``X_val``, ``y_val`` (the validation split while tuning).

    Example:
        >>> X, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        >>> run = run_family("lora", 1e-3, 0, X, y, X, y, r=2, epochs=1, batch_size=4)
        >>> run.trainable, 0 <= run.val_accuracy <= 1
        (4640, True)
    """
    total_steps = epochs * -(-len(X) // batch_size)
    model = pretrained_mlp(progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        opt, loss_fn, notes = prepare_family(method, model, r=r, lr=lr, total_steps=total_steps,
                                             seed=derive_seed(seed, "relora"))
    before = {name: effective_weight(model.get_submodule(name)).clone() for name in LORA_TARGETS}
    start = time.perf_counter()
    fit(model, X, y, loss_fn=loss_fn, optimizer=opt, epochs=epochs, batch_size=batch_size,
        generator=torch.Generator().manual_seed(derive_seed(seed, "batches")), progress=False)
    seconds = (time.perf_counter() - start) / total_steps
    controller = getattr(model, "_adalora_controller", None)
    if controller is not None:
        notes += f"; final ranks {controller.rank_pattern()}"
    return FamilyRun(method, lr, seed, model, accuracy(model, X_val, y_val), count_parameters(model).trainable,
                     optimizer_state_bytes(opt), seconds, before, notes)


def rank_sweep(
    r: int, rslora: bool, lrs: Sequence[float], seeds: Sequence[int], X: torch.Tensor, y: torch.Tensor,
    X_val: torch.Tensor, y_val: torch.Tensor, *, alpha: float = 8.0, epochs: int = 2, batch_size: int = 64,
) -> dict[tuple[float, int], float]:
    """Validation accuracy of LoRA (``rslora=False``: ``α/r``) or rsLoRA (``α/√r``) at rank ``r`` (Chapter 11).

    Every (learning rate, seed) pair is one replica of a :class:`lorakit.replicas.ReplicaTrainer`
    (Adam), trained for ``epochs`` passes over ``X`` (the last incomplete batch of an epoch dropped);
    the seed draws the initialisation (``derive_seed(seed, "init")``) and the batch order.

    Returns:
        ``{(lr, seed): validation accuracy}``.

    Example:
        >>> X, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
        >>> acc = rank_sweep(2, True, [1e-3, 1e-2], [0, 1], X, y, X, y, epochs=1, batch_size=8)
        >>> sorted(acc) == [(1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)]
        True
    """
    pairs = [(lr, s) for lr in lrs for s in seeds]

    def model_fn(init_seed: int) -> nn.Module:
        model = pretrained_mlp(progress=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            inject_adapter(model, LoraConfig(target_modules=LORA_TARGETS, match="exact", r=r, alpha=alpha,
                                             rslora=rslora))
        return model

    trainer = ReplicaTrainer(model_fn, K=len(pairs), seeds=[derive_seed(s, "init") for _, s in pairs],
                             data_seeds=[derive_seed(s, "batches") for _, s in pairs],
                             lr=[lr for lr, _ in pairs], optimizer="adam")
    trainer.fit(lambda model, b: F.cross_entropy(model(b[0]), b[1]), shuffled(X, y, batch_size=batch_size),
                steps=epochs * (len(X) // batch_size), progress=False)
    acc = trainer.evaluate(lambda model, X_, y_: (model(X_).argmax(-1) == y_).float().mean(), X_val, y_val)
    return {pair: float(a) for pair, a in zip(pairs, acc)}
