"""Tests for lorakit.book.scaffold: the one task type, rotation, fine-tuning helper and weight file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit.book import tinyformer as tf
from lorakit.book.lowrank import quickstart_mlp
from lorakit.book.scaffold import (
    FinetuneResult,
    Task,
    finetune,
    load_or_pretrain,
    load_weights,
    optimizer_state_bytes,
    rotate,
    save_weights,
)
from lorakit.book.transfer import prepare_finetuning
from lorakit.inject import lora_layers


def test_rotate():
    X = torch.arange(2 * 784.0).reshape(2, 784)
    once = rotate(X)
    assert not torch.equal(once, X)
    assert torch.equal(rotate(once, 3), X)
    img = X[0].reshape(28, 28)
    assert once[0].reshape(28, 28)[0, 0] == img[0, 27]  # counter-clockwise: top-right goes top-left
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        rotate(torch.zeros(3, 28, 28))


def test_task_unpacks_in_order():
    parts = [torch.zeros(3, 2), torch.ones(3), torch.zeros(1, 2), torch.ones(1)]
    X, y, X_test, y_test = Task(*parts)
    assert all(a is b for a, b in zip((X, y, X_test, y_test), parts))


def test_finetune_trains_only_the_adapter_and_reports_memory():
    torch.manual_seed(0)
    base = quickstart_mlp()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = prepare_finetuning(base, "lora", r=2)
    X = torch.rand(128, 784)
    y = torch.arange(128) % 10
    res = finetune(model, X, y, X, y, epochs=2, eval_every=1, progress=False)
    assert isinstance(res, FinetuneResult) and len(res.history.metric("accuracy")) == 2
    assert res.accuracy == res.history.metric("accuracy")[-1]
    assert res.trainable == 2 * (784 + 512 + 512 + 512)
    # Adam(W) keeps two float32 moments per trainable parameter (+ a step counter per tensor).
    assert res.optimizer_bytes == 2 * 4 * res.trainable + 4 * 4
    for name, layer in lora_layers(model):
        assert torch.equal(layer.base.weight, frozen[f"{name}.weight"])
        assert layer.B.abs().sum() > 0
    frozen_model = prepare_finetuning(quickstart_mlp(), "frozen")
    res = finetune(frozen_model, X, y, X, y, epochs=3, progress=False)
    assert res.trainable == 0 and len(res.history.metric("accuracy")) == 1 and res.step_seconds == 0.0


def test_finetune_learns_evaluates_at_the_end_and_validates():
    torch.manual_seed(0)
    model = tf.TinyViT(tf.TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
    X, y = torch.rand(64, 784), torch.randint(0, 5, (64,))
    res = finetune(model, X, y, X, y, lr=3e-3, epochs=8, batch_size=16,
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert res.history.train_loss[-1] < res.history.train_loss[0]
    assert [e["epoch"] for e in res.history.evals] == [8]  # scored after the last epoch only
    with pytest.raises(ValueError, match="optimizer='lion' is unknown"):
        finetune(model, X, y, X, y, epochs=1, optimizer="lion", progress=False)


def test_finetune_adamw_without_decay_is_adam_and_sgd_is_the_plain_rule():
    X, y = torch.rand(32, 8), torch.randint(0, 3, (32,))
    weights = {}
    for name in ("adam", "adamw", "sgd"):
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
        finetune(model, X, y, X, y, epochs=2, lr=1e-2, optimizer=name, sampling="sequential", progress=False)
        weights[name] = model.weight.detach().clone()
    assert torch.equal(weights["adam"], weights["adamw"])
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    w0 = model.weight.detach().clone()
    finetune(model, X, y, X, y, epochs=1, lr=1e-2, optimizer="sgd", batch_size=32, progress=False)
    torch.manual_seed(0)
    reference = nn.Linear(8, 3)
    nn.functional.cross_entropy(reference(X), y).backward()
    assert torch.allclose(model.weight, w0 - 1e-2 * reference.weight.grad)


def test_optimizer_state_bytes_counts_sgd_as_zero():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(10)
    opt.step()
    assert optimizer_state_bytes(opt) == 0


def test_weight_file_round_trips_and_refuses_other_formats(tmp_path):
    model = nn.Linear(3, 2)
    path = save_weights(model, tmp_path / "w.safetensors", format="demo/1", metadata={"recipe": {"seed": 0}})
    tensors, meta = load_weights(path, format="demo/1")
    assert torch.equal(tensors["weight"], model.weight) and meta == {"format": "demo/1", "recipe": {"seed": 0}}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary file left
    with pytest.raises(ValueError, match="holds format 'demo/1', not 'other/1'"):
        load_weights(path, format="other/1")
    (tmp_path / "torn.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="torn.safetensors is not a readable lorakit weight file"):
        load_weights(tmp_path / "torn.safetensors", format="demo/1")


def test_load_or_pretrain_trains_once_then_loads(tmp_path):
    calls = []

    def pretrain():
        calls.append(1)
        torch.manual_seed(0)
        return nn.Linear(3, 2), {"recipe": "demo"}

    path = tmp_path / "w.safetensors"
    first, meta = load_or_pretrain(path, format="demo/1", build=lambda meta: nn.Linear(3, 2), pretrain=pretrain)
    second, _ = load_or_pretrain(path, format="demo/1", build=lambda meta: nn.Linear(3, 2), pretrain=pretrain)
    assert calls == [1] and meta["recipe"] == "demo" and not first.training
    assert torch.equal(first.weight, second.weight)
    with pytest.raises(ValueError, match="but the model needs"):
        load_or_pretrain(path, format="demo/1", build=lambda meta: nn.Linear(4, 2), pretrain=pretrain)
