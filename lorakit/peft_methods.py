"""The PEFT family in a few lines each: BitFit, adapter layers, prefix tuning, intrinsic dimension (Chapter 7).

LoRA itself is :func:`lorakit.inject.inject_lora`. The other members of the family that
the LoRA paper compares against :cite:`hu2021lora` are here, written for any
``nn.Module`` where possible:

* :func:`train_only`, :func:`unfreeze`, :func:`bitfit` — freeze everything, then unfreeze by name
  (BitFit trains the bias terms only);
* :class:`BottleneckAdapter`, :func:`inject_adapters` — Houlsby-style adapters: a
  small ``dim → bottleneck → dim`` MLP with a residual connection, inserted after a
  module's output (after attention's ``o_proj`` and the MLP's ``fc2``);
* :func:`add_prefix` — prefix tuning: trainable key/value vectors prepended in every
  attention layer of a :class:`lorakit.book.tinyformer.TinyViT`;
* :class:`SubspaceModel` — intrinsic dimension: train only ``z ∈ R^d`` with all
  parameters ``θ = θ₀ + P z``, ``P`` a random Fastfood projection;
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .inject import MatchMode, select_linears, swap_in

__all__ = [
    "train_only",
    "unfreeze",
    "bitfit",
    "BottleneckAdapter",
    "AdapterWrapper",
    "inject_adapters",
    "add_prefix",
    "fwht",
    "FastfoodProjection",
    "SubspaceModel",
]


def _names(names: str | Iterable[str]) -> list[str]:
    out = [names] if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in out):
        raise TypeError(f"names must be strings, got {out!r}")
    return out


def _named_parameters(model: nn.Module, names: str | Iterable[str]) -> tuple[dict[str, nn.Parameter], set[str]]:
    """All of ``model``'s parameters by name, and those that ``names`` pick (a name or its submodules).

    Raises ``ValueError`` (before anything changes) if a name matches no parameter.
    """
    wanted = _names(names)
    params = dict(model.named_parameters())
    for name in wanted:
        if not any(p == name or p.startswith(name + ".") for p in params):
            raise ValueError(
                f"{name!r} matches no parameter of the model; parameter names start with: "
                f"{sorted({p.split('.')[0] for p in params})}"
            )
    return params, {p for p in params if any(p == n or p.startswith(n + ".") for n in wanted)}


def train_only(model: nn.Module, names: str | Iterable[str] = (), *, biases: bool = False) -> int:
    """Freeze every parameter of ``model``, then unfreeze the chosen ones; return how many train (Chapter 7).

    Args:
        model: any module.
        names: module or parameter names; a parameter trains if its qualified name
            equals one of them or starts with ``name + "."`` (so ``"head"`` unfreezes
            ``head.weight`` and ``head.bias``).
        biases: also unfreeze every parameter whose name ends in ``bias`` (BitFit).

    Returns:
        The number of trainable parameters afterwards.

    Raises:
        ValueError: a name matches no parameter (nothing is changed).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> train_only(model, "1")
        10
    """
    params, named = _named_parameters(model, names)
    total = 0
    for pname, p in params.items():
        train = pname in named or (
            biases and pname.rsplit(".", 1)[-1] == "bias"
        )
        p.requires_grad_(train)
        total += p.numel() if train else 0
    return total


def unfreeze(model: nn.Module, names: str | Iterable[str]) -> int:
    """Make the named parameters trainable *in addition* to those already trainable (Chapter 7).

    Use it after :func:`lorakit.inject.inject_lora` or :func:`inject_adapters` (which
    freeze everything else) to train a new classification head too. Names match as
    in :func:`train_only`.

    Returns:
        The number of trainable parameters afterwards.

    Raises:
        ValueError: a name matches no parameter (nothing is changed).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> _ = train_only(model, "0")
        >>> unfreeze(model, "1")
        30
    """
    params, named = _named_parameters(model, names)
    for pname, p in params.items():
        if pname in named:
            p.requires_grad_(True)
    return sum(p.numel() for p in params.values() if p.requires_grad)


def bitfit(model: nn.Module, also: str | Iterable[str] = ("head",)) -> int:
    """BitFit :cite:`benzaken2021bitfit`: train only the bias terms (and ``also``, e.g. the new head) (Chapter 7).

    Returns the number of trainable parameters.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> bitfit(model, also=())
        6
    """
    return train_only(model, also, biases=True)


class BottleneckAdapter(nn.Module):
    """``h + up(gelu(down(h)))`` with ``down: dim → bottleneck`` and ``up: bottleneck → dim`` (Chapter 7).

    ``up`` starts at zero, so a fresh adapter is the identity (as LoRA's ``B = 0``).

    Shapes:
        ``(..., dim)`` → ``(..., dim)``; ``2·dim·bottleneck + dim + bottleneck`` parameters.

    Example:
        >>> adapter = BottleneckAdapter(8, 2)
        >>> h = torch.randn(3, 8)
        >>> torch.equal(adapter(h), h)
        True
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or not 1 <= bottleneck <= dim:
            raise ValueError(f"bottleneck={bottleneck!r} must be an int in 1..dim={dim}")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class AdapterWrapper(nn.Module):
    """Run ``inner`` and then a :class:`BottleneckAdapter` on its output (Chapter 7).

    :func:`inject_adapters` puts one in place of each targeted layer. A fresh wrapper
    computes exactly what ``inner`` does (the adapter's ``up`` starts at zero).

    Args:
        inner: the layer whose output is adapted.
        bottleneck: the adapter's hidden width, ``1 <= bottleneck <= inner.out_features``.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``.

    Example:
        >>> inner = nn.Linear(6, 4)
        >>> wrapped = AdapterWrapper(inner, bottleneck=2)
        >>> x = torch.randn(3, 6)
        >>> wrapped(x).shape, torch.equal(wrapped(x), inner(x))
        (torch.Size([3, 4]), True)
    """

    def __init__(self, inner: nn.Linear, bottleneck: int) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = BottleneckAdapter(inner.out_features, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.inner(x))


def inject_adapters(
    model: nn.Module, targets: str | Iterable[str], bottleneck: int, *, match: MatchMode = "suffix"
) -> list[str]:
    """Insert a bottleneck adapter after each targeted ``nn.Linear`` :cite:`houlsby2019parameter`, in place (Chapter 7).

    Only the adapters' parameters are trainable afterwards (everything else is frozen;
    unfreeze a new head with :func:`unfreeze` if you need it). Targets are matched as
    in :func:`lorakit.inject.inject_lora` and all are checked before the model changes.

    Returns:
        The qualified names of the wrapped layers, in model order.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> inject_adapters(model, "0", bottleneck=1, match="exact")
        ['0']
        >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
        13
    """
    chosen = select_linears(model, _names(targets), match)
    wrappers = {name: AdapterWrapper(layer, bottleneck) for name, layer in chosen.items()}
    return swap_in(model, wrappers, [p for w in wrappers.values() for p in w.adapter.parameters()])


def add_prefix(model: nn.Module, n_prefix: int, *, generator: torch.Generator | None = None, std: float = 1.0) -> int:
    """Prefix tuning :cite:`li2021prefix`: prepend ``n_prefix`` trainable keys and values in every attention layer (Chapter 7).

    Works on models whose attention modules have ``prefix_k``/``prefix_v`` slots
    (:class:`lorakit.book.tinyformer.Attention`). Every other parameter is frozen. The
    prefixes are drawn ``N(0, std²)`` (without Li & Liang's MLP reparameterisation).

    Returns:
        The number of prefix parameters (``2 · n_prefix · dim`` per attention layer).

    Example:
        >>> from lorakit.book.tinyformer import TinyViT, TinyViTConfig
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=2, heads=2, mlp_dim=16))
        >>> add_prefix(model, 3)
        192
    """
    if isinstance(n_prefix, bool) or not isinstance(n_prefix, int) or n_prefix < 1:
        raise ValueError(f"n_prefix={n_prefix!r} must be a positive int (the number of prefix vectors)")
    layers = [m for m in model.modules() if hasattr(m, "prefix_k") and hasattr(m, "prefix_v") and hasattr(m, "dim")]
    if not layers:
        raise TypeError(
            f"{type(model).__name__} has no attention layer with prefix_k/prefix_v slots; "
            "use lorakit.book.tinyformer.TinyViT or add such slots to your attention module"
        )
    if any(m.prefix_k is not None for m in layers):
        raise ValueError("the model already has prefixes; build a fresh model to change n_prefix")
    for p in model.parameters():
        p.requires_grad_(False)
    total = 0
    for m in layers:
        device = next(m.parameters()).device
        m.prefix_k = nn.Parameter(torch.randn(n_prefix, m.dim, generator=generator).to(device) * std)
        m.prefix_v = nn.Parameter(torch.randn(n_prefix, m.dim, generator=generator).to(device) * std)
        total += 2 * n_prefix * m.dim
    return total


# ----------------------------------------------------------------------------- intrinsic dimension


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last dimension (a power of 2) (Chapter 7).

    ``fwht(fwht(x)) == L · x`` for length ``L``; costs ``O(L log L)``.

    Example:
        >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([1., 1., 1., 1.])
    """
    L = x.shape[-1]
    if L & (L - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {L}; zero-pad the input")
    lead = x.shape[:-1]
    h = 1
    while h < L:
        y = x.reshape(*lead, L // (2 * h), 2, h)
        x = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2).reshape(*lead, L)
        h *= 2
    return x


class FastfoodProjection(nn.Module):
    """A random linear map ``R^d → R^D`` with ``O(D log D)`` cost: ``P z = S H G Π H B [z; 0]`` (Chapter 7).

    The Fastfood transform (as used by Aghajanyan et al. :cite:`aghajanyan2020intrinsic`):
    ``B`` random signs, ``H`` Walsh–Hadamard, ``Π`` a random permutation, ``G``
    Gaussian diagonal, truncated to the first ``D`` rows and scaled so each column of
    ``P`` has norm about ``sqrt(D / L)`` (``L`` = next power of two ≥ max(d, D)).
    Nothing here trains: all factors are buffers.

    Example:
        >>> P = FastfoodProjection(d=3, D=10, generator=torch.Generator().manual_seed(0))
        >>> P(torch.zeros(3)).shape
        torch.Size([10])
    """

    def __init__(self, d: int, D: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not (isinstance(d, int) and isinstance(D, int) and 1 <= d and 1 <= D):
            raise ValueError(f"d={d!r} and D={D!r} must be positive ints")
        self.d, self.D = d, D
        self.L = 1 << (max(d, D, 2) - 1).bit_length()
        self.register_buffer("signs", torch.randint(0, 2, (self.L,), generator=generator).float() * 2 - 1)
        self.register_buffer("perm", torch.randperm(self.L, generator=generator))
        gauss = torch.randn(self.L, generator=generator)
        self.register_buffer("gauss", gauss)
        self.scale = 1.0 / (math.sqrt(self.L) * float(gauss.norm()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.pad(z, (0, self.L - self.d)) * self.signs
        x = fwht(x)[self.perm] * self.gauss
        return fwht(x)[: self.D] * self.scale


class SubspaceModel(nn.Module):
    """Train ``model`` in a random ``d``-dimensional subspace of all its parameters (Chapter 7).

    The parameters become ``θ = θ₀ + P z`` with ``θ₀`` the starting parameters
    (frozen), ``P`` a :class:`FastfoodProjection` and ``z ∈ R^d`` (starting at 0) the
    only trainable tensor. Accuracy as a function of ``d`` measures the *intrinsic
    dimension* of the task :cite:`aghajanyan2020intrinsic`.

    Args:
        model: the model (its parameters are copied into ``θ₀``; it is not changed).
        d: subspace dimension.
        generator: draws ``P``.

    Shapes:
        as ``model``.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> sub = SubspaceModel(net, d=4, generator=torch.Generator().manual_seed(0))
        >>> [n for n, p in sub.named_parameters() if p.requires_grad]
        ['z']
        >>> torch.allclose(sub(torch.ones(1, 3)), net(torch.ones(1, 3)))
        True
    """

    def __init__(self, model: nn.Module, d: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d={d!r} must be a positive int (the subspace dimension)")
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        self.register_buffer("theta0", torch.cat([p.detach().reshape(-1) for _, p in named]).clone())
        self.projection = FastfoodProjection(d, len(self.theta0), generator=generator)
        self.z = nn.Parameter(torch.zeros(d))

    def parameters_now(self) -> dict[str, torch.Tensor]:
        """The current ``θ₀ + P z``, split back into the model's named parameters."""
        theta = self.theta0 + self.projection(self.z)
        chunks = theta.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.parameters_now(), (X,))
