"""Tests for lorakit.book.transfer: the pretrained MLP and the rotated downstream task."""

from __future__ import annotations

import pytest
import torch

from lorakit.book import transfer
from lorakit.book.data import load_fashion_mnist
from lorakit.train import accuracy
from lorakit.inject import count_parameters, lora_layers
from lorakit.book.lowrank import quickstart_mlp
from lorakit.book.scaffold import rotate
from lorakit.book.transfer import (
    downstream_task,
    prepare_finetuning,
    pretrained_mlp,
)


def test_downstream_task_is_rotated_and_disjoint_from_pretraining():
    X_train, y_train, X_test, y_test = downstream_task(500)
    X, y = load_fashion_mnist("train")
    assert X_train.shape == (500, 784) and X_test.shape == (10000, 784)
    assert torch.equal(X_train, rotate(X[transfer.PRETRAIN_N : transfer.PRETRAIN_N + 500]))
    assert torch.equal(y_train, y[transfer.PRETRAIN_N : transfer.PRETRAIN_N + 500])
    Xt, yt = load_fashion_mnist("test")
    assert torch.equal(X_test, rotate(Xt)) and torch.equal(y_test, yt)
    with pytest.raises(ValueError, match="1..10000"):
        downstream_task(10001)


@pytest.mark.skipif(not transfer.PRETRAINED_PATH.is_file(), reason="stored pretrained weights are absent")
def test_stored_model_is_good_upright_and_poor_on_the_shifted_task():
    model = pretrained_mlp()
    X, y = load_fashion_mnist("test")
    assert accuracy(model, X, y) > 0.84
    _, _, X_shift, y_shift = downstream_task(10)
    assert accuracy(model, X_shift, y_shift) < 0.3
    assert all(p.requires_grad for p in model.parameters())


def test_pretrain_is_deterministic_and_leaves_the_global_rng_alone(monkeypatch):
    monkeypatch.setattr(transfer, "PRETRAIN_N", 512)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    a = transfer.pretrain(seed=5, epochs=1, progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.get_num_threads() == threads
    b = transfer.pretrain(seed=5, epochs=1, progress=False)
    c = transfer.pretrain(seed=6, epochs=1, progress=False)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a[0].weight, c[0].weight)


def test_load_if_present_else_train_and_save(tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(progress=True):
        calls.append(1)
        torch.manual_seed(0)
        return quickstart_mlp().eval()

    monkeypatch.setattr(transfer, "pretrain", fake_pretrain)
    path = tmp_path / "sub" / "mlp.safetensors"
    first = pretrained_mlp(path)
    assert path.is_file() and calls == [1]
    second = pretrained_mlp(path)
    assert calls == [1]  # loaded, not retrained
    for pa, pb in zip(first.parameters(), second.parameters()):
        assert torch.equal(pa, pb)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["mlp.safetensors"]


def test_wrong_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="not .lorakit-fashion-mlp/1."):
        pretrained_mlp(path)


@pytest.mark.parametrize(
    "method, r, trainable",
    [
        ("frozen", None, 0),
        ("last_layer", None, 512 * 10 + 10),
        ("full", None, 669_706),
        ("lora", 1, 784 + 512 + 512 + 512),
        ("lora", 16, 16 * (784 + 512 + 512 + 512)),
    ],
)
def test_prepare_finetuning_counts(method, r, trainable):
    model = prepare_finetuning(quickstart_mlp(), method, r)
    assert count_parameters(model).trainable == trainable
    assert [name for name, _ in lora_layers(model)] == (["0", "2"] if method == "lora" else [])


@pytest.mark.parametrize(
    "method, r, message",
    [("lora", None, "pass a rank"), ("full", 4, "pass a rank"), ("prefix", None, "unknown")],
)
def test_prepare_finetuning_refuses_bad_input(method, r, message):
    model = quickstart_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prepare_finetuning(model, method, r)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_command_compares_bit_for_bit(tmp_path, monkeypatch, capsys):
    def fake_pretrain(progress=True):
        torch.manual_seed(0)
        return quickstart_mlp().eval()

    monkeypatch.setattr(transfer, "pretrain", fake_pretrain)
    path = tmp_path / "mlp.safetensors"
    assert transfer.main(["--check", "--path", str(path)]) == 1  # nothing stored yet
    assert transfer.main(["--write", "--path", str(path)]) == 0
    assert transfer.main(["--check", "--path", str(path)]) == 0
    assert "tensors: identical; file bytes: identical" in capsys.readouterr().out
    with torch.no_grad():
        model = pretrained_mlp(path)
        model[0].weight[0, 0] += 1e-6
    transfer.save_pretrained(model, path)
    assert transfer.main(["--check", "--path", str(path)]) == 1
    assert "tensors: DIFFERENT" in capsys.readouterr().out
