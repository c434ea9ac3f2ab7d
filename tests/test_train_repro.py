"""The shared training loop, seeding, and the Chapter 1 toy."""

import pytest
import torch
from torch import nn

from lorakit import fit, seed_everything
from lorakit.book.toy import fit_full_batch, low_rank_shift, make_linear_task, shifted_task
from lorakit.train import batch_indices


def run_once():
    g = seed_everything(0)
    model = nn.Linear(4, 2)
    X, y = torch.randn(100, 4, generator=g), torch.randn(100, 2, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return fit(model, X, y, loss_fn=nn.functional.mse_loss, optimizer=opt, epochs=3, batch_size=16,
               generator=g, evaluate=lambda m: {"mse": nn.functional.mse_loss(m(X), y)}, progress=False)


def test_fit_is_deterministic_and_learns():
    first, second = run_once(), run_once()
    assert first.train_loss == second.train_loss
    assert first.metric("mse") == second.metric("mse")
    assert first.metric("mse")[-1] < first.train_loss[0]
    assert [e["epoch"] for e in first.evals] == [1, 2, 3]


@pytest.mark.parametrize("sampling,count,sizes", [
    ("shuffle", 3, [4, 4, 2]), ("sequential", 3, [4, 4, 2]), ("random_subsets", 2, [4, 4])])
def test_batch_indices(sampling, count, sizes):
    batches = batch_indices(10, 4, sampling, torch.Generator().manual_seed(0))
    assert len(batches) == count and [len(b) for b in batches] == sizes
    assert all(len(set(b.tolist())) == len(b) for b in batches)
    if sampling != "random_subsets":
        assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_fit_rejects_bad_input():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must match"):
        fit(model, torch.zeros(3, 2), torch.zeros(4, 1), loss_fn=nn.functional.mse_loss, optimizer=opt,
            epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="sampling="):
        batch_indices(4, 2, "bootstrap", None)
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(4, 0, "shuffle", None)


def test_seed_everything():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="seed="):
        seed_everything(-1)
    with pytest.raises(ValueError, match="threads="):
        seed_everything(0, threads=0)


def test_toy_shift_is_rank_one_and_lora_recovers_it():
    g = torch.Generator().manual_seed(0)
    task = make_linear_task(400, 12, 10, generator=g, dtype=torch.float64)
    task2 = shifted_task(task, generator=g)
    assert torch.linalg.matrix_rank(task2.theta - task.theta).item() == 1
    from lorakit import LoRALinear

    base = nn.Linear(12, 10, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(task.theta.T)
    lora = LoRALinear(base, r=1, alpha=1, init_A="gaussian")
    losses = fit_full_batch(lora, task2, steps=400, lr=0.05)
    assert losses[0] > 1 and losses[-1] < 1e-8
    torch.testing.assert_close(lora.delta_weight(), torch.ones(10, 12, dtype=torch.float64), atol=1e-4, rtol=0)


def test_low_rank_shift_has_the_asked_rank_and_spectrum():
    shift = low_rank_shift(20, 15, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.linalg.svdvals(shift)[:4], torch.tensor([3.0, 2.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rank=16"):
        low_rank_shift(20, 15, 16, generator=torch.Generator())


def test_fit_stops_on_a_non_finite_loss_naming_the_step_and_changes_nothing_further():
    import pytest
    from torch import nn as _nn

    torch.manual_seed(0)
    model = _nn.Linear(3, 1)
    X, y = torch.randn(32, 3), torch.randn(32, 1)
    y[20] = float("inf")  # batch 3 of 4 with batch_size 8, sequential
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    seen = []
    real_step = opt.step
    opt.step = lambda *a, **k: (seen.append({k: v.clone() for k, v in model.state_dict().items()}), real_step(*a, **k))[1]
    with pytest.raises(ValueError, match="loss became inf at epoch 1, batch 3 of 4 \\(examples 16..23\\)"):
        fit(model, X, y, loss_fn=_nn.functional.mse_loss, optimizer=opt, epochs=1, batch_size=8,
                    sampling="sequential", progress=False)
    assert len(seen) == 2  # two good steps, none with the bad loss
    after_two = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in after_two.values())
    assert all(p.grad is None for p in model.parameters())  # zeroed, never back-propagated
