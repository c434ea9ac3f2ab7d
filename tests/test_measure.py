"""Tests for lorakit.book.measure: Chapter 7's FLOP counting and latency timing."""

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.book.measure import compare_latency, forward_flops
from lorakit.book.tinyformer import TinyViT, TinyViTConfig
from lorakit.peft_methods import inject_adapters

SMALL = TinyViTConfig(dim=16, depth=2, heads=2, mlp_dim=32)


def _model(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(SMALL)


def test_forward_flops_counts_matmuls_and_merged_lora_costs_nothing_extra():
    assert forward_flops(nn.Linear(4, 3), torch.zeros(2, 4)) == 2 * 2 * 4 * 3
    model = _model()
    X = torch.rand(1, 784)
    base = forward_flops(model, X)
    names = lk.inject_lora(model, ["q_proj", "v_proj"], r=2)
    unmerged = forward_flops(model, X)
    tokens = 17  # one image: 16 patches of 7×7 pixels and the [CLS] token
    # every LoRA layer adds its two thin products, 2·T·(in·r + r·out) FLOPs, and nothing else is counted
    extra = sum(2 * tokens * 2 * (layer.in_features + layer.out_features) for _, layer in lk.lora_layers(model))
    assert names and unmerged == base + extra
    lk.merge_lora(model)
    assert forward_flops(model, X) == base
    adapted = _model()
    inject_adapters(adapted, ["o_proj", "fc2"], bottleneck=2)
    assert forward_flops(adapted, X) > base


def test_compare_latency_ranks_thirty_times_the_work_slower_and_restores_mode():
    small = nn.Linear(256, 256)
    large = nn.Sequential(*[nn.Linear(256, 256) for _ in range(30)])
    small.train()
    times = compare_latency({"small": small, "large": large}, torch.zeros(64, 256), repeats=5, warmup=1)
    assert set(times) == {"small", "large"}
    assert times["large"] > 5 * times["small"]  # 30x the matmuls; a loose bound for a shared machine
    assert small.training and large.training
    with pytest.raises(ValueError, match="empty"):
        compare_latency({}, torch.zeros(1, 8))
    with pytest.raises(ValueError, match="repeats"):
        compare_latency({"small": small}, torch.zeros(1, 256), repeats=0)
