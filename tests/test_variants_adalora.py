"""AdaLoRA: SVD-form update, zero at init, cubic budget, pruning keeps exactly b(t) triplets."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lorakit.variants import AdaLoRAController, AdaLoRALinear, orthogonal_regularizer, wrap_linears


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    wrap_linears(model, ["0", "2"], lambda lin: AdaLoRALinear(lin, r=4, alpha=4), match="exact")
    X, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    return model, X, y


def test_shapes_and_zero_update_at_init():
    layer = AdaLoRALinear(nn.Linear(10, 8), r=4)
    assert (layer.A.shape, layer.B.shape, layer.E.shape) == ((4, 10), (8, 4), (4,))
    assert torch.count_nonzero(layer.delta_weight()) == 0 and layer.active_rank == 0
    with torch.no_grad():
        layer.E.copy_(torch.tensor([1.0, 0.0, 2.0, 0.0]))
    expected = layer.B @ torch.diag(layer.E) @ layer.A * layer.scaling
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T)


def test_budget_schedule_is_monotone_from_initial_to_target():
    model, _, _ = model_and_data()
    ctl = AdaLoRAController(model, target_rank=3, total_steps=50, warmup_steps=10, final_steps=10)
    budgets = [ctl.budget(t) for t in range(50)]
    assert budgets[0] == 8 and budgets[9] == 8 and budgets[-1] == 3 and budgets[40] == 3
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))


def test_training_prunes_to_target_rank():
    model, X, y = model_and_data()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ctl = AdaLoRAController(model, target_rank=3, total_steps=40, warmup_steps=5, final_steps=10)
    ctl.attach(opt)
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y) + 0.1 * orthogonal_regularizer(model)
        loss.backward()
        opt.step()
        assert sum(ctl.rank_pattern()) <= ctl.budget(ctl.steps - 1)
    assert sum(ctl.rank_pattern()) == 3
    assert ctl.steps == 40


def test_orthogonal_regularizer_is_zero_for_orthonormal_factors():
    layer = AdaLoRALinear(nn.Linear(6, 5), r=2)
    with torch.no_grad():
        layer.A.copy_(torch.eye(6)[:2])
        layer.B.copy_(torch.eye(5)[:, :2])
    assert orthogonal_regularizer(nn.Sequential(layer)).item() == 0.0


def test_bad_input():
    model, _, _ = model_and_data()
    with pytest.raises(ValueError, match="target_rank"):
        AdaLoRAController(model, target_rank=9, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        AdaLoRAController(model, target_rank=2, total_steps=10, warmup_steps=6, final_steps=4)
    with pytest.raises(ValueError, match="AdaLoRALinear"):
        AdaLoRAController(nn.Linear(3, 3), target_rank=1, total_steps=10)
    with pytest.raises(ValueError, match="AdaLoRALinear"):
        orthogonal_regularizer(nn.Linear(3, 3))
