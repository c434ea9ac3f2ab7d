"""The paper's synthetic models: fully connected networks (FNN) and a simplified transformer (TFN) (Chapters 4–6).

Conventions (the paper's code, see the chapter text): every FNN layer is a ``D × D``
``nn.Linear`` with PyTorch's default initialisation, the activation follows *every*
layer (the last one too), and each frozen layer carries a :class:`~lorakit.LoRALinear`
adapter with ``alpha = r`` (so ``ΔW = B A`` exactly) whose ``A`` is ``N(0, std²)`` and
``B = 0``. The TFN works on ``X`` of shape ``(batch, N, D)`` (tokens are rows; the paper
stores the transpose): each block sums ``H`` attention heads
``softmax(Q Kᵀ) V W_Oᵀ`` (no scaling, residual or norm), then a token-wise FFN
``W₂ ReLU(W₁ · + b₁) + b₂``; a bias-free output layer ``W_o`` follows the last block.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ...layer import LoRALinear

__all__ = ["FNN", "TFN", "TFNBlock", "AttentionHead", "make_fnn_pair", "make_tfn_pair", "pretrain", "sample_inputs", "block_sizes"]

Activation = Literal["relu", "linear"]


def block_sizes(target_depth: int, frozen_depth: int) -> list[int]:
    """How many frozen layers emulate each target layer: ``M = ⌊L/L̄⌋`` each, the remainder to the last (Chapter 5).

    Example:
        >>> block_sizes(2, 5)
        [2, 3]
    """
    if target_depth < 1 or frozen_depth < target_depth:
        raise ValueError(
            f"frozen_depth={frozen_depth} must be >= target_depth={target_depth} >= 1: "
            "each target layer needs at least one frozen layer"
        )
    M = frozen_depth // target_depth
    return [M] * (target_depth - 1) + [frozen_depth - M * (target_depth - 1)]


def _wrap(layer: nn.Linear, r: int, std: float) -> LoRALinear:
    lora = LoRALinear(layer, r=r, alpha=float(r), init_A="gaussian")
    with torch.no_grad():
        lora.A.normal_(0.0, std) if std > 0 else lora.A.zero_()
    return lora


class FNN(nn.Module):
    """A width-``D`` fully connected network: ``x ↦ σ(W_L ⋯ σ(W_1 x + b_1) ⋯ + b_L)`` (Chapter 5).

    Args:
        layers: the ``D × D`` layers, plain ``nn.Linear`` (target) or
            :class:`~lorakit.LoRALinear` (frozen model with adapters).
        activation: ``"relu"`` or ``"linear"``, applied after every layer.

    Shapes:
        input ``(batch, D)`` → output ``(batch, D)``.

    Example:
        >>> net = FNN([nn.Linear(4, 4), nn.Linear(4, 4)], "relu")
        >>> net(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, layers: list[nn.Module], activation: Activation) -> None:
        super().__init__()
        if activation not in ("relu", "linear"):
            raise ValueError(f"activation={activation!r} is unknown: use 'relu' or 'linear'")
        self.layers = nn.ModuleList(layers)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
            if self.activation == "relu":
                x = torch.relu(x)
        return x

    def replica_sequence(self) -> list[nn.Module]:
        """The layers and activations in the order ``forward`` applies them (Chapter 4).

        :class:`lorakit.ReplicaTrainer` uses it to train replicas of the FNN with its grouped-``bmm`` path.

        Example:
            >>> [type(m).__name__ for m in FNN([nn.Linear(4, 4)], "relu").replica_sequence()]
            ['Linear', 'ReLU']
        """
        act = nn.ReLU() if self.activation == "relu" else nn.Identity()
        return [m for layer in self.layers for m in (layer, act)]

    def base_linears(self) -> list[nn.Linear]:
        """The underlying ``nn.Linear`` of every layer (the frozen weights for LoRA layers)."""
        return [m.base if isinstance(m, LoRALinear) else m for m in self.layers]

    def weights(self) -> list[torch.Tensor]:
        """The effective weight of every layer: ``W + ΔW`` for LoRA layers (``D × D`` each)."""
        out = []
        for m in self.layers:
            if isinstance(m, LoRALinear):
                out.append(m.base.weight.detach() + m.delta_weight().detach().to(m.base.weight.dtype))
            else:
                out.append(m.weight.detach())
        return out


def _layer_ranks(r: int, frozen_depth: int, D: int, rank_step: int) -> list[int]:
    # The paper's rule is min(R + step·l, D) for layer l = 0..L-1; for step < 0 its code adds |step|·l as well
    # (a sign slip). We keep its *intent*, R - |step|·l clipped to 1..D, and document the difference.
    return [max(1, min(r + rank_step * l, D)) for l in range(frozen_depth)]


def make_fnn_pair(
    width: int,
    target_depth: int,
    frozen_depth: int,
    rank: int,
    *,
    use_bias: bool = True,
    activation: Activation = "relu",
    std: float = 0.25,
    init_mode: Literal["default", "uniform_singular_values"] = "default",
    rank_step: int = 0,
    seed: int = 123,
) -> tuple[FNN, FNN]:
    """Draw the target FNN (``L̄`` layers) and the frozen FNN (``L`` layers with rank-``rank`` LoRA) (Chapter 5).

    Seeds torch with ``seed``, draws the target's layers, then the frozen base layers,
    then the LoRA factors (so the frozen weights do not depend on ``rank``). With
    ``init_mode="uniform_singular_values"`` each target weight is overwritten with
    ``F_i + s_i I``, where ``F_i`` is the product of frozen block ``i`` and ``s_i`` the mean
    singular value of the original error ``W̄_i − F_i``: every error matrix becomes ``s_i I``.

    Args:
        width: ``D``, the width of every layer.
        target_depth: ``L̄``, layers of the target.
        frozen_depth: ``L >= L̄``, layers of the frozen model.
        rank: LoRA rank ``1..D``.
        use_bias: layers have biases.
        activation: ``"relu"`` or ``"linear"``.
        std: standard deviation of the LoRA factor ``A`` (``B = 0``).
        init_mode: ``"default"`` or ``"uniform_singular_values"``.
        rank_step: layer ``l`` (from 0) gets rank ``R + rank_step·l`` clipped to ``1..D``.
        seed: the torch seed.

    Returns:
        ``(target, frozen)``; all base parameters of ``frozen`` have ``requires_grad=False``.

    Example:
        >>> target, frozen = make_fnn_pair(8, 1, 2, 4)
        >>> len(target.layers), len(frozen.layers), frozen.layers[0].A.shape
        (1, 2, torch.Size([4, 8]))
    """
    block = block_sizes(target_depth, frozen_depth)
    if not 1 <= rank <= width:
        raise ValueError(f"rank={rank} must be in 1..width={width}")
    torch.manual_seed(seed)
    target_layers = [nn.Linear(width, width, bias=use_bias) for _ in range(target_depth)]
    frozen_layers = [nn.Linear(width, width, bias=use_bias) for _ in range(frozen_depth)]
    for layer in target_layers:
        layer.requires_grad_(False)
    if init_mode == "uniform_singular_values":
        start = 0
        with torch.no_grad():
            for i, m in enumerate(block):
                F = frozen_layers[start].weight.double()
                for layer in frozen_layers[start + 1 : start + m]:
                    F = layer.weight.double() @ F
                s = torch.linalg.svdvals(target_layers[i].weight.double() - F).mean()
                target_layers[i].weight.copy_(F + s * torch.eye(width, dtype=torch.float64))
                start += m
    elif init_mode != "default":
        raise ValueError(f"init_mode={init_mode!r} is unknown: use 'default' or 'uniform_singular_values'")
    ranks = _layer_ranks(rank, frozen_depth, width, rank_step)
    wrapped = [_wrap(layer, r, std) for layer, r in zip(frozen_layers, ranks)]
    return FNN(target_layers, activation), FNN(wrapped, activation)


class AttentionHead(nn.Module):
    """One head: ``softmax(Q Kᵀ) V W_Oᵀ`` with ``Q = X W_Qᵀ``, ``K = X W_Kᵀ``, ``V = X W_Vᵀ`` (softmax over keys) (Chapter 4).

    Shapes:
        input ``(batch, N, D)`` → output ``(batch, N, D)``.

    Example:
        >>> head = AttentionHead(*(nn.Linear(4, 4, bias=False) for _ in range(4)))
        >>> head(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = q, k, v, o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)  # (batch, N queries, N keys)
        return torch.softmax(scores, dim=-1) @ self.o(self.v(x))


class TFNBlock(nn.Module):
    """Sum of ``H`` heads, then the token-wise FFN ``W₂ ReLU(W₁ · + b₁) + b₂`` (Chapter 4).

    Example:
        >>> heads = [AttentionHead(*(nn.Linear(4, 4, bias=False) for _ in range(4))) for _ in range(2)]
        >>> TFNBlock(heads, nn.Linear(4, 4), nn.Linear(4, 4))(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, heads: list[AttentionHead], w1: nn.Module, w2: nn.Module) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.w1, self.w2 = w1, w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = sum(head(x) for head in self.heads)
        return self.w2(torch.relu(self.w1(a)))


class TFN(nn.Module):
    """The paper's simplified transformer: ``depth`` blocks then a bias-free output layer (Chapter 6).

    Shapes:
        input ``(batch, N, D)`` → output ``(batch, N, D)``.

    Example:
        >>> target, frozen = make_tfn_pair(8, 1, 4, n_head=2)
        >>> frozen(torch.randn(3, 10, 8)).shape
        torch.Size([3, 10, 8])
    """

    def __init__(self, blocks: list[TFNBlock], out: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def _attention_linear(D: int) -> nn.Linear:
    layer = nn.Linear(D, D, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0)  # the paper draws attention matrices N(0, 1), unscaled
    return layer


def make_tfn_pair(
    width: int,
    depth: int,
    rank: int,
    *,
    n_head: int = 2,
    std: float = 0.25,
    seed: int = 123,
    draw_order: Literal["paper", "rank_independent"] = "paper",
) -> tuple[TFN, TFN]:
    """Draw a target TFN and a frozen TFN of the same depth, the frozen one with LoRA (Chapter 6).

    The frozen TFN has LoRA (rank ``rank``, ``alpha = rank``) on ``W_Q, W_K, W_V, W_O`` of
    every head and block, on the last block's ``W₂`` and on ``W_o``. Attention matrices
    are ``N(0, 1)``; FFN and output layers use the ``nn.Linear`` default. The target is
    drawn first in both orders, so it is the same in both. Then:

    * ``draw_order="paper"`` (the default): frozen attention (each followed by its LoRA
      ``A``), then frozen FFN/output — like the paper's code, which also draws the frozen
      FFN and output weights after the attention LoRA factors. The factors take
      ``rank``-dependent amounts of random numbers, so every frozen weight drawn after the
      first factor (all but the first ``W_Q``; the FFN and output weights included)
      changes with ``rank``: a sweep over ranks compares different frozen models.
    * ``draw_order="rank_independent"``: every frozen base weight (attention, then
      FFN/output) before any LoRA factor, so the frozen base model is the same at every
      ``rank``: what a sweep over ranks needs.

    Args:
        width: ``D``, the embedding size.
        depth: number of blocks of both models.
        rank: LoRA rank ``1..D``.
        n_head: ``H``, heads per block.
        std: standard deviation of the LoRA factor ``A`` (``B = 0``).
        seed: the torch seed.
        draw_order: ``"paper"`` or ``"rank_independent"`` (see above).

    Returns:
        ``(target, frozen)``; inputs have shape ``(batch, N, D)``.

    Example:
        >>> t, f = make_tfn_pair(8, 2, 4)
        >>> sum(isinstance(m, LoRALinear) for m in f.modules())
        18
        >>> bases = [make_tfn_pair(8, 1, r, draw_order="rank_independent")[1].blocks[0].w1.weight
        ...          for r in (2, 8)]
        >>> torch.equal(*bases)
        True
    """
    if depth < 1 or n_head < 1:
        raise ValueError(f"depth={depth} and n_head={n_head} must be >= 1")
    if not 1 <= rank <= width:
        raise ValueError(f"rank={rank} must be in 1..width={width}")
    if draw_order not in ("paper", "rank_independent"):
        raise ValueError(
            f"draw_order={draw_order!r} is unknown: use 'paper' (the paper's code, frozen FFN weights depend "
            "on rank) or 'rank_independent' (the same frozen base model at every rank)"
        )
    torch.manual_seed(seed)
    blocks = []
    for _ in range(depth):
        heads = [AttentionHead(*(_attention_linear(width) for _ in range(4))) for _ in range(n_head)]
        blocks.append(TFNBlock(heads, nn.Linear(width, width), nn.Linear(width, width)))
    target = TFN(blocks, nn.Linear(width, width, bias=False)).requires_grad_(False)
    paper = draw_order == "paper"

    def wrap_now(layer: nn.Linear) -> nn.Module:  # the paper draws each LoRA factor right after its weight
        return _wrap(layer, rank, std) if paper else layer

    attention = [[[wrap_now(_attention_linear(width)) for _ in range(4)] for _ in range(n_head)] for _ in range(depth)]
    ffn = []
    for l in range(depth):
        w1, w2 = nn.Linear(width, width), nn.Linear(width, width)
        w1.requires_grad_(False)
        w2.requires_grad_(False)
        ffn.append((w1, wrap_now(w2) if l == depth - 1 else w2))
    out = wrap_now(nn.Linear(width, width, bias=False))
    if not paper:  # now the LoRA factors, in the paper's order of layers
        attention = [[[_wrap(m, rank, std) for m in head] for head in block] for block in attention]
        w1, w2 = ffn[-1]
        ffn[-1] = (w1, _wrap(w2, rank, std))
        out = _wrap(out, rank, std)
    frozen_blocks = [
        TFNBlock([AttentionHead(*head) for head in attention[l]], *ffn[l]) for l in range(depth)
    ]
    return target, TFN(frozen_blocks, out)


def sample_inputs(
    model: nn.Module, n: int, width: int, generator: torch.Generator, seq_length: int = 10
) -> torch.Tensor:
    """``n`` i.i.d. standard Gaussian inputs for ``model``: ``(n, D)`` for an FNN, ``(n, N, D)`` for a TFN (Chapter 4).

    Example:
        >>> sample_inputs(TFN([], nn.Identity()), 2, 4, torch.Generator().manual_seed(0), 3).shape
        torch.Size([2, 3, 4])
    """
    shape = (n, seq_length, width) if isinstance(model, TFN) else (n, width)
    return torch.randn(shape, generator=generator)


def pretrain(
    frozen: nn.Module,
    target: nn.Module,
    *,
    width: int,
    epochs: int,
    lr: float,
    level: float,
    batch_size: int,
    generator: torch.Generator,
    seq_length: int = 10,
    progress: bool = True,
) -> int:
    """Train the frozen model's *base* weights (not the LoRA factors) towards the target, in place (Chapter 4).

    Adam (``lr``, no weight decay), MSE, a fresh Gaussian batch each step; stops at the
    first step ``i >= 1`` whose batch loss is below ``loss_0 / level``, or after ``epochs``
    steps. This mimics a pretrained model: it is closer to the target, so ``E`` is smaller.

    Args:
        frozen: the model to pretrain (its ``nn.Linear`` weights and biases train; LoRA factors do not).
        target: the model it is trained towards.
        width: ``D``.
        seq_length: ``N`` (transformers only).
        epochs: the maximum number of steps.
        lr: Adam's learning rate.
        level: stop once the batch loss is below ``loss_0 / level`` (must be > 1).
        batch_size: inputs per step.
        generator: the random stream of the batches.
        progress: show a progress bar.

    Returns:
        The step at which it stopped.

    Example:
        >>> t, f = make_fnn_pair(4, 1, 2, 2)
        >>> pretrain(f, t, width=4, epochs=5, lr=1e-3, level=3, batch_size=8,
        ...          generator=torch.Generator().manual_seed(0), progress=False) <= 5
        True
    """
    if level <= 1:
        raise ValueError(f"pretrained_level={level} must be > 1 (stop when the loss drops by this factor)")
    params = []
    for m in frozen.modules():
        if isinstance(m, nn.Linear):
            params += list(m.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    bar = tqdm(range(epochs), desc="Pretraining", disable=not progress)
    loss0 = None
    stop = epochs
    for i in bar:
        X = sample_inputs(frozen, batch_size, width, generator, seq_length)
        loss = nn.functional.mse_loss(frozen(X), target(X))
        if loss0 is None:
            loss0 = loss.item()
        elif loss.item() < loss0 / level:
            stop = i
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_description(f"Loss of pretraining: {loss.item():.4f}", refresh=False)
    bar.close()
    for p, s in zip(params, saved):
        p.requires_grad_(s)
    return stop

