"""The linear core of the paper's construction (Zeng & Lee, 2024, Lemma on linear models; Chapter 4).

Given a target matrix ``W̄`` and ``M`` frozen matrices ``W_1 … W_M`` (``W_1`` applied
first), :func:`lowrank_update` returns one rank-≤``r`` update per frozen matrix such
that the adapted product ``(W_M+ΔW_M)⋯(W_1+ΔW_1)`` equals ``W_M⋯W_1`` plus the best
rank-``r·M`` approximation of the error ``E = W̄ − W_M⋯W_1`` (Eckart–Young).

The arbitrary choice in the paper's code — which singular vectors to use when
singular values are tied — is made deterministic by :func:`canonical_svd`.
"""

from __future__ import annotations

import torch

__all__ = ["canonical_svd", "chain_product", "lowrank_update", "tail_errors", "rank_threshold"]


def _check_square_stack(target: torch.Tensor, frozen: list[torch.Tensor]) -> int:
    if not isinstance(target, torch.Tensor) or target.ndim != 2 or target.shape[0] != target.shape[1]:
        raise ValueError(f"target must be a square D×D tensor, got {getattr(target, 'shape', type(target))}")
    if len(frozen) == 0:
        raise ValueError("frozen is empty: pass at least one D×D frozen matrix (W_1 first)")
    D = target.shape[0]
    for i, W in enumerate(frozen):
        if not isinstance(W, torch.Tensor) or tuple(W.shape) != (D, D):
            raise ValueError(f"frozen[{i}] has shape {getattr(W, 'shape', type(W))}; every frozen matrix must be {D}×{D}")
    return D


def chain_product(mats: list[torch.Tensor], D: int | None = None) -> torch.Tensor:
    """``W_k ⋯ W_1`` for ``mats = [W_1, …, W_k]`` (the first applied is rightmost) (Chapter 4).

    Args:
        mats: square matrices, each ``D × D``; may be empty if ``D`` is given.
        D: size of the identity returned for an empty list.

    Returns:
        The ``D × D`` product, in float64.

    Example:
        >>> chain_product([2 * torch.eye(2), 3 * torch.eye(2)])[0, 0].item()
        6.0
    """
    if not mats:
        if D is None:
            raise ValueError("chain_product of an empty list needs D (the identity's size)")
        return torch.eye(D, dtype=torch.float64)
    out = mats[0].to(torch.float64)
    for W in mats[1:]:
        out = W.to(torch.float64) @ out
    return out


def canonical_svd(E: torch.Tensor, rtol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD ``E = U diag(S) Vᵀ`` (float64) with a deterministic basis inside tied singular values (Chapter 4).

    LAPACK may return any orthonormal basis of the right singular subspace of a
    repeated singular value (e.g. ``E = s·I`` under ``init_mode=uniform_singular_values``).
    We replace it by a canonical one: pivoted Gram–Schmidt on the projections of the
    standard basis vectors ``e_1, e_2, …`` onto that subspace, taking at each step the
    ``e_j`` with the largest remaining component (lowest ``j`` on ties). For ``E = s·I``
    this gives ``V = I``: the first layer corrects coordinates ``1…r``, the next
    ``r+1…2r``, and so on. ``U`` is then ``E V / S`` on that group. Values within
    ``rtol·S[0]`` of each other count as tied.

    Args:
        E: ``D × D`` matrix.
        rtol: relative tolerance for ties.

    Returns:
        ``(U, S, V)`` with shapes ``(D, D)``, ``(D,)``, ``(D, D)``; ``V``'s columns are the
        right singular vectors, in order of decreasing ``S``.

    Example:
        >>> U, S, V = canonical_svd(0.5 * torch.eye(3))
        >>> torch.equal(V, torch.eye(3, dtype=torch.float64)), S.tolist()
        (True, [0.5, 0.5, 0.5])
    """
    E64 = E.to(torch.float64)
    U, S, Vh = torch.linalg.svd(E64)
    V = Vh.mT.clone()
    U = U.clone()
    D = S.shape[0]
    tol = rtol * max(float(S[0]), 1e-300) if D else 0.0
    start = 0
    while start < D:
        end = start + 1
        while end < D and float(S[start] - S[end]) <= tol:
            end += 1
        k = end - start
        if k > 1 and float(S[start]) > tol:
            P = V[:, start:end] @ V[:, start:end].mT  # projector onto the tied subspace
            cols = []
            residual = P.clone()
            for _ in range(k):
                norms = residual.norm(dim=0)
                j = int(torch.argmax(norms))  # argmax returns the first maximum: lowest index on ties
                v = residual[:, j] / norms[j]
                cols.append(v)
                residual = residual - torch.outer(v, v @ residual)
            Vg = torch.stack(cols, dim=1)
            V[:, start:end] = Vg
            U[:, start:end] = (E64 @ Vg) / S[start:end]
        start = end
    return U, S, V


def rank_threshold(D: int, target_depth: int, frozen_depth: int) -> int:
    """The paper's sufficient LoRA rank ``⌈D / M⌉`` with ``M = ⌊L / L̄⌋`` frozen layers per target layer (Chapter 5).

    For ``(D, L̄, L) = (16, 1, 2)`` or ``(16, 2, 4)`` this is 8: the abstract's
    "width × depth of target / depth of frozen".

    Example:
        >>> rank_threshold(16, 2, 4)
        8
    """
    if min(D, target_depth, frozen_depth) < 1 or frozen_depth < target_depth:
        raise ValueError(
            f"need D, L̄ >= 1 and L >= L̄, got D={D}, L̄={target_depth}, L={frozen_depth}; "
            "the construction emulates each target layer with at least one frozen layer"
        )
    M = frozen_depth // target_depth
    return -(-D // M)


def lowrank_update(
    target: torch.Tensor, frozen: list[torch.Tensor], r: int, rtol: float = 1e-5
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The paper's construction for one target matrix emulated by ``M`` frozen ones (Chapter 4).

    With ``E = W̄ − W_M⋯W_1 = U Σ Vᵀ`` (:func:`canonical_svd`), layer ``l`` gets the
    ``l``-th chunk ``V_l`` of ``r`` right singular vectors (clipped at ``D``) and the update
    ``ΔW_l = P_l⁻¹ E V_l V_lᵀ Q_l⁻¹``, where ``P_l = W_M⋯W_{l+1}`` (still frozen) and
    ``Q_l = (W_{l−1}+ΔW_{l−1})⋯(W_1+ΔW_1)`` (already adapted). The sums telescope: the
    adapted product is ``W_M⋯W_1 + E V_{≤rM} V_{≤rM}ᵀ``.

    Args:
        target: ``W̄``, shape ``(D, D)``.
        frozen: ``[W_1, …, W_M]``, each ``(D, D)``, ``W_1`` applied first; all the
            ``P_l`` and ``Q_l`` must be invertible (the paper's non-singularity assumption).
        r: LoRA rank per layer, ``1 <= r <= D``.
        rtol: tie tolerance of :func:`canonical_svd`.

    Returns:
        ``(factors, S)``: ``factors[l] = (B_l, A_l)`` with ``B_l`` of shape ``(D, r)`` and
        ``A_l`` of shape ``(r, D)`` (float64, zero-padded when the chunk has fewer than
        ``r`` directions), so ``ΔW_l = B_l A_l``; and ``S``, the singular values of ``E``.

    Raises:
        ValueError: on bad shapes, ``r`` outside ``1..D``, or a singular ``P_l``/``Q_l``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> Wbar, W1, W2 = (torch.randn(4, 4, generator=g) for _ in range(3))
        >>> factors, S = lowrank_update(Wbar, [W1, W2], r=2)
        >>> adapted = [W + B @ A for W, (B, A) in zip([W1.double(), W2.double()], factors)]
        >>> torch.allclose(adapted[1] @ adapted[0], Wbar.double())
        True
    """
    D = _check_square_stack(target, frozen)
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= D:
        raise ValueError(f"rank r={r!r} must be an int in 1..D={D}")
    Ws = [W.to(torch.float64) for W in frozen]
    E = target.to(torch.float64) - chain_product(Ws)
    _, S, V = canonical_svd(E, rtol)
    factors: list[tuple[torch.Tensor, torch.Tensor]] = []
    adapted: list[torch.Tensor] = []
    for l in range(len(Ws)):
        lo, hi = min(l * r, D), min((l + 1) * r, D)
        Vl = V[:, lo:hi]
        P = chain_product(Ws[l + 1 :], D)
        Q = chain_product(adapted, D)
        B = torch.zeros(D, r, dtype=torch.float64)
        A = torch.zeros(r, D, dtype=torch.float64)
        if hi > lo:
            try:
                B[:, : hi - lo] = torch.linalg.solve(P, E @ Vl)
                A[: hi - lo] = torch.linalg.solve(Q.mT, Vl).mT
            except RuntimeError as err:  # torch raises a LinAlgError (a RuntimeError) on singular input
                raise ValueError(
                    f"the construction needs invertible partial products, but P_{l + 1} or Q_{l + 1} is singular; "
                    "perturb the frozen weights slightly (the paper's non-singularity assumption)"
                ) from err
        factors.append((B, A))
        adapted.append(Ws[l] + B @ A)
    return factors, S


def tail_errors(S: torch.Tensor, k: int) -> tuple[float, float]:
    """The error of the best rank-``k`` approximation: ``(σ_{k+1}, Σ_{i>k} σ_i²)`` (Chapter 4).

    These are the spectral norm and squared Frobenius norm of ``E − E_k`` (Eckart–Young),
    i.e. what :func:`lowrank_update` leaves when ``k = r·M``. For ``x ~ N(0, I_D)`` the
    MSE of a linear model with that residual is ``Σ_{i>k} σ_i² / D``.

    Example:
        >>> tail_errors(torch.tensor([3.0, 2.0, 1.0]), 1)
        (2.0, 5.0)
    """
    if k < 0:
        raise ValueError(f"k={k} must be >= 0 (the rank of the approximation)")
    S = S.to(torch.float64)
    spectral = float(S[k]) if k < len(S) else 0.0
    return spectral, float((S[k:] ** 2).sum())
