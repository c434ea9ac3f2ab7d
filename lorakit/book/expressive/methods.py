"""The three adaptation methods of the paper: 'ours' (the construction), 'sgd' (trained LoRA), 'flt' (Chapters 4–6).

* :func:`adapt_ours_fnn` / :func:`adapt_ours_tfn` write the construction's LoRA
  factors (and biases) into a frozen model — no training.
* :func:`train_adapter` trains with Adam on a fresh Gaussian batch per step, labelled
  online by the target (the paper's protocol; one step per "epoch"). It is its own
  loop rather than :func:`lorakit.fit` because the data are drawn on the fly.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ...layer import LoRALinear
from .construct import lowrank_update
from .models import FNN, TFN, block_sizes, sample_inputs

__all__ = ["adapt_ours_fnn", "adapt_ours_tfn", "train_adapter", "mse", "trainable_parameters"]


def _set_lora(layer: LoRALinear, B: torch.Tensor, A: torch.Tensor) -> None:
    """Store ``ΔW = B A`` in ``layer`` (``alpha = r``, so scaling is 1); pads/crops to the layer's rank."""
    r = layer.r
    Bp = torch.zeros(layer.out_features, r, dtype=torch.float64)
    Ap = torch.zeros(r, layer.in_features, dtype=torch.float64)
    k = min(r, B.shape[1])
    Bp[:, :k], Ap[:k] = B[:, :k], A[:k]
    with torch.no_grad():
        layer.B.copy_(Bp / layer.scaling)
        layer.A.copy_(Ap)


def _effective(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, LoRALinear):
        return layer.base.weight.detach().double() + layer.delta_weight().detach().double()
    return layer.weight.detach().double()


@torch.no_grad()
def adapt_ours_fnn(
    frozen: FNN, target: FNN, rank: int, calibration: torch.Tensor, *, margin: float = 2.0
) -> list[torch.Tensor]:
    """Apply the paper's construction to a frozen FNN, in place (Chapter 5).

    Frozen layers are grouped into ``L̄`` consecutive blocks (:func:`~lorakit.book.expressive.models.block_sizes`); block
    ``i``'s weights get :func:`~lorakit.book.expressive.construct.lowrank_update` towards
    ``W̄_i``. With biases, every layer of a block except the last gets the constant bias
    ``margin · max(0, −min Z)`` where ``Z`` is that layer's pre-activation on the
    ``calibration`` inputs, so its ReLU acts as the identity on them; the last layer's
    bias is ``b̄_i − c``, cancelling the accumulated offsets ``c``. Inputs whose
    pre-activations fall below the calibrated range break the linearisation. (The
    paper's code propagates ``Z`` roughly; we push it through the adapted network.)

    Args:
        frozen: the frozen model (LoRA layers), modified in place.
        target: the target model, ``len(target.layers) <= len(frozen.layers)``.
        rank: LoRA rank used by the construction (each layer's adapter must hold it).
        calibration: ``(n, D)`` inputs for sizing the biases.
        margin: the bias is ``margin ×`` the most negative pre-activation.

    Returns:
        The singular values of each block's error matrix ``E_i`` (one tensor per block).

    Raises:
        ValueError: ReLU without biases and blocks of more than one layer (the
            intermediate ReLUs cannot be linearised), or a layer rank below ``rank``.

    Example:
        >>> from lorakit.book.expressive.models import make_fnn_pair
        >>> t, f = make_fnn_pair(8, 1, 2, 4)
        >>> S = adapt_ours_fnn(f, t, 4, torch.randn(64, 8))
        >>> x = torch.randn(100, 8); mse(f, t, x) < 1e-8
        True
    """
    blocks = block_sizes(len(target.layers), len(frozen.layers))
    has_bias = target.layers[0].bias is not None
    if frozen.activation == "relu" and not has_bias and max(blocks) > 1:
        raise ValueError(
            "'ours' with ReLU needs biases to make the intermediate ReLUs act linearly: "
            "use use_bias=1, activation='linear', or frozen_depth == target_depth"
        )
    if any(layer.r < rank for layer in frozen.layers):
        raise ValueError("every frozen layer's adapter must have rank >= rank (rank_step must be 0 for 'ours')")
    linears = frozen.base_linears()
    spectra = []
    Z = calibration.double()
    start = 0
    for i, m in enumerate(blocks):
        idx = list(range(start, start + m))
        factors, S = lowrank_update(target.layers[i].weight, [linears[j].weight for j in idx], rank)
        spectra.append(S)
        for j, (B, A) in zip(idx, factors):
            _set_lora(frozen.layers[j], B, A)
        if has_bias:
            c = torch.zeros(Z.shape[1], dtype=torch.float64)
            for j in idx[:-1]:
                W = _effective(frozen.layers[j])
                Z = Z @ W.T
                shift = margin * max(0.0, -float(Z.min()))
                b = torch.full((Z.shape[1],), shift, dtype=torch.float64)
                Z = Z + b
                if frozen.activation == "relu":
                    Z = torch.relu(Z)
                c = W @ c + b
                linears[j].bias.copy_(b)
            W = _effective(frozen.layers[idx[-1]])
            c = W @ c
            linears[idx[-1]].bias.copy_(target.layers[i].bias.double() - c)
            Z = Z @ W.T + linears[idx[-1]].bias.double()
        else:
            for j in idx:
                Z = Z @ _effective(frozen.layers[j]).T
        if frozen.activation == "relu":
            Z = torch.relu(Z)
        start += m
    return spectra


@torch.no_grad()
def adapt_ours_tfn(frozen: TFN, target: TFN, rank: int) -> list[torch.Tensor]:
    """Apply the paper's transformer construction to a frozen TFN of the same depth, in place (Chapter 6).

    Per block ``l`` and head ``h``: the pair ``(W_Q, W_Kᵀ)`` is matched to
    ``Cᵀ W̄_Kᵀ W̄_Q C`` and the pair ``(W_V, W_O)`` to ``K W̄_O W̄_V C`` with
    :func:`~lorakit.book.expressive.construct.lowrank_update` (two adapters per product, hence
    the threshold ``R >= D/2``). Here ``C = W̄₂ W₂⁻¹`` of the previous block (``I`` for the
    first) maps adapted hidden states to the target's, and ``K = W₁⁻¹ W̄₁`` absorbs the
    unadapted first FFN weight. ``b₁ ← b̄₁``; for a non-last block ``b₂ ← W₂ W̄₂⁻¹ b̄₂``. In the last
    block the pair ``(W₂, W_o)`` is matched to ``W̄_o W̄₂`` and ``b₂ ← (W_o+ΔW_o)⁻¹ W̄_o b̄₂``.

    Returns:
        The singular values of every error matrix, in the order they were processed.

    Example:
        >>> from lorakit.book.expressive.models import make_tfn_pair
        >>> t, f = make_tfn_pair(8, 1, 4)
        >>> _ = adapt_ours_tfn(f, t, 4)
        >>> mse(f, t, torch.randn(5, 10, 8)) < 1e-8
        True
    """
    if len(frozen.blocks) != len(target.blocks):
        raise ValueError(
            f"'ours' for transformers needs the same depth: frozen has {len(frozen.blocks)} blocks, "
            f"target {len(target.blocks)}; set frozen_depth = target_depth"
        )
    D = target.out.weight.shape[0]
    C = torch.eye(D, dtype=torch.float64)
    spectra = []
    depth = len(target.blocks)
    for l, (fb, tb) in enumerate(zip(frozen.blocks, target.blocks)):
        W1, tW1 = fb.w1.weight.double(), tb.w1.weight.double()
        K = torch.linalg.solve(W1, tW1)
        for fh, th in zip(fb.heads, tb.heads):
            goal = C.T @ th.k.weight.double().T @ th.q.weight.double() @ C
            (BQ, AQ), (BK, AK) = lowrank_update(goal, [fh.q.base.weight, fh.k.base.weight.T], rank)[0]
            _set_lora(fh.q, BQ, AQ)
            _set_lora(fh.k, AK.T, BK.T)  # Δ(W_Kᵀ) = BK AK, so ΔW_K = AKᵀ BKᵀ
            spectra.append(torch.linalg.svdvals(goal - fh.k.base.weight.double().T @ fh.q.base.weight.double()))
            goal = K @ th.o.weight.double() @ th.v.weight.double() @ C
            (BV, AV), (BO, AO) = lowrank_update(goal, [fh.v.base.weight, fh.o.base.weight], rank)[0]
            _set_lora(fh.v, BV, AV)
            _set_lora(fh.o, BO, AO)
            spectra.append(torch.linalg.svdvals(goal - fh.o.base.weight.double() @ fh.v.base.weight.double()))
        fb.w1.bias.copy_(tb.w1.bias)
        tW2, tb2 = tb.w2.weight.double(), tb.w2.bias.double()
        if l < depth - 1:
            W2 = fb.w2.weight.double()
            fb.w2.bias.copy_(W2 @ torch.linalg.solve(tW2, tb2))
            C = tW2 @ torch.linalg.inv(W2)
        else:
            goal = target.out.weight.double() @ tW2
            (B2, A2), (Bo, Ao) = lowrank_update(goal, [fb.w2.base.weight, frozen.out.base.weight], rank)[0]
            _set_lora(fb.w2, B2, A2)
            _set_lora(frozen.out, Bo, Ao)
            spectra.append(torch.linalg.svdvals(goal - frozen.out.base.weight.double() @ fb.w2.base.weight.double()))
            Wo = _effective(frozen.out)
            fb.w2.base.bias.copy_(torch.linalg.solve(Wo, target.out.weight.double() @ tb2))
    return spectra


def trainable_parameters(
    frozen: nn.Module, method: Literal["sgd", "flt"], *, tune_bias: bool = True, last_layers: int = 1
) -> list[nn.Parameter]:
    """The parameters a method trains, with ``requires_grad`` set accordingly (everything else frozen) (Chapter 4).

    * ``"sgd"``: every LoRA ``A`` and ``B``; for an FNN with ``tune_bias`` also every layer bias.
    * ``"flt"`` (FNN only): weight and bias of the last ``last_layers`` layers; LoRA stays at zero.

    Example:
        >>> from lorakit.book.expressive.models import make_fnn_pair
        >>> _, f = make_fnn_pair(8, 1, 2, 2)
        >>> sum(p.numel() for p in trainable_parameters(f, "sgd", tune_bias=False))
        64
    """
    for p in frozen.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    if method == "sgd":
        for m in frozen.modules():
            if isinstance(m, LoRALinear):
                params += [m.A, m.B]
        if tune_bias and isinstance(frozen, FNN):
            params += [lin.bias for lin in frozen.base_linears() if lin.bias is not None]
    elif method == "flt":
        if not isinstance(frozen, FNN):
            raise ValueError("final-layer tuning ('flt') is defined for FNNs only; use --exp fnn")
        if not 1 <= last_layers <= len(frozen.layers):
            raise ValueError(f"last_layers={last_layers} must be in 1..frozen_depth={len(frozen.layers)}")
        for lin in frozen.base_linears()[-last_layers:]:
            params += [p for p in lin.parameters()]
    else:
        raise ValueError(f"method={method!r} is not trained: use 'sgd' or 'flt'")
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def mse(model: nn.Module, target: nn.Module, X: torch.Tensor, chunk: int = 1000) -> float:
    """Mean squared error between ``model`` and ``target`` on inputs ``X`` (over all entries; Chapter 4).

    Example:
        >>> mse(nn.Identity(), nn.Identity(), torch.randn(4, 3))
        0.0
    """
    total, count = 0.0, 0
    for i in range(0, len(X), chunk):
        xb = X[i : i + chunk]
        diff = (model(xb).double() - target(xb).double()) ** 2
        total += float(diff.sum())
        count += diff.numel()
    return total / count


def train_adapter(
    frozen: nn.Module,
    target: nn.Module,
    params: list[nn.Parameter],
    *,
    width: int,
    n_epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    generator: torch.Generator,
    seq_length: int = 10,
    progress: bool = True,
    record_every: int = 0,
) -> list[float]:
    """Train ``params`` with Adam (coupled L2 ``weight_decay``), one fresh batch per step (Chapter 4).

    Each of the ``n_epochs`` steps draws ``batch_size`` Gaussian inputs from
    ``generator``, labels them with ``target`` and takes one Adam step on the MSE.

    Returns:
        The batch losses every ``record_every`` steps (empty if 0), for convergence plots.

    Example:
        >>> from lorakit.book.expressive.models import make_fnn_pair
        >>> t, f = make_fnn_pair(4, 1, 2, 2)
        >>> ps = trainable_parameters(f, "sgd")
        >>> _ = train_adapter(f, t, ps, width=4, n_epochs=3, lr=1e-3, weight_decay=0,
        ...                   batch_size=8, generator=torch.Generator().manual_seed(0), progress=False)
    """
    if n_epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"need n_epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0; got {n_epochs}, {batch_size}, {lr}, {weight_decay}"
        )
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    bar = tqdm(range(n_epochs), desc="Loss of SGD", disable=not progress)
    record: list[float] = []
    for step in bar:
        X = sample_inputs(frozen, batch_size, width, generator, seq_length)
        with torch.no_grad():
            y = target(X)
        loss = nn.functional.mse_loss(frozen(X), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if record_every and step % record_every == 0:
            record.append(loss.item())
        if progress and step % 50 == 0:
            bar.set_description(f"Loss of SGD: {loss.item():.4f}", refresh=False)
    bar.close()
    return record
