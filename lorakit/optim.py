"""Riemannian-preconditioned optimizers for LoRA factors: scaled GD and scaled AdamW (Chapter 10).

A LoRA layer learns ``ΔW = s · B A`` with ``A`` of shape ``(r, in)``, ``B`` of
shape ``(out, r)`` and ``s = alpha / r`` (the book's convention). Scaled gradient
descent (Tong, Ma & Chi, 2021), brought to LoRA by Zhang & Pilanci (2024),
multiplies each factor's gradient by the inverse
``r × r`` Gram matrix of the *other* factor:

* ``A ← A − lr · (BᵀB + λI)⁻¹ ∇_A f``   (``BᵀB`` is ``r × r``, applied on the rank side of ``A``)
* ``B ← B − lr · ∇_B f (AAᵀ + λI)⁻¹``   (``AAᵀ`` is ``r × r``, applied on the rank side of ``B``)

``λ`` (``damping``) keeps the inverse finite. Both Gram matrices are built from the
factors *before* the step (a Jacobi update, as the source's ``SGDr``; its GPT-2 and
Mistral ``AdamWr`` build B's from the already-updated A instead). The Gram matrices
use the raw factors, as the source does, so with ``s ≠ 1`` the induced step on
``ΔW`` is ``lr · s²`` times the step for ``s = 1``.

**Pairing.** The optimizers never guess which tensor is ``A`` and which is ``B``
from parameter order. They are built from the model (or from
:func:`lorakit.lora_layers`): each :class:`~lorakit.layer.LoRALinear` becomes one
param group ``{"params": [layer.A, layer.B], "layer": name, ...}``. Anything else
(a flat parameter list, a bare tensor) is refused with a ``TypeError``.

**The B = 0 start.** LoRA starts with ``B = 0``, so ``BᵀB = 0``. Then ``∇_A f = s Bᵀ(…)``
is zero as well, so A's step is zero whatever the preconditioner. With ``λ > 0``
(default ``1e-6``) ``BᵀB + λI`` is always invertible. With ``λ = 0`` a singular Gram
matrix (not positive definite to Cholesky) is handled by ``on_singular``:
``"identity"`` (default) uses that factor's plain gradient for this step, as the
source's code falls back to the identity; ``"raise"`` raises ``ValueError`` before
any parameter changes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, Union

import torch
from torch import nn

from .inject import lora_layers
from .layer import LoRALinear

__all__ = ["ScaledGD", "ScaledAdamW", "lora_param_groups", "preconditioned_gradients", "adam_moments", "adam_direction"]

OnSingular = Literal["identity", "raise"]
#: A model with LoRA layers, or an iterable of ``LoRALinear`` / ``(name, LoRALinear)``.
LoRASource = Union[nn.Module, Iterable[Any]]


def _check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = False, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number; {fix}")
    if value < low or (strict and value == low):
        sign = ">" if strict else ">="
        raise ValueError(f"{name}={value!r} must be {sign} {low:g}; {fix}")
    return float(value)


def _check_on_singular(on_singular: Any) -> None:
    if on_singular not in ("identity", "raise"):
        raise ValueError(f"on_singular={on_singular!r} is unknown: use 'identity' or 'raise'")


def adam_moments(
    state: dict[str, Any], grad: torch.Tensor, betas: tuple[float, float], eps: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Advance Adam's moments in ``state`` by ``grad``; return ``(m, √v̂ + eps, 1 − β₁ᵗ)`` (Chapter 10).

    The one Adam update of lorakit: the step is ``p -= lr / (1 − β₁ᵗ) · m / (√v̂ + eps)``, which
    :class:`ScaledAdamW` applies to preconditioned gradients and :func:`adam_direction` returns for
    :class:`lorakit.variants.GaLoreAdamW`'s projected ones. ``state`` gains ``exp_avg`` and ``exp_avg_sq``
    (shaped like ``grad``) on first use and its ``step`` count (int or tensor) is incremented; the
    arithmetic is ``torch.optim.AdamW``'s. ``out``, a tensor shaped like ``grad``, receives the
    denominator instead of a new one (the same numbers): a caller that steps large tensors keeps it
    to avoid a fresh allocation, and its page faults, every step.

    Example:
        >>> state = {"step": 0}
        >>> m, denom, bias1 = adam_moments(state, torch.tensor([2.0]), (0.9, 0.999), 1e-8)
        >>> round(float(m / denom / bias1), 6), state["step"]   # the first step is sign(g)
        (1.0, 1)
    """
    beta1, beta2 = betas
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    state["step"] = state.get("step", 0) + 1
    t = float(state["step"])
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if out is None:
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
    else:
        denom = torch.sqrt(exp_avg_sq, out=out).div_(math.sqrt(1 - beta2**t)).add_(eps)
    return exp_avg, denom, 1 - beta1**t


def adam_direction(
    state: dict[str, Any], grad: torch.Tensor, betas: tuple[float, float], eps: float
) -> torch.Tensor:
    """:func:`adam_moments`' step direction ``m / (1 − β₁ᵗ) / (√v̂ + eps)`` as one tensor (Chapter 10).

    Example:
        >>> d = adam_direction({}, torch.tensor([2.0, -3.0]), (0.9, 0.999), 1e-8)
        >>> [round(x, 6) for x in d.tolist()]
        [1.0, -1.0]
    """
    exp_avg, denom, bias1 = adam_moments(state, grad, betas, eps)
    return (exp_avg / bias1).div_(denom)


def lora_param_groups(source: LoRASource) -> list[dict[str, Any]]:
    """One param group ``{"params": [A, B, *extras], "layer": name}`` per LoRA layer of ``source`` (Chapter 10).

    ``extras`` are the layer's other trainable adapter tensors (DoRA's magnitude ``m``, AdaLoRA's
    ``E``): the scaled optimizers precondition ``A`` and ``B`` and give the extras the plain
    (unpreconditioned) step of the same optimizer, so no adapter tensor is left untrained.

    Args:
        source: a model containing :class:`~lorakit.layer.LoRALinear` layers (a
            ``LoRALinear`` itself counts), or an iterable of ``LoRALinear`` layers or of
            ``(name, LoRALinear)`` pairs as yielded by :func:`lorakit.lora_layers`.

    Returns:
        The groups in model order; a layer listed twice appears once.

    Raises:
        TypeError: ``source`` holds something that is not a LoRA layer (e.g. plain
            parameters from ``model.parameters()``).
        ValueError: ``source`` holds no LoRA layer.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> _ = inject_lora(model, ["0", "2"], r=1, match="exact")
        >>> [(g["layer"], [tuple(p.shape) for p in g["params"]]) for g in lora_param_groups(model)]
        [('0', [(1, 4), (4, 1)]), ('2', [(1, 4), (2, 1)])]
    """
    fix = "pass the model (e.g. ScaledGD(model, lr=0.1)) or lorakit.lora_layers(model)"
    if isinstance(source, torch.Tensor):
        raise TypeError(
            f"got a {type(source).__name__}, but scaled optimizers pair each LoRA layer's A with its B "
            f"and cannot tell them apart in a bare tensor; {fix}"
        )
    if isinstance(source, nn.Module):
        items: list[tuple[str, LoRALinear]] = list(lora_layers(source))
        if not items:
            raise ValueError(
                f"the {type(source).__name__} has no LoRA layers, so there is nothing to precondition; "
                "call lorakit.inject_lora(model, targets, r) first"
            )
    else:
        try:
            entries = list(source)
        except TypeError:
            raise TypeError(f"expected a model or an iterable of LoRA layers, got {type(source).__name__}; {fix}") from None
        items = []
        for position, entry in enumerate(entries):
            if isinstance(entry, LoRALinear):
                items.append((str(position), entry))
            elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], LoRALinear):
                items.append((str(entry[0]), entry[1]))
            else:
                raise TypeError(
                    f"entry {position} is a {type(entry).__name__}, not a LoRA layer: a parameter on its own is "
                    f"not a LoRA factor the optimizer can pair (model.parameters() loses the pairing); {fix}"
                )
        if not items:
            raise ValueError(f"no LoRA layers given; {fix}")
    groups, seen = [], set()
    for name, layer in items:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        extras = [p for p in layer.trainable_extras() if p.requires_grad]
        groups.append({"params": [layer.A, layer.B, *extras], "layer": name})
    return groups


def _check_group(group: dict[str, Any]) -> None:
    params = group["params"]
    name = group.get("layer", "?")
    if len(params) < 2:
        raise ValueError(
            f"param group for layer {name!r} holds {len(params)} tensors; a scaled optimizer's group must be "
            "one LoRA layer's [A, B, *extras] — build groups with lorakit.optim.lora_param_groups(model)"
        )
    A, B = params[:2]
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"param group for layer {name!r} is not a LoRA pair: A must be (r, in) and B (out, r), got "
            f"{tuple(A.shape)} and {tuple(B.shape)}; build groups with lorakit.optim.lora_param_groups(model)"
        )
    for extra in params[2:]:
        if extra.dim() != 1 or extra.shape[0] not in (A.shape[0], B.shape[0]):
            raise ValueError(
                f"param group for layer {name!r} holds a {tuple(extra.shape)} tensor after A and B; a scaled "
                "optimizer's group is exactly one LoRA layer's [A, B] plus its 1-D adapter tensors (DoRA's m, "
                "AdaLoRA's E) — build groups with lorakit.optim.lora_param_groups(model)"
            )


def _solve_gram(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor | None:
    """``gram⁻¹ rhs`` by Cholesky, or ``None`` if ``gram`` is not positive definite."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None
    return torch.cholesky_solve(rhs, factor)


@torch.no_grad()
def preconditioned_gradients(
    A: torch.Tensor,
    B: torch.Tensor,
    grad_A: torch.Tensor | None,
    grad_B: torch.Tensor | None,
    damping: float,
    *,
    on_singular: OnSingular = "identity",
    layer: str = "?",
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scaled directions ``(BᵀB + λI)⁻¹ ∇_A`` and ``∇_B (AAᵀ + λI)⁻¹`` (Chapter 10).

    Computed in float32 (float64 stays float64) and returned in each factor's dtype.

    Args:
        A: ``(r, in)``. B: ``(out, r)``.
        grad_A: ``(r, in)`` or ``None`` (then the first result is ``None``).
        grad_B: ``(out, r)`` or ``None``.
        damping: ``λ >= 0``, added to the diagonal of both Gram matrices.
        on_singular: with a singular damped Gram matrix, ``"identity"`` returns the
            plain gradient for that factor and ``"raise"`` raises ``ValueError``.
        layer: the layer's name, for error messages.

    Example:
        >>> A, B = torch.eye(2, 3), 2 * torch.eye(4, 2)   # BᵀB = 4I, AAᵀ = I
        >>> dA, dB = preconditioned_gradients(A, B, torch.ones(2, 3), torch.ones(4, 2), 0.0)
        >>> dA[0, 0].item(), dB[0, 0].item()
        (0.25, 1.0)
    """
    dtype = torch.promote_types(A.dtype, torch.float32)
    A_, B_ = A.to(dtype), B.to(dtype)
    r = A.shape[0]
    eye = torch.eye(r, dtype=dtype, device=A.device)

    def solve(gram: torch.Tensor, rhs: torch.Tensor, which: str) -> torch.Tensor:
        result = _solve_gram(gram + damping * eye, rhs)
        if result is not None:
            return result
        if on_singular == "raise":
            raise ValueError(
                f"layer {layer!r}: the Gram matrix {which} + λI with λ={damping:g} is singular (e.g. B = 0 at "
                "LoRA's start), so the preconditioner has no inverse; use damping > 0 (e.g. 1e-6) or "
                "on_singular='identity'. No parameter was changed"
            )
        return rhs

    dA = dB = None
    if grad_A is not None:
        dA = solve(B_.T @ B_, grad_A.to(dtype), "BᵀB").to(A.dtype)
    if grad_B is not None:
        dB = solve(A_ @ A_.T, grad_B.to(dtype).T, "AAᵀ").T.to(B.dtype)
    return dA, dB


class _ScaledOptimizer(torch.optim.Optimizer):
    """Shared construction: groups from the model, validation of every group."""

    def __init__(self, source: LoRASource, defaults: dict[str, Any]) -> None:
        super().__init__(lora_param_groups(source), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("a param group must be a dict with 'params'; use lorakit.optim.lora_param_groups(model)")
        params = param_group["params"]
        param_group = dict(param_group, params=[params] if isinstance(params, torch.Tensor) else list(params))
        _check_group(param_group)
        param_group.setdefault("layer", str(len(self.param_groups)))
        self._check_hyperparameters(param_group)
        super().add_param_group(param_group)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        for key in ("lr", "damping"):
            if key in group:
                _check_number(key, group[key], strict=(key == "lr"), fix=f"set {key} per group or in the constructor")
        if "on_singular" in group:
            _check_on_singular(group["on_singular"])

    @staticmethod
    def _with_extras(group: dict[str, Any], directions: tuple) -> list[torch.Tensor | None]:
        """The directions of ``A``, ``B``, then the plain gradients of the group's extra tensors."""
        return [*directions, *(p.grad for p in group["params"][2:])]

    @staticmethod
    def _evaluate(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """``closure()``'s loss, computed with gradients (torch.optim's contract), or None."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _directions(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        # All directions first, then all updates: a "raise" leaves every parameter untouched.
        directions = []
        for group in self.param_groups:
            A, B = group["params"][:2]
            directions.append(
                preconditioned_gradients(
                    A, B, A.grad, B.grad, group["damping"], on_singular=group["on_singular"], layer=group["layer"]
                )
            )
        return directions


class ScaledGD(_ScaledOptimizer):
    """Scaled (Riemannian-preconditioned) gradient descent on LoRA factors (Chapter 10).

    One step, for each LoRA layer (``A``: ``r × in``, ``B``: ``out × r``)::

        A ← A − lr · (BᵀB + λI)⁻¹ ∇_A f
        B ← B − lr · ∇_B f (AAᵀ + λI)⁻¹

    both Gram matrices taken before the step. The trajectory of the product
    ``BA`` does not change if the factors are rescaled ``A → SA``, ``B → BS⁻¹``
    (exactly for ``λ = 0``, up to ``λ`` otherwise).

    Args:
        source: the model (its :class:`~lorakit.layer.LoRALinear` layers are found by
            :func:`lorakit.lora_layers`) or an iterable of LoRA layers; see
            :func:`lora_param_groups`.
        lr: step size ``> 0``. Being scale-free, it is of order 0.1–1 for a
            well-posed loss; the source's GPT-2 run uses 2e-2.
        damping: ``λ >= 0`` added to both Gram matrices (default ``1e-6``, the
            source's GPT-2 default).
        on_singular: what to do when a damped Gram matrix is singular (only
            possible with ``λ = 0``): ``"identity"`` — use the plain gradient for
            that factor; ``"raise"`` — raise ``ValueError`` and change nothing.

    Each layer is one param group with keys ``params`` (``[A, B]``), ``layer`` (its
    name), ``lr``, ``damping`` and ``on_singular``; per-layer values can be set there.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(6, 4))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> opt = ScaledGD(model, lr=0.5)
        >>> X = torch.randn(8, 6)
        >>> loss = model(X).pow(2).mean(); loss.backward(); opt.step()
        >>> [group["layer"] for group in opt.param_groups]
        ['0']
    """

    def __init__(
        self,
        source: LoRASource,
        lr: float = 0.1,
        *,
        damping: float = 1e-6,
        on_singular: OnSingular = "identity",
    ) -> None:
        _check_number("lr", lr, strict=True, fix="pass a positive step size such as lr=0.1")
        _check_number("damping", damping, fix="use damping >= 0, e.g. the default 1e-6")
        _check_on_singular(on_singular)
        super().__init__(source, {"lr": float(lr), "damping": float(damping), "on_singular": on_singular})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Take one scaled-GD step; return ``closure()``'s loss if a closure is given."""
        loss = self._evaluate(closure)
        for group, directions in zip(self.param_groups, self._directions()):
            for p, direction in zip(group["params"], self._with_extras(group, directions)):
                if direction is not None:
                    p.add_(direction, alpha=-group["lr"])
        return loss


class ScaledAdamW(_ScaledOptimizer):
    """AdamW fed with Riemannian-preconditioned gradients (the source's ``AdamWr``) (Chapter 10).

    For each factor ``p`` of each LoRA layer, with ``g̃`` the scaled direction
    (``g̃_A = (BᵀB + λI)⁻¹ ∇_A f``, ``g̃_B = ∇_B f (AAᵀ + λI)⁻¹``, Gram matrices
    taken before the step) and ``t`` the step count::

        p ← p · (1 − lr · weight_decay)                 # decoupled weight decay
        m ← β₁ m + (1 − β₁) g̃;   v ← β₂ v + (1 − β₂) g̃²
        p ← p − lr · (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + eps)

    This is ``torch.optim.AdamW``'s update with ``g̃`` in place of the gradient (so
    the first moment averages preconditioned gradients). Adam's elementwise
    normalisation acts on top of the preconditioner, so unlike :class:`ScaledGD`
    this optimizer is not exactly invariant to rescaling the factors.

    Args:
        source: the model or its LoRA layers; see :func:`lora_param_groups`.
        lr: step size ``> 0``.
        betas: ``(β₁, β₂)``, each in ``[0, 1)``. The defaults are torch's; the
            source's GPT-2 run used ``(0.7, 0.8)`` for scaled AdamW.
        eps: ``> 0``, added to the denominator.
        weight_decay: ``>= 0``, decoupled.
        damping: ``λ >= 0`` (default ``1e-6``). Note that a very large ``λ`` makes
            the preconditioner ``≈ I/λ``, which Adam cancels except through ``eps``.
        on_singular: as in :class:`ScaledGD`.

    The state of each factor is ``step``, ``exp_avg`` and ``exp_avg_sq`` (saved and
    restored by ``state_dict`` / ``load_state_dict``).

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(6, 4))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> opt = ScaledAdamW(model, lr=1e-3)
        >>> model(torch.randn(8, 6)).pow(2).mean().backward(); opt.step()
        >>> sorted(opt.state[model[0].A])
        ['exp_avg', 'exp_avg_sq', 'step']
    """

    def __init__(
        self,
        source: LoRASource,
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        damping: float = 1e-6,
        on_singular: OnSingular = "identity",
    ) -> None:
        _check_number("lr", lr, strict=True, fix="pass a positive step size such as lr=1e-3")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2), e.g. (0.9, 0.999)")
        for i, beta in enumerate(betas):
            _check_number(f"betas[{i}]", beta, fix="each beta must lie in [0, 1), e.g. (0.9, 0.999)")
            if beta >= 1:
                raise ValueError(f"betas[{i}]={beta!r} must be < 1; e.g. betas=(0.9, 0.999)")
        _check_number("eps", eps, strict=True, fix="use a small positive eps such as 1e-8")
        _check_number("weight_decay", weight_decay, fix="use weight_decay >= 0 (0 switches it off)")
        _check_number("damping", damping, fix="use damping >= 0, e.g. the default 1e-6")
        _check_on_singular(on_singular)
        defaults = {
            "lr": float(lr),
            "betas": (float(betas[0]), float(betas[1])),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
            "damping": float(damping),
            "on_singular": on_singular,
        }
        super().__init__(source, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Take one scaled-AdamW step; return ``closure()``'s loss if a closure is given."""
        loss = self._evaluate(closure)
        for group, directions in zip(self.param_groups, self._directions()):
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p, direction in zip(group["params"], self._with_extras(group, directions)):
                if direction is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                p.mul_(1 - lr * weight_decay)
                exp_avg, denom, bias1 = adam_moments(state, direction, group["betas"], group["eps"])
                p.addcdiv_(exp_avg, denom, value=-lr / bias1)
        return loss
