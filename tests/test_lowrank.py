"""Tests for lorakit.book.lowrank: low-rank layers, the three model kinds, init variances, the sweep."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lorakit.book import lowrank
from lorakit.train import accuracy
from lorakit.book.lowrank import (
    SOURCE_RANKS,
    LowRankLinear,
    build_model,
    expected_parameters,
    product_variance,
    theoretical_product_variance,
)

# The source's parameter counts (mathmerizing/LoRALinear, printed by its main.py / formula).
SOURCE_COUNTS = {None: 669_706, 1: 3_876, 2: 6_718, 4: 12_402, 8: 23_770, 16: 46_506, 32: 91_978, 64: 182_922, 128: 364_810}


@pytest.mark.parametrize("r", SOURCE_RANKS)
def test_parameter_counts_match_the_formula_and_the_source(r):
    for kind in ("lowrank", "ae"):
        model = build_model(kind, r)
        n = sum(p.numel() for p in model.parameters())
        assert n == expected_parameters(kind, r) == SOURCE_COUNTS[r]
    assert sum(p.numel() for p in build_model("mlp").parameters()) == SOURCE_COUNTS[None]


def test_lowrank_layer_computes_BA_x_plus_b():
    torch.manual_seed(0)
    layer = LowRankLinear(7, 5, r=3)
    x = torch.randn(4, 7)
    expected = x @ (layer.B @ layer.A).T + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.linalg.matrix_rank(layer.weight) == 3


def test_lowrank_init_bounds():
    torch.manual_seed(0)
    layer = LowRankLinear(784, 512, r=16)
    assert layer.A.abs().max() <= 1 / 4 and layer.B.abs().max() <= 1 / 4
    assert layer.A.abs().max() > 0.24  # really uses the full ±1/sqrt(r) range
    assert layer.bias.abs().max() <= 1 / 28


@pytest.mark.parametrize("kind, r", [("mlp", None), ("lowrank", 2), ("lowrank", 16), ("ae", 2), ("ae", 16)])
def test_measured_product_variance_matches_the_formula(kind, r):
    torch.manual_seed(0)
    measured = product_variance(kind, r, in_features=784, out_features=512, draws=3)
    assert measured == pytest.approx(theoretical_product_variance(kind, r, 784), rel=0.05)


def test_variance_ordering_explains_the_start():
    # lowrank (source init) >> full rank > ae: the ae product is 3x smaller than a default layer.
    full = theoretical_product_variance("mlp", None, 784)
    assert theoretical_product_variance("ae", 8, 784) == pytest.approx(full / 3)
    assert theoretical_product_variance("lowrank", 8, 784) > 20 * full


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: build_model("conv", 4), ValueError, "use 'mlp', 'lowrank' or 'ae'"),
        (lambda: build_model("lowrank"), ValueError, "needs a rank"),
        (lambda: build_model("mlp", 4), ValueError, "leave r=None"),
        (lambda: build_model("ae", 0), ValueError, "must be >= 1"),
        (lambda: build_model("ae", 2.0), TypeError, "must be an int"),
        (lambda: LowRankLinear(4, 4, r=True), TypeError, "must be an int"),
        (lambda: expected_parameters("ae"), ValueError, "needs a rank"),
        (lambda: product_variance("mlp", draws=0), ValueError, "draws"),
    ],
)
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_training_learns_and_is_reproducible():
    # One-hot inputs, 10 classes: the full-rank and low-rank models must both fit them.
    y = torch.arange(256) % 10
    X = torch.zeros(256, 784)
    X[torch.arange(256), y * 7] = 1.0

    def run(kind, r, lr):
        torch.manual_seed(1)
        model = build_model(kind, r)
        accs = lowrank.train_comparison_model(model, X, y, X, y, epochs=10, lr=lr, progress=False).history.metric("accuracy")
        assert accs[-1] == accuracy(model, X, y)  # the recorded number is the model's accuracy
        return accs

    first = run("lowrank", 4, 0.05)
    assert first == run("lowrank", 4, 0.05)
    assert first[0] < 0.5 and first[-1] > 0.95
    assert run("mlp", None, 0.5)[-1] > 0.95


def test_run_comparison_resumes(tmp_path, monkeypatch):
    X = torch.rand(200, 784)
    y = torch.arange(200) % 10
    monkeypatch.setattr("lorakit.book.data.load_fashion_mnist", lambda split: (X, y))
    path = tmp_path / "results.json"
    out = lowrank.run_comparison([("lowrank", 2), ("ae", 2)], epochs=1, results=path, progress=False)
    assert list(out) == ["lowrank_r2", "ae_r2"]
    assert out["ae_r2"]["parameters"] == expected_parameters("ae", 2)
    stored = json.loads(path.read_text())
    assert set(stored["runs"]) == {"lowrank_r2", "ae_r2"}

    calls = []
    original = lowrank.train_comparison_model

    def counting(*args, **kwargs):
        calls.append(kwargs["desc"])
        return original(*args, **kwargs)

    monkeypatch.setattr(lowrank, "train_comparison_model", counting)
    again = lowrank.run_comparison([("lowrank", 2), ("ae", 2), ("mlp", None)], epochs=1, results=path, progress=False)
    assert calls == ["mlp"]  # the two finished runs were read back, not retrained
    assert again["lowrank_r2"] == out["lowrank_r2"]
    # Other settings do not reuse the file's runs.
    calls.clear()
    lowrank.run_comparison([("ae", 2)], epochs=2, results=path, progress=False)
    assert calls == ["ae_r2"]


def test_run_comparison_validates_before_training(tmp_path):
    with pytest.raises(ValueError, match="needs a rank"):
        lowrank.run_comparison([("mlp", None), ("ae", None)], epochs=1, results=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_command_line(tmp_path, monkeypatch, capsys):
    X = torch.rand(128, 784)
    y = torch.arange(128) % 10
    monkeypatch.setattr("lorakit.book.data.load_fashion_mnist", lambda split: (X, y))
    path = tmp_path / "full.json"
    out = lowrank.main(["--epochs", "1", "--ranks", "2", "--kinds", "ae", "--results", str(path), "--device", "cpu"])
    assert list(out) == ["ae_r2"] and path.is_file()
    assert "ae_r2" in capsys.readouterr().out


@pytest.mark.parametrize("kind, r", [("lowrank", 4), ("ae", 2), ("mlp", None)])
def test_the_stored_sweep_equals_one_sequential_run_per_seed(kind, r):
    """The replica engine's sweep point equals the source's recipe run one seed at a time (float rounding)."""
    from lorakit.book.data import load_fashion_mnist

    config = {"kind": kind, "r": r, "seeds": [0, 3], "epochs": 2, "lr": 1e-3, "batch_size": 64, "n_train": 320}
    out = lowrank.run_source_sweep(config)
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    for k, seed in enumerate(config["seeds"]):
        torch.manual_seed(seed)
        model = build_model(kind, r)
        res = lowrank.train_comparison_model(model, X[:320], y[:320], X_test, y_test, epochs=2, progress=False)
        assert out["test_accuracy"][k] == pytest.approx(res.history.metric("accuracy"), abs=2e-4)  # <= 2 images
    assert out["parameters"] == expected_parameters(kind, r)
    assert len(out["train_loss"]) == 2 and all(len(curve) == 2 for curve in out["train_loss"])


def test_the_sweep_experiment_is_the_sources_grid():
    points = lowrank.SOURCE_SWEEP.points()
    assert len(points) == 17 and points[0] == {"kind": "mlp", "r": None}
    assert lowrank.SOURCE_SWEEP.settings["epochs"] == 100 and lowrank.SOURCE_SWEEP.check == {"epochs": 1}
