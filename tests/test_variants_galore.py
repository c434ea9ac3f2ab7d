"""GaLore: state lives in the rank-r space, full rank-r gap equals Adam, the total update exceeds rank r."""

import pytest
import torch
from torch.nn import functional as F

from lorakit.variants import GaLoreAdamW, adam_state_numel, update_rank


def problem(out=6, inp=10):
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(out, inp) * 0.1)
    b = torch.nn.Parameter(torch.zeros(out))
    X = torch.randn(64, inp)
    Y = X @ torch.randn(inp, out)
    return W, b, X, Y


def run(opt, W, b, X, Y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(X @ W.T + b, Y).backward()
        opt.step()


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_projected_state_size(shape):
    W, b, X, Y = problem(*shape)
    r = 2
    opt = GaLoreAdamW([{"params": [W], "rank": r}, {"params": [b]}], lr=1e-2)
    run(opt, W, b, X, Y, 1)
    out, inp = shape
    small = (r, inp) if out <= inp else (out, r)
    assert opt.state[W]["exp_avg"].shape == small and opt.state[W]["exp_avg_sq"].shape == small
    assert opt.state[b]["exp_avg"].shape == (out,)
    projector = out * r if out <= inp else r * inp
    expected = 2 * small[0] * small[1] + projector + 2 * out
    assert adam_state_numel(opt) == expected < 2 * out * inp + 2 * out


def test_update_stays_in_projector_subspace_between_refreshes():
    W, b, X, Y = problem(6, 10)
    W0 = W.detach().clone()
    opt = GaLoreAdamW([{"params": [W], "rank": 2}], lr=1e-2, update_proj_gap=1000, weight_decay=0.0)
    run(opt, W, b, X, Y, 7)
    P = opt.state[W]["projector"]  # (6, 2), orthonormal columns: left projection since out <= in
    torch.testing.assert_close(P.T @ P, torch.eye(2), atol=1e-5, rtol=0)
    delta = W.detach() - W0
    assert (delta - P @ (P.T @ delta)).abs().max() < 1e-6
    assert delta.abs().max() > 1e-3


def whitened_problem(out=8, inp=12):
    """A target whose singular values are all equal, so the top gradient direction keeps changing."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.zeros(out, inp))
    Q = torch.linalg.qr(torch.randn(inp, inp))[0]
    X = torch.randn(256, inp)
    return W, torch.zeros(out), X, X @ Q[:, :out]


def test_total_update_rank_grows_with_projector_refresh():
    # 40 steps, a new rank-1 projector every 10: the total update has rank 4 = 4 × r.
    W, b, X, Y = whitened_problem()
    opt = GaLoreAdamW([{"params": [W], "rank": 1}], lr=5e-2, update_proj_gap=10)
    run(opt, W, b, X, Y, 40)
    assert update_rank(W.detach()) == 4
    W, b, X, Y = whitened_problem()
    frozen = GaLoreAdamW([{"params": [W], "rank": 1}], lr=5e-2, update_proj_gap=10_000)
    run(frozen, W, b, X, Y, 40)
    assert update_rank(W.detach()) == 1


def test_bad_input():
    W, _, _, _ = problem()
    with pytest.raises(ValueError, match="rank"):
        GaLoreAdamW([{"params": [W], "rank": 7}])
    with pytest.raises(ValueError, match="rank"):
        GaLoreAdamW([{"params": [W], "rank": 0}])
    with pytest.raises(ValueError, match="update_proj_gap"):
        GaLoreAdamW([W], update_proj_gap=0)
    with pytest.raises(ValueError, match="lr"):
        GaLoreAdamW([W], lr=-1.0)
