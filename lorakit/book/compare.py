"""One fixed-budget comparison of the LoRA family on the Part II task (Chapters 11 and 12).

Every method starts from the same pretrained FashionMNIST MLP
(:func:`lorakit.book.transfer.pretrained_mlp`), adapts the same two hidden layers
(``"0"``: 784→512 and ``"2"``: 512→512; full fine-tuning and GaLore train every
parameter), sees the same mini-batches (same generator seed) for the same number of
Adam steps, and is scored once on the rotated test set. What is recorded:
trainable parameters, optimizer-state bytes, test accuracy, wall-clock seconds per step and
the numerical rank of each hidden layer's total update ``W_after − W_before``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..config import LoraConfig
from ..inject import count_parameters, inject_adapter
from ..layer import LoRALinear
from ..train import accuracy, fit
from ..variants._common import update_rank
from ..variants.adalora import AdaLoRAController, orthogonal_regularizer
from ..variants.galore import GaLoreAdamW
from ..variants.lora_plus import loraplus_param_groups
from ..variants.relora import ReLoRA
from .scaffold import optimizer_state_bytes
from .transfer import LORA_TARGETS, pretrained_mlp

__all__ = ["METHODS", "WHERE_IT_APPLIES", "VariantResult", "effective_weight", "prepare_variant", "run_variant"]

#: The methods :func:`run_variant` knows, in the order the chapter shows them (Chapter 11).
METHODS: tuple[str, ...] = (
    "frozen", "full", "lora", "lora+", "rslora", "dora", "pissa", "adalora", "relora", "galore", "qlora",
)

#: Where each method is used in practice, one line per method (Chapter 11).
WHERE_IT_APPLIES: dict[str, str] = {
    "frozen": "reference: no adaptation",
    "full": "reference: every weight and its Adam state",
    "lora": "fine-tuning; mergeable, tiny adapters",
    "lora+": "any LoRA run: only optimizer groups change",
    "rslora": "large ranks: keeps the update scale rank-independent",
    "dora": "fine-tuning where LoRA lags full FT; mergeable",
    "pissa": "fine-tuning; faster start; mergeable",
    "adalora": "fixed total budget, unknown which layers need rank",
    "relora": "(pre-)training that needs a high-rank total update",
    "galore": "full-parameter (pre-)training with small optimizer state",
    "qlora": "base too large for memory: 4-bit frozen base",
}


@dataclass
class VariantResult:
    """What :func:`run_variant` measured for one method (Chapter 11).

    Attributes:
        method: one of :data:`METHODS`.
        trainable: number of trainable parameters.
        optimizer_bytes: bytes of optimizer state after training (0 for ``"frozen"``).
        accuracy: test accuracy after the last step.
        step_seconds: mean wall-clock seconds per optimisation step (a timing: varies run to run),
            the convention of :class:`lorakit.book.scaffold.FinetuneResult`.
        steps: optimisation steps taken (0 for ``"frozen"``).
        update_ranks, update_norms: per hidden layer (``"0"``, ``"2"``), the numerical rank and
            the Frobenius norm of its total update ``W_after − W_before``.
        deltas: per hidden layer, that update, shape ``(out, in)``.
        train_loss: mean training loss of each epoch.
        notes: the method's settings, as :func:`prepare_variant` describes them.

    Example:
        >>> res = VariantResult(method="lora", trainable=10240, optimizer_bytes=81920, accuracy=0.85,
        ...                     step_seconds=0.01, steps=100, update_ranks={"0": 8, "2": 8})
        >>> res.method, res.update_ranks["0"], res.notes
        ('lora', 8, '')
    """

    method: str
    trainable: int
    optimizer_bytes: int
    accuracy: float
    step_seconds: float
    steps: int
    update_ranks: dict[str, int] = field(default_factory=dict)
    update_norms: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    train_loss: list[float] = field(default_factory=list)
    notes: str = ""


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer applies (detached): ``W`` for ``nn.Linear``, the layer's own
    :meth:`~lorakit.layer.LoRALinear.effective_weight` for any adapter layer (Chapter 11).

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> torch.equal(effective_weight(lin), lin.weight.detach())
        True
    """
    if isinstance(layer, LoRALinear):
        return layer.effective_weight().detach()
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    raise TypeError(f"expected an nn.Linear or a LoRA layer, got {type(layer).__name__}")


@dataclass(frozen=True)
class _Setup:
    """What one method's recipe needs: the model, the settings, the targets."""

    model: nn.Module
    r: int
    alpha: float | None
    lr: float
    total_steps: int
    targets: tuple[str, ...]

    def inject(self, **settings: Any) -> None:
        settings = {"r": self.r, "alpha": self.alpha, **settings}
        inject_adapter(self.model, LoraConfig(target_modules=self.targets, match="exact", **settings))

    def adam(self, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=lr or self.lr)


_Recipe = Callable[[_Setup], "tuple[torch.optim.Optimizer, Callable, str]"]
_CE = F.cross_entropy


def _frozen(s: _Setup):
    for p in s.model.parameters():
        p.requires_grad_(False)
    return torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=s.lr), _CE, "nothing trains"


def _full(s: _Setup):
    for p in s.model.parameters():
        p.requires_grad_(True)
    return s.adam(), _CE, "all parameters"


def _lora(s: _Setup):
    s.inject()
    return s.adam(), _CE, "scaling alpha/r"


def _lora_plus(s: _Setup):
    s.inject()
    return torch.optim.Adam(loraplus_param_groups(s.model, lr=s.lr, ratio=16.0)), _CE, "lr_B = 16 lr_A"


def _rslora(s: _Setup):
    s.inject(rslora=True)
    return s.adam(), _CE, "scaling alpha/sqrt(r)"


def _relora(s: _Setup):
    s.inject()
    opt = s.adam()
    every = max(s.total_steps // 5, 1)
    ReLoRA(s.model, opt, reset_every=every, warmup_steps=min(10, every - 1), prune_ratio=0.99,
           seed=int(torch.randint(2**31, ())))  # from run_variant's seeded stream: reproducible alone
    return opt, _CE, f"restart every {every} steps"


def _dora(s: _Setup):
    s.inject(variant="dora")
    return s.adam(), _CE, f"r={s.r}, magnitude per output"


def _pissa(s: _Setup):
    s.inject(variant="pissa")
    return s.adam(), _CE, "top-r singular triplets of W"


def _qlora(s: _Setup):
    s.inject(variant="qlora", variant_options={"double_quant": True})
    return s.adam(), _CE, "NF4 base (double quant) + LoRA"


def _adalora(s: _Setup):
    r0 = s.r + s.r // 2
    s.inject(variant="adalora", r=r0, alpha=float(r0))
    opt = s.adam(10 * s.lr)
    model, budget = s.model, s.r * len(s.targets)
    controller = AdaLoRAController(model, target_rank=budget, total_steps=s.total_steps,
                                   warmup_steps=s.total_steps // 10, final_steps=s.total_steps // 5)
    controller.attach(opt)
    model._adalora_controller = controller  # type: ignore[attr-defined]  # read back by run_variant

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _CE(out, y) + 0.1 * orthogonal_regularizer(model)

    return opt, loss_fn, f"lr x10; rank {r0}/layer pruned to {budget} in total"


def _galore(s: _Setup):
    # every parameter trains; the targeted 2-D weights get projected gradients.
    for p in s.model.parameters():
        p.requires_grad_(True)
    projected = [s.model.get_submodule(name).weight for name in s.targets]
    ids = {id(p) for p in projected}
    rest = [p for p in s.model.parameters() if id(p) not in ids]
    gap = max(s.total_steps // 4, 1)
    opt = GaLoreAdamW([{"params": projected, "rank": s.r}, {"params": rest}], lr=s.lr / 0.25,
                      update_proj_gap=gap, scale=0.25)
    opt.param_groups[1]["lr"] = s.lr  # the unprojected parameters take the plain step size lr
    return opt, _CE, f"rank {s.r}, projector refreshed every {gap} steps"


#: Each method's recipe; the adapter methods inject through :func:`lorakit.inject_adapter` (the registry).
_RECIPES: dict[str, _Recipe] = {
    "frozen": _frozen, "full": _full, "lora": _lora, "lora+": _lora_plus, "rslora": _rslora, "dora": _dora,
    "pissa": _pissa, "adalora": _adalora, "relora": _relora, "galore": _galore, "qlora": _qlora,
}


def prepare_variant(
    method: str, model: nn.Module, *, r: int = 8, alpha: float | None = None, lr: float = 1e-3,
    total_steps: int = 100, targets: tuple[str, ...] = LORA_TARGETS,
) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """Turn the pretrained ``model`` into ``method``'s trainable form, in place (Chapters 11 and 12).

    Settings (the papers' defaults where a small model allows): ``alpha = r`` unless given (lorakit's
    one default); LoRA+ ratio 16; rsLoRA scales by ``alpha/√r``; DoRA with the detached norm (§4.3);
    AdaLoRA starts at ``1.5 r`` per layer and prunes to an average of ``r`` (10 % warm-up, 20 % final
    phase, ``γ = 0.1``) and uses ``10 lr`` (its singular values start at 0 and Adam moves each by about
    ``lr`` per step); ReLoRA restarts 4 times (warm-up 10 steps, 99 % state pruning); GaLore rank ``r``,
    projector refreshed 4 times, ``scale = 0.25`` with ``lr / 0.25`` so the step size matches;
    QLoRA NF4 with double quantisation.

    Returns:
        ``(optimizer, loss_fn, notes)``.

    Raises:
        ValueError: unknown ``method``.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> opt, loss_fn, notes = prepare_variant("dora", model, r=2)
        >>> type(model[0]).__name__, notes
        ('DoRALinear', 'r=2, magnitude per output')
    """
    if method not in _RECIPES:
        raise ValueError(f"method={method!r} is unknown: choose one of {', '.join(METHODS)}")
    if total_steps < 10:
        raise ValueError(f"total_steps={total_steps} must be >= 10 (the schedules need room)")
    return _RECIPES[method](_Setup(model, r, alpha, lr, total_steps, tuple(targets)))


def run_variant(
    method: str,
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    r: int = 8,
    alpha: float | None = None,
    lr: float = 1e-3,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    model: nn.Module | None = None,
    progress: bool = True,
) -> VariantResult:
    """Fine-tune a fresh copy of the pretrained MLP with ``method``; measure it (Chapter 11).

    Args:
        method: one of :data:`METHODS`.
        X, y, X_test, y_test: the task (e.g. :func:`lorakit.book.transfer.downstream_task`).
        r: the rank (LoRA family) or projection rank (GaLore).
        alpha: the LoRA scale numerator (default ``r``).
        lr: Adam learning rate (LoRA+ uses it for ``A``).
        epochs, batch_size: the budget; batches come from a generator seeded with ``seed``,
            so every method sees the same batches, and the adapter init is drawn after
            ``torch.manual_seed(seed)`` (the caller's random state is restored).
        model: start from this model instead of :func:`lorakit.book.transfer.pretrained_mlp`.
        progress: show the progress bar.

    Returns:
        A :class:`VariantResult`.

    Example:
        >>> X, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        >>> res = run_variant("lora", X, y, X, y, r=2, epochs=1, batch_size=4, progress=False)
        >>> res.trainable, res.steps
        (4640, 16)
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be >= 1")
    steps_per_epoch = -(-len(X) // batch_size)
    total_steps = epochs * steps_per_epoch
    model = pretrained_mlp(progress=False) if model is None else model
    # The adapter's random init is drawn from torch's global generator seeded with `seed` (restored
    # afterwards), so two methods with the same settings start from the same A.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer, loss_fn, notes = prepare_variant(method, model, r=r, alpha=alpha, lr=lr, total_steps=total_steps)
    before = {name: effective_weight(model.get_submodule(name)).clone() for name in LORA_TARGETS}
    trainable = count_parameters(model).trainable
    history_loss: list[float] = []
    start = time.perf_counter()
    if trainable:
        history = fit(model, X, y, loss_fn=loss_fn, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                      generator=torch.Generator().manual_seed(seed), progress=progress, desc=method)
        history_loss = history.train_loss
    seconds = (time.perf_counter() - start) / total_steps if trainable else 0.0
    deltas = {name: effective_weight(model.get_submodule(name)) - before[name] for name in LORA_TARGETS}
    ranks = {name: update_rank(d) if trainable else 0 for name, d in deltas.items()}
    norms = {name: float(torch.linalg.matrix_norm(d)) for name, d in deltas.items()}
    controller = getattr(model, "_adalora_controller", None)
    if controller is not None:
        notes += f"; final ranks {controller.rank_pattern()}"
    return VariantResult(
        method=method, trainable=trainable, optimizer_bytes=optimizer_state_bytes(optimizer) if trainable else 0,
        accuracy=accuracy(model, X_test, y_test), step_seconds=seconds, steps=total_steps if trainable else 0,
        update_ranks=ranks, update_norms=norms, deltas=deltas, train_loss=history_loss, notes=notes,
    )
