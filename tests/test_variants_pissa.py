"""PiSSA: the principal part lives in A, B; merged weight = W at init; residual is the rest."""

import pytest
import torch
from torch import nn

from lorakit.variants import PiSSALinear


def make(r=3, alpha=3.0, out=8, inp=12):
    torch.manual_seed(0)
    base = nn.Linear(inp, out)
    W = base.weight.detach().clone()
    return PiSSALinear(base, r=r, alpha=alpha), W


@pytest.mark.parametrize("alpha", [1.0, 3.0, 16.0])
def test_merged_weight_is_w_at_init(alpha):
    layer, W = make(alpha=alpha)
    torch.testing.assert_close(layer.merged_weight(), W, atol=1e-6, rtol=0)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), x @ W.T + layer.base.bias, atol=1e-5, rtol=0)


def test_adapter_is_top_r_and_residual_has_the_rest():
    layer, W = make(r=3)
    S = torch.linalg.svdvals(W)
    torch.testing.assert_close(torch.linalg.svdvals(layer.delta_weight())[:3], S[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(layer.base.weight)[:5], S[3:], atol=1e-5, rtol=1e-5)
    assert layer.A.shape == (3, 12) and layer.B.shape == (8, 3)
    assert not layer.base.weight.requires_grad and layer.A.requires_grad


def test_merge_unmerge_round_trip():
    layer, W = make()
    layer.merge()
    torch.testing.assert_close(layer.base.weight, W, atol=1e-6, rtol=0)
    layer.unmerge()
    layer.merge()
    torch.testing.assert_close(layer.base.weight, W, atol=1e-6, rtol=0)


def test_bad_input_changes_nothing():
    base = nn.Linear(4, 3)
    W = base.weight.detach().clone()
    with pytest.raises(ValueError, match="rank"):
        PiSSALinear(base, r=4)
    assert torch.equal(base.weight, W)
    with pytest.raises(TypeError, match="nn.Linear"):
        PiSSALinear(nn.Conv1d(1, 1, 1), r=1)
    layer, _ = make()
    with pytest.raises(ValueError, match="principal part"):
        layer.reset_lora_parameters()
