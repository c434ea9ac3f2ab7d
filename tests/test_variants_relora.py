"""ReLoRA: restarts merge the adapter into the base, zero B, prune the state; total rank grows past r."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lorakit import inject_lora
from lorakit.variants import ReLoRA, update_rank


def setup(r=1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    W0 = model[0].weight.detach().clone()
    inject_lora(model, "0", r=r, alpha=r)
    target = torch.randn(10, 12)
    X = torch.randn(128, 12)
    return model, W0, X, X @ target.T


def train(model, X, Y, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), Y).backward()
        opt.step()


def test_restart_preserves_function_and_zeroes_b():
    model, _, X, Y = setup()
    opt = torch.optim.Adam([model[0].A, model[0].B], lr=0.05)
    relora = ReLoRA(model, opt, reset_every=1000)
    train(model, X, Y, opt, 10)
    y_before = model(X).detach()
    relora.restart()
    assert torch.count_nonzero(model[0].B) == 0
    torch.testing.assert_close(model(X), y_before, atol=1e-5, rtol=0)
    for p in (model[0].A, model[0].B):
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt.state[p][key]
            assert torch.count_nonzero(state) <= max(1, state.numel() // 100) + 1


def test_total_update_rank_exceeds_r():
    model, W0, X, Y = setup(r=1)
    opt = torch.optim.Adam([model[0].A, model[0].B], lr=0.05)
    relora = ReLoRA(model, opt, reset_every=20, warmup_steps=5, prune_ratio=1.0)
    train(model, X, Y, opt, 100)
    assert relora.restarts == 5
    total = model[0].merged_weight() - W0
    assert update_rank(total) >= 4  # each cycle adds one rank-1 piece: rank well above r = 1


def test_learning_rate_warms_up_after_restart():
    model, _, X, Y = setup()
    opt = torch.optim.SGD([model[0].A, model[0].B], lr=0.1)
    ReLoRA(model, opt, reset_every=4, warmup_steps=3)
    lrs = []
    for _ in range(8):
        train(model, X, Y, opt, 1)
        lrs.append(opt.param_groups[0]["lr"])
    # after step 4 (restart) the lr for the next steps is 0.025, 0.05, 0.075, then 0.1
    assert lrs[:3] == [0.1, 0.1, 0.1]
    torch.testing.assert_close(torch.tensor(lrs[3:7]), torch.tensor([0.025, 0.05, 0.075, 0.1]))


def test_bad_input():
    model, _, _, _ = setup()
    opt = torch.optim.Adam([model[0].A], lr=0.1)
    with pytest.raises(ValueError, match="reset_every"):
        ReLoRA(model, opt, reset_every=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        ReLoRA(model, opt, reset_every=5, warmup_steps=5)
    with pytest.raises(ValueError, match="prune_ratio"):
        ReLoRA(model, opt, reset_every=5, prune_ratio=1.5)
    with pytest.raises(ValueError, match="no LoRA layer"):
        ReLoRA(nn.Linear(2, 2), opt, reset_every=5)


def test_step_after_restart_stays_bounded():
    # Pruning Adam's second moment but not the first would divide by ~eps: the next step would explode.
    model, _, X, Y = setup(r=2)
    opt = torch.optim.Adam([model[0].A, model[0].B], lr=0.01)
    relora = ReLoRA(model, opt, reset_every=1000, prune_ratio=0.9)
    train(model, X, Y, opt, 15)
    relora.restart()
    A0 = model[0].A.detach().clone()
    train(model, X, Y, opt, 1)
    assert (model[0].A.detach() - A0).abs().max() < 10 * 0.01


def test_seeded_restarts_are_reproducible_and_leave_the_global_rng_alone():
    def run(global_seed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5))
        inject_lora(model, "0", r=2)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
        ReLoRA(model, opt, reset_every=2, seed=7)
        X = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(global_seed)  # whatever else ran before in the session
        for _ in range(4):
            opt.zero_grad(); model(X).pow(2).mean().backward(); opt.step()
        return model[0].A.detach().clone(), torch.rand(1)

    (A1, after1), (A2, after2) = run(123), run(456)
    assert torch.equal(A1, A2)  # the redraws do not depend on the global stream
    torch.manual_seed(123)
    assert torch.equal(after1, torch.rand(1))  # and did not consume from it
