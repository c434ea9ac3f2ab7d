"""Tests for lorakit.subspace: subspace similarity and amplification."""

import pytest
import torch

from lorakit.subspace import amplification, random_similarity, right_singular_vectors, subspace_similarity


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_right_singular_vectors_are_orthonormal_and_ordered():
    A = torch.randn(5, 12, generator=_gen())
    U = right_singular_vectors(A)
    assert U.shape == (12, 5)
    assert torch.allclose(U.T @ U, torch.eye(5, dtype=torch.float64), atol=1e-10)
    # the first column is the direction A stretches most
    norms = (A.double() @ U).norm(dim=0)
    assert torch.all(norms[:-1] >= norms[1:])


def test_right_singular_vectors_rejects_bad_k():
    with pytest.raises(ValueError, match="k=6"):
        right_singular_vectors(torch.randn(5, 12), 6)
    with pytest.raises(ValueError, match="2-D"):
        right_singular_vectors(torch.randn(5))


def test_similarity_matches_direct_formula():
    A1, A2 = torch.randn(4, 20, generator=_gen(1)), torch.randn(7, 20, generator=_gen(2))
    phi = subspace_similarity(A1, A2)
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    for i in range(1, 5):
        for j in range(1, 8):
            direct = torch.linalg.matrix_norm(U1[:, :i].T @ U2[:, :j]) ** 2 / min(i, j)
            assert abs(float(phi[i - 1, j - 1]) - float(direct)) < 1e-10
    assert float(phi.min()) >= 0 and float(phi.max()) <= 1 + 1e-12


def test_similarity_of_identical_and_orthogonal_subspaces():
    A = torch.randn(3, 10, generator=_gen(3))
    assert torch.allclose(subspace_similarity(A, A).diagonal(), torch.ones(3, dtype=torch.float64))
    E = torch.eye(6)
    assert float(subspace_similarity(E[:3], E[3:]).abs().max()) < 1e-12
    # a subspace contains its top direction: phi(i=1, j) = 1 when A2 spans A1's row
    A2 = torch.cat([A[:1], torch.randn(2, 10, generator=_gen(4))])
    assert abs(float(subspace_similarity(A[:1], A2)[0, 2]) - 1.0) < 1e-10


def test_similarity_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same number of columns"):
        subspace_similarity(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(TypeError):
        subspace_similarity([[1.0]], torch.randn(1, 1))
    with pytest.raises(ValueError, match="NaN"):
        subspace_similarity(torch.full((2, 5), float("nan")), torch.randn(2, 5))


def test_random_similarity_matches_monte_carlo():
    g = _gen(5)
    d, i, j = 32, 2, 8
    values = [float(subspace_similarity(torch.randn(i, d, generator=g), torch.randn(j, d, generator=g))[i - 1, j - 1])
              for _ in range(400)]
    assert abs(sum(values) / len(values) - random_similarity(i, j, d)) < 0.02
    with pytest.raises(ValueError):
        random_similarity(5, 40, 32)


def test_amplification_on_a_known_case():
    W = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    dW = torch.zeros(4, 4)
    dW[3, 3] = 10.0
    a = amplification(dW, W, 1, generator=_gen())
    assert a.proj_delta == pytest.approx(1.0)
    assert a.proj_W == pytest.approx(4.0)
    assert a.norm_W == pytest.approx(30 ** 0.5)
    assert a.norm_delta == pytest.approx(10.0)
    assert a.factor == pytest.approx(10.0)


def test_amplification_own_directions_dominate():
    g = _gen(6)
    W, dW = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    for r in (1, 4, 16):
        a = amplification(dW, W, r, generator=g)
        # At r = 16 (every direction) all three are ||W||_F and differ only by rounding.
        assert a.proj_W >= a.proj_delta - 1e-9 and a.proj_W >= a.proj_random - 1e-9
    full = amplification(dW, W, 16, generator=g)
    assert full.proj_delta == pytest.approx(full.norm_W)  # all directions: the whole of W


def test_amplification_rejects_bad_input():
    with pytest.raises(ValueError, match="must match"):
        amplification(torch.zeros(3, 4), torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match="r=5"):
        amplification(torch.zeros(4, 4), torch.zeros(4, 4), 5)
