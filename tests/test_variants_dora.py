"""DoRA: W' = W at init, magnitude = row norms, merge/unmerge exact, bad input refused."""

import pytest
import torch
from torch import nn

from lorakit import merge_lora
from lorakit.variants import DoRALinear


def make(r=3):
    torch.manual_seed(0)
    return DoRALinear(nn.Linear(10, 7), r=r, alpha=2 * r)


def trained(layer):
    with torch.no_grad():
        layer.B.normal_()
        layer.m.mul_(torch.linspace(0.5, 1.5, layer.out_features))
    return layer


def test_init_reproduces_base():
    layer = make()
    x = torch.randn(5, 10)
    torch.testing.assert_close(layer(x), layer.base(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.m, layer.base.weight.norm(dim=1))
    assert layer.A.shape == (3, 10) and layer.B.shape == (7, 3) and layer.m.shape == (7,)


def test_rows_of_adapted_weight_have_norm_m():
    layer = trained(make())
    W = layer.adapted_weight()
    torch.testing.assert_close(W.norm(dim=1), layer.m.detach(), atol=1e-5, rtol=1e-5)


def test_merge_matches_forward_and_unmerge_restores():
    layer = trained(make())
    W0 = layer.base.weight.detach().clone()
    x = torch.randn(6, 10)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-5, rtol=0)


def test_merge_lora_helper_sees_dora_layers():
    model = nn.Sequential(trained(make()))
    x = torch.randn(2, 10)
    y = model(x)
    assert merge_lora(model) == 1
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=0)


def test_gradients_reach_a_b_and_m():
    layer = trained(make())
    layer(torch.randn(4, 10)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.A, layer.B, layer.m))


def test_bad_input():
    with pytest.raises(ValueError, match="all-zero row"):
        lin = nn.Linear(4, 3)
        with torch.no_grad():
            lin.weight[1] = 0
        DoRALinear(lin, r=1)
    with pytest.raises(ValueError, match="dropout"):
        DoRALinear(nn.Linear(4, 3), r=1, dropout=0.1)
    with pytest.raises(ValueError, match="rank"):
        DoRALinear(nn.Linear(4, 3), r=5)
