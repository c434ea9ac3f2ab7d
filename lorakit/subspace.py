"""What ``ΔW`` looks like: subspace similarity and amplification (Section 7 of the LoRA paper; Chapter 9).

Two measurements from Hu et al. :cite:`hu2021lora`:

* **Subspace similarity** of two adaptations with factors ``A₁`` (``r₁ × in``) and
  ``A₂`` (``r₂ × in``). Take the right-singular vectors of each, ``U₁`` (``in × r₁``)
  and ``U₂`` (``in × r₂``), ordered by singular value; then

  ``φ(A₁, A₂, i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j)``  ∈ [0, 1]

  is 1 when one top subspace contains the other and 0 when they are orthogonal.
  Two *random* subspaces of ``R^in`` give ``max(i, j) / in`` on average
  (:func:`random_similarity`).
* **Amplification.** With ``U`` (``out × r``) and ``V`` (``in × r``) the top-``r``
  left and right singular vectors of ``ΔW``, ``‖Uᵀ W V‖_F`` measures how much of
  ``W`` lies in ``ΔW``'s directions. Compared with ``W``'s own top-``r`` directions
  and with random ones, it shows whether ``ΔW`` amplifies directions that ``W``
  already emphasises; ``‖ΔW‖_F / ‖Uᵀ W V‖_F`` is the amplification factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "right_singular_vectors",
    "subspace_similarity",
    "random_similarity",
    "Amplification",
    "amplification",
]


def _check_matrix(name: str, M: torch.Tensor) -> None:
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    if M.ndim != 2:
        raise ValueError(f"{name} must be a matrix (2-D), got shape {tuple(M.shape)}")
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} holds NaN or Inf; check the training run that produced it")


def right_singular_vectors(A: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The top-``k`` right-singular vectors of ``A`` as columns, by decreasing singular value (Chapter 9).

    Args:
        A: a LoRA factor ``(r, in)`` (any matrix works).
        k: how many (default ``min(A.shape)``).

    Returns:
        ``(in, k)`` with orthonormal columns, computed in float64.

    Example:
        >>> A = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
        >>> right_singular_vectors(A, 1).abs().flatten().tolist()
        [0.0, 1.0, 0.0]
    """
    _check_matrix("A", A)
    kmax = min(A.shape)
    k = kmax if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= kmax:
        raise ValueError(f"k={k!r} must be an int in 1..min(A.shape)={kmax}")
    _, _, Vh = torch.linalg.svd(A.detach().to(torch.float64), full_matrices=False)
    return Vh[:k].T


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """``φ(A1, A2, i, j)`` for every ``i ≤ r₁``, ``j ≤ r₂`` (the LoRA paper's Eq. 4) (Chapter 9).

    Args:
        A1: ``(r₁, in)``; A2: ``(r₂, in)`` (the same ``in``).

    Returns:
        ``(r₁, r₂)`` float64 tensor; entry ``[i-1, j-1]`` is ``φ(A1, A2, i, j)``.

    Example:
        >>> A = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
        >>> phi = subspace_similarity(A, A)
        >>> round(float(phi[3, 3]), 6), phi.shape
        (1.0, torch.Size([4, 4]))
    """
    _check_matrix("A1", A1)
    _check_matrix("A2", A2)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(
            f"A1 is {tuple(A1.shape)} and A2 is {tuple(A2.shape)}: both must have the same number of "
            "columns (input features); compare factors of the same layer"
        )
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    overlap = (U1.T @ U2) ** 2  # (r1, r2): squared cosines between single directions
    cumulative = overlap.cumsum(0).cumsum(1)  # [i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return cumulative / torch.minimum(i, j)


def random_similarity(i: int, j: int, d: int) -> float:
    """Expected ``φ`` of a random ``i``-dim and a random ``j``-dim subspace of ``R^d``: ``max(i, j) / d`` (Chapter 9).

    (``E‖U_iᵀ U_j‖²_F = i·j/d``, divided by ``min(i, j)``.)

    Example:
        >>> random_similarity(1, 8, 64)
        0.125
    """
    if not all(isinstance(v, int) and v >= 1 for v in (i, j, d)) or max(i, j) > d:
        raise ValueError(f"need positive ints with max(i, j) <= d, got i={i!r}, j={j!r}, d={d!r}")
    return max(i, j) / d


@dataclass(frozen=True)
class Amplification:
    """The numbers of the LoRA paper's Table 7 for one weight matrix (Chapter 9).

    Attributes:
        r: number of directions used.
        proj_delta: ``‖Uᵀ W V‖_F`` with ``U, V`` the top-``r`` singular vectors of ``ΔW``.
        proj_W: the same with ``W``'s own top-``r`` singular vectors.
        proj_random: the same with random orthonormal ``U, V`` (mean over draws).
        norm_W: ``‖W‖_F``.
        norm_delta: ``‖ΔW‖_F``.

    Example:
        >>> a = Amplification(r=1, proj_delta=1.0, proj_W=3.0, proj_random=0.5, norm_W=3.742, norm_delta=5.0)
        >>> a.factor
        5.0
    """

    r: int
    proj_delta: float
    proj_W: float
    proj_random: float
    norm_W: float
    norm_delta: float

    @property
    def factor(self) -> float:
        """The amplification factor ``‖ΔW‖_F / ‖Uᵀ W V‖_F``."""
        return self.norm_delta / self.proj_delta


def _projection_norm(W: torch.Tensor, M: torch.Tensor, r: int) -> float:
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return float(torch.linalg.matrix_norm(U[:, :r].T @ W @ Vh[:r].T))


def amplification(
    delta_W: torch.Tensor,
    W: torch.Tensor,
    r: int,
    *,
    generator: torch.Generator | None = None,
    n_random: int = 20,
) -> Amplification:
    """Compare ``W`` projected on ``ΔW``'s top-``r`` directions, on its own, and on random ones (Chapter 9).

    Args:
        delta_W: the update ``(out, in)``, e.g. ``LoRALinear.delta_weight()``.
        W: the pretrained weight ``(out, in)``.
        r: number of singular directions, ``1 <= r <= min(out, in)``.
        generator: draws the random directions (Gaussian matrices, as in the paper).
        n_random: number of random draws averaged.

    Returns:
        An :class:`Amplification`; all computed in float64.

    Example:
        >>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> dW = torch.diag(torch.tensor([0.0, 0.0, 5.0]))
        >>> a = amplification(dW, W, 1, generator=torch.Generator().manual_seed(0))
        >>> a.proj_delta, a.proj_W, a.factor
        (1.0, 3.0, 5.0)
    """
    _check_matrix("delta_W", delta_W)
    _check_matrix("W", W)
    if delta_W.shape != W.shape:
        raise ValueError(f"delta_W has shape {tuple(delta_W.shape)} but W has {tuple(W.shape)}; they must match")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(W.shape):
        raise ValueError(f"r={r!r} must be an int in 1..min(W.shape)={min(W.shape)}")
    if n_random < 1:
        raise ValueError(f"n_random={n_random} must be >= 1")
    W64, D64 = W.detach().to(torch.float64), delta_W.detach().to(torch.float64)
    randoms = [
        _projection_norm(W64, torch.randn(W.shape, generator=generator, dtype=torch.float64), r)
        for _ in range(n_random)
    ]
    return Amplification(
        r=r,
        proj_delta=_projection_norm(W64, D64, r),
        proj_W=_projection_norm(W64, W64, r),
        proj_random=sum(randoms) / n_random,
        norm_W=float(torch.linalg.matrix_norm(W64)),
        norm_delta=float(torch.linalg.matrix_norm(D64)),
    )
