"""lorakit.variants._common: wrapping Linear layers with any LoRA variant; measuring update rank."""

import pytest
import torch
from torch import nn

from lorakit import LoRALinear, count_parameters
from lorakit.variants import DoRALinear, PiSSALinear, update_rank, wrap_linears


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_wrap_freezes_base_and_trains_only_adapter_parameters():
    model = mlp()
    names = wrap_linears(model, ["0", "2"], lambda lin: DoRALinear(lin, r=2), match="exact")
    assert names == ["0", "2"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.A", "0.B", "0.m", "2.A", "2.B", "2.m"}
    assert count_parameters(model).trainable == (2 * 8 + 6 * 2 + 6) + (2 * 6 + 3 * 2 + 3)


def test_bad_target_changes_nothing():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="matches no module"):
        wrap_linears(model, ["0", "nope"], lambda lin: PiSSALinear(lin, r=2))
    with pytest.raises(TypeError, match="nn.Linear"):
        wrap_linears(model, "1", lambda lin: LoRALinear(lin, r=1), match="exact")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_failing_factory_restores_weights_rewritten_by_earlier_wrappers():
    model = mlp()
    W0 = model[0].weight.detach().clone()
    calls = []

    def factory(lin):
        calls.append(lin)
        if len(calls) == 2:
            raise ValueError("boom")
        return PiSSALinear(lin, r=2)  # rewrites lin.weight with the residual

    with pytest.raises(ValueError, match="boom"):
        wrap_linears(model, ["0", "2"], factory, match="exact")
    assert torch.equal(model[0].weight, W0)
    assert isinstance(model[0], nn.Linear)


def test_factory_must_return_a_lora_layer():
    with pytest.raises(TypeError, match="LoRALinear"):
        wrap_linears(mlp(), "0", lambda lin: nn.Identity(), match="exact")


def test_update_rank_counts_independent_directions():
    torch.manual_seed(0)
    low = torch.randn(10, 3) @ torch.randn(3, 12)
    assert update_rank(low) == 3
    assert update_rank(torch.zeros(4, 4)) == 0
    assert update_rank(torch.randn(6, 6)) == 6
    with pytest.raises(ValueError, match="2-D"):
        update_rank(torch.zeros(3))
    with pytest.raises(ValueError, match="rtol"):
        update_rank(low, rtol=2.0)
