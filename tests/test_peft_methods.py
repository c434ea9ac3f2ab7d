"""Tests for lorakit.peft_methods: BitFit, adapters, prefix tuning, intrinsic dimension."""

import copy

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.peft_methods import (
    AdapterWrapper,
    BottleneckAdapter,
    FastfoodProjection,
    SubspaceModel,
    add_prefix,
    bitfit,
    fwht,
    inject_adapters,
    train_only,
)
from lorakit.book.tinyformer import TinyViT, TinyViTConfig

SMALL = TinyViTConfig(dim=16, depth=2, heads=2, mlp_dim=32)


def _model(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(SMALL)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_train_only_unfreezes_named_parameters_only():
    model = _model()
    n = train_only(model, "head")
    assert _trainable(model) == {"head.weight", "head.bias"}
    assert n == 16 * 5 + 5


def test_train_only_rejects_unknown_name_and_changes_nothing():
    model = _model()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="'haed' matches no parameter"):
        train_only(model, ["head", "haed"])
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}


def test_bitfit_trains_biases_and_head():
    model = _model()
    n = bitfit(model)
    names = _trainable(model)
    assert all(name.endswith("bias") or name.startswith("head.") for name in names)
    assert "blocks.0.attn.q_proj.bias" in names and "blocks.1.ln2.bias" in names
    assert "blocks.0.attn.q_proj.weight" not in names
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_bottleneck_adapter_starts_as_identity_and_validates():
    adapter = BottleneckAdapter(8, 3)
    h = torch.randn(4, 8)
    assert torch.equal(adapter(h), h)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 8 * 3 + 8 + 3
    with pytest.raises(ValueError, match="bottleneck=9"):
        BottleneckAdapter(8, 9)


def test_inject_adapters_keeps_function_and_trains_only_adapters():
    model = _model()
    X = torch.rand(3, 784)
    before = model(X)
    names = inject_adapters(model, ["o_proj", "fc2"], bottleneck=4)
    assert names == ["blocks.0.attn.o_proj", "blocks.0.fc2", "blocks.1.attn.o_proj", "blocks.1.fc2"]
    assert isinstance(model.blocks[0].fc2, AdapterWrapper)
    assert torch.allclose(model(X), before)
    assert all(".adapter." in n for n in _trainable(model))
    assert lk.count_parameters(model).trainable == 4 * (2 * 16 * 4 + 16 + 4)


def test_inject_adapters_rejects_bad_targets_without_changes():
    model = _model()
    reference = copy.deepcopy(model)
    with pytest.raises(ValueError, match="matches no module"):
        inject_adapters(model, ["o_proj", "nope"], bottleneck=2)
    with pytest.raises(TypeError, match="LayerNorm"):
        inject_adapters(model, "ln1", bottleneck=2)
    assert str(model) == str(reference)
    assert all(p.requires_grad for p in model.parameters())


def test_add_prefix_counts_changes_output_and_validates():
    model = _model()
    X = torch.rand(2, 784)
    before = model(X)
    assert add_prefix(model, 3, generator=torch.Generator().manual_seed(0)) == 2 * 2 * 3 * 16
    assert _trainable(model) == {f"blocks.{i}.attn.prefix_{kv}" for i in range(2) for kv in "kv"}
    assert not torch.allclose(model(X), before)
    with pytest.raises(ValueError, match="already has prefixes"):
        add_prefix(model, 2)
    with pytest.raises(TypeError, match="prefix_k"):
        add_prefix(nn.Linear(3, 3), 2)
    with pytest.raises(ValueError, match="n_prefix=0"):
        add_prefix(_model(), 0)


def test_fwht_equals_hadamard_matrix():
    H = torch.tensor([[1.0]])
    for _ in range(3):
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fwht(x), x @ H.T, atol=1e-5)
    assert torch.allclose(fwht(fwht(x)), 8 * x, atol=1e-4)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(6))


def test_fastfood_is_linear_with_bounded_columns():
    P = FastfoodProjection(5, 100, generator=torch.Generator().manual_seed(0))
    a, b = torch.randn(5), torch.randn(5)
    assert torch.allclose(P(a + 2 * b), P(a) + 2 * P(b), atol=1e-5)
    columns = torch.stack([P(e) for e in torch.eye(5)], 1)
    norms = columns.norm(dim=0)
    assert float(norms.max()) <= 1.0 + 1e-5 and float(norms.min()) > 0.3  # about sqrt(100/128)


def test_subspace_model_starts_at_theta0_and_learns():
    model = _model()
    X, y = torch.rand(64, 784), torch.randint(0, 5, (64,))
    reference = model(X).detach()
    sub = SubspaceModel(model, 20, generator=torch.Generator().manual_seed(0))
    assert [n for n, p in sub.named_parameters() if p.requires_grad] == ["z"]
    assert torch.allclose(sub(X), reference, atol=1e-6)
    opt = torch.optim.Adam([sub.z], lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(sub(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    with pytest.raises(ValueError, match="d=0"):
        SubspaceModel(model, 0)
