"""inject_lora and the whole-model helpers: matching, freezing, counting, merging, unloading."""

import copy

import pytest
import torch
from torch import nn

from lorakit import LoRALinear, count_parameters, inject_lora, lora_layers, merge_lora, unload_lora, unmerge_lora


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.q_proj(x) + self.v_proj(x))


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block(), nn.Linear(8, 3))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_suffix_match_wraps_every_block():
    model = make_model()
    names = inject_lora(model, ["q_proj", "v_proj"], r=2)
    assert names == ["0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)


def test_exact_and_regex_match():
    model = make_model()
    assert inject_lora(model, "1.q_proj", r=2, match="exact") == ["1.q_proj"]
    model = make_model()
    assert inject_lora(model, r"\d\.(q|v)_proj", r=2, match="regex") == ["0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"]


def test_suffix_does_not_match_partial_names():
    model = make_model()
    with pytest.raises(ValueError, match="matches no module"):
        inject_lora(model, "proj", r=2)


def test_everything_else_is_frozen_and_counts_add_up():
    model = make_model()
    total = count_parameters(model).total
    inject_lora(model, ["q_proj", "v_proj"], r=2)
    count = count_parameters(model)
    assert count.trainable == 4 * 2 * (8 + 8)
    assert count.total == total + count.trainable
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{b}.{m}.{f}" for b in "01" for m in ("q_proj", "v_proj") for f in "AB"}


def test_injected_model_starts_unchanged():
    model = make_model()
    x = torch.randn(4, 8)
    before = model(x)
    inject_lora(model, ["q_proj", "v_proj", "2"], r=2)
    assert torch.equal(model(x), before)


def test_merge_unmerge_unload_whole_model():
    model = make_model()
    inject_lora(model, ["q_proj", "v_proj"], r=2)
    for _, layer in lora_layers(model):
        with torch.no_grad():
            layer.B.normal_()
    x = torch.randn(4, 8)
    before = model(x)
    assert merge_lora(model) == 4
    assert merge_lora(model) == 0  # idempotent at the model level
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    assert unmerge_lora(model) == 4
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    unload_lora(model)
    assert not list(lora_layers(model))
    assert type(model[0].q_proj) is nn.Linear
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


def test_merge_lora_is_all_or_nothing():
    model = make_model()
    inject_lora(model, ["q_proj", "v_proj"], r=2)
    layers = [layer for _, layer in lora_layers(model)]
    with torch.no_grad():
        for layer in layers:
            layer.B.normal_()
        layers[-1].B[0, 0] = float("nan")
    snapshot = state(model)
    with pytest.raises(ValueError, match="1.v_proj"):
        merge_lora(model)
    assert not any(layer.merged for layer in layers)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items() if "nan" not in str(v))


def test_unknown_target_changes_nothing():
    model = make_model()
    snapshot = copy.deepcopy(model)
    with pytest.raises(ValueError, match="'k_proj'.*Linear layers are: 0.q_proj"):
        inject_lora(model, ["q_proj", "k_proj"], r=2)
    assert not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters())
    assert str(model) == str(snapshot)


def test_non_linear_target_is_a_type_error_and_changes_nothing():
    model = make_model()
    with pytest.raises(TypeError, match="LayerNorm"):
        inject_lora(model, ["q_proj", "norm"], r=2)
    assert not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_bad_rank_for_one_layer_changes_nothing():
    model = make_model()
    with pytest.raises(ValueError, match="rank r=4 is invalid for a 3x8"):
        inject_lora(model, ["q_proj", "2"], r=4, match="suffix")
    assert not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_injecting_twice_and_other_bad_calls():
    model = make_model()
    inject_lora(model, "q_proj", r=2)
    with pytest.raises(ValueError, match="already carries LoRA"):
        inject_lora(model, "q_proj", r=2)
    with pytest.raises(ValueError, match="match="):
        inject_lora(model, "v_proj", r=2, match="glob")
    with pytest.raises(ValueError, match="no targets"):
        inject_lora(model, [], r=2)


def test_whole_model_helpers_need_lora():
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(make_model())
    with pytest.raises(ValueError, match="no LoRA layers"):
        unmerge_lora(make_model())
