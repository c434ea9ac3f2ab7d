"""The tiny vision transformer (ViT) that Part IV adapts (Chapters 7–9): the model only.

A 28×28 image is cut into 16 patches of 7×7 pixels; each patch is a token (a 49-dimensional
vector projected to ``dim``), a learned ``[CLS]`` token is prepended, and ``depth`` pre-norm
transformer blocks follow. Every block has the four attention projections ``q_proj``, ``k_proj``,
``v_proj``, ``o_proj`` (each an ``nn.Linear(dim, dim)``, the paper's ``W_q``, ``W_k``, ``W_v``,
``W_o``) and a two-layer GELU MLP ``fc1``/``fc2``. The tasks, pretraining and the stored weights
are in :mod:`lorakit.book.tinyformer.task`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyViTConfig", "patchify", "Attention", "Block", "TinyViT"]


@dataclass(frozen=True)
class TinyViTConfig:
    """Sizes of a :class:`TinyViT` (Chapter 7).

    Attributes:
        image_size: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``image_size``.
        dim: token width ``d`` (the attention projections are ``d × d``).
        depth: number of transformer blocks.
        heads: attention heads; must divide ``dim``.
        mlp_dim: hidden width of each block's MLP.
        n_classes: outputs of the classification head.

    Example:
        >>> c = TinyViTConfig()
        >>> c.n_patches, c.patch_dim, c.dim // c.heads
        (16, 49, 16)
        >>> TinyViTConfig(dim=30, heads=4)
        Traceback (most recent call last):
            ...
        ValueError: heads=4 does not divide dim=30; choose e.g. heads=4 for dim=64
    """

    image_size: int = 28
    patch_size: int = 7
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    n_classes: int = 5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyViTConfig.{name}={value!r} must be a positive int")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}; "
                "choose a divisor such as 7 or 4 for 28-pixel images"
            )
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} does not divide dim={self.dim}; choose e.g. heads=4 for dim=64")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2


def patchify(X: torch.Tensor, image_size: int = 28, patch_size: int = 7) -> torch.Tensor:
    """Cut flattened images into flattened square patches, row by row (Chapter 7).

    Args:
        X: images, shape ``(N, image_size**2)`` (or ``(N, image_size, image_size)``).
        image_size, patch_size: see :class:`TinyViTConfig`.

    Returns:
        Shape ``(N, (image_size/patch_size)**2, patch_size**2)``.

    Example:
        >>> patchify(torch.zeros(3, 784)).shape
        torch.Size([3, 16, 49])
    """
    n = X.shape[0]
    if X.numel() != n * image_size * image_size:
        raise ValueError(
            f"X has shape {tuple(X.shape)}, expected (N, {image_size * image_size}) flattened "
            f"{image_size}x{image_size} images"
        )
    g = image_size // patch_size
    X = X.reshape(n, g, patch_size, g, patch_size).permute(0, 1, 3, 2, 4)
    return X.reshape(n, g * g, patch_size * patch_size)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (Chapter 7).

    ``prefix_k`` and ``prefix_v`` are ``None`` unless prefix tuning sets them
    (:func:`lorakit.peft_methods.add_prefix`): then ``(n_prefix, dim)`` trainable
    vectors are prepended to the keys and values of every sequence.

    Shapes:
        input ``(N, T, dim)`` → output ``(N, T, dim)``; each projection's weight is ``(dim, dim)``.

    Example:
        >>> attn = Attention(dim=8, heads=2)
        >>> attn(torch.randn(2, 5, 8)).shape, attn.q_proj.weight.shape
        (torch.Size([2, 5, 8]), torch.Size([8, 8]))
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.prefix_k: nn.Parameter | None = None
        self.prefix_v: nn.Parameter | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.prefix_k is not None and self.prefix_v is not None:
            k = torch.cat([self.prefix_k.expand(n, -1, -1), k], dim=1)
            v = torch.cat([self.prefix_v.expand(n, -1, -1), v], dim=1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.dim // self.heads)
        out = scores.softmax(dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(n, t, self.dim))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + fc2(gelu(fc1(ln2(x))))`` (Chapter 7).

    Shapes:
        input ``(N, T, dim)`` → output ``(N, T, dim)``; ``fc1.weight`` is ``(mlp_dim, dim)``,
        ``fc2.weight`` is ``(dim, mlp_dim)``.

    Example:
        >>> block = Block(dim=8, heads=2, mlp_dim=16)
        >>> block(torch.randn(2, 5, 8)).shape, block.fc1.weight.shape
        (torch.Size([2, 5, 8]), torch.Size([16, 8]))
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """A small vision transformer for 28×28 grey images (Chapter 7).

    Module names follow the usual LoRA targets: ``blocks.{i}.attn.q_proj`` (and
    ``k_proj``, ``v_proj``, ``o_proj``), ``blocks.{i}.fc1``, ``blocks.{i}.fc2``,
    ``patch_embed`` and ``head``.

    Args:
        config: the sizes (default: 64-wide, 2 blocks, 4 heads, 5 classes; 72k parameters).

    Shapes:
        input ``(N, 784)`` pixels in ``[0, 1]`` → logits ``(N, n_classes)``.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=32, depth=1, heads=2, mlp_dim=64))
        >>> model(torch.rand(3, 784)).shape
        torch.Size([3, 5])
        >>> model.blocks[0].attn.q_proj.weight.shape
        torch.Size([32, 32])
    """

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TinyViTConfig()
        self.patch_embed = nn.Linear(config.patch_dim, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, config.n_patches + 1, config.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.n_classes)

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The final ``[CLS]`` representation, shape ``(N, dim)``."""
        c = self.config
        tokens = self.patch_embed(patchify(X, c.image_size, c.patch_size))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_f(tokens[:, 0])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))
