"""LoRA+: B's learning rate is ratio × A's, every trainable parameter in exactly one group."""

import pytest
import torch
from torch import nn

from lorakit import inject_lora
from lorakit.variants import loraplus_param_groups


def model_with_lora():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_lora(model, ["0", "2"], r=2, match="exact")
    model[2].base.bias.requires_grad_(True)  # an extra trainable: goes with A's group
    return model


def test_groups_split_a_and_b_with_the_ratio():
    model = model_with_lora()
    groups = loraplus_param_groups(model, lr=1e-3, ratio=16)
    assert [g["lr"] for g in groups] == [1e-3, 1.6e-2]
    b_ids = {id(model[0].B), id(model[2].B)}
    assert {id(p) for p in groups[1]["params"]} == b_ids
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].A), id(model[2].A), id(model[2].base.bias)}


def test_b_moves_ratio_times_faster_with_sgd():
    model = model_with_lora()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.B.normal_()
    x = torch.randn(4, 8)
    groups = loraplus_param_groups(model, lr=1e-2, ratio=4)
    opt = torch.optim.SGD(groups)
    model(x).sum().backward()
    grads = {id(p): p.grad.clone() for p in model.parameters() if p.requires_grad}
    before = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}
    opt.step()
    for p in (model[0].A, model[0].B):
        lr = 4e-2 if p is model[0].B else 1e-2
        torch.testing.assert_close(before[id(p)] - p.detach(), lr * grads[id(p)])


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(lr=1e-3, ratio=-1.0), dict(lr=float("nan"))])
def test_bad_numbers_raise(kwargs):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        loraplus_param_groups(model_with_lora(), **kwargs)


def test_model_without_lora_raises():
    with pytest.raises(ValueError, match="inject_lora"):
        loraplus_param_groups(nn.Linear(3, 2), lr=1e-3)
