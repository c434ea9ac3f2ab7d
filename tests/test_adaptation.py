"""Tests for lorakit.book.adaptation: Chapter 3's stored comparison under the protocol."""

from __future__ import annotations

import copy

import pytest
import torch

from lorakit import results
from lorakit.book import adaptation, transfer
from lorakit.book.data import load_fashion_mnist
from lorakit.book.lowrank import quickstart_mlp
from lorakit.book.scaffold import rotate


def test_validation_split_is_rotated_and_disjoint_from_training_and_pretraining():
    X_val, y_val = adaptation.validation_set()
    X, y = load_fashion_mnist("train")
    start = transfer.PRETRAIN_N + transfer.DOWNSTREAM_N_TRAIN
    assert adaptation.N_VAL == 5000 == len(X_val) == 60_000 - start
    assert torch.equal(X_val, rotate(X[start:])) and torch.equal(y_val, y[start:])
    X_train = transfer.downstream_task().X
    assert not any(torch.equal(X_val[0], row) for row in X_train[:50])


def test_grid_declares_every_method_rate_and_seed():
    points = adaptation.ADAPTATION.points()
    assert len(points) == 5 + 7 * len(adaptation.LR_GRID) * len(adaptation.SEEDS) == 180
    for method, r in adaptation.METHODS:
        mine = [p for p in points if (p["method"], p["r"]) == (method, r)]
        lrs = {p["lr"] for p in mine}
        assert lrs == ({None} if method == "frozen" else set(adaptation.LR_GRID))
        assert sorted({p["seed"] for p in mine}) == list(adaptation.SEEDS)
    assert len(adaptation.SEEDS) == 5


def _config(**kw):
    return {"method": "lora", "r": 1, "lr": 3e-3, "seed": 0, "epochs": 1, "batch_size": 64} | kw


def test_a_run_is_deterministic_and_each_seed_is_a_fresh_draw():
    a, b, c = (adaptation.run_adaptation(_config(seed=s)) for s in (0, 0, 1))
    assert a == b
    assert a["val_acc"] != c["val_acc"]
    assert a["trainable"] == (784 + 512) + (512 + 512)  # r = 1 on both hidden layers
    assert len(a["val_acc"]) == 1 and 0.0 <= a["test_acc"] <= 1.0


def test_each_seed_draws_its_own_lora_init_and_b_starts_at_zero():
    m0 = adaptation._model("lora", 4, 0)
    m0b = adaptation._model("lora", 4, 0)
    m1 = adaptation._model("lora", 4, 1)
    assert torch.equal(m0[0].A, m0b[0].A) and not torch.equal(m0[0].A, m1[0].A)
    assert torch.equal(m0[0].B, torch.zeros_like(m0[0].B))


def test_step_memory_counts_what_lora_shrinks_and_leaves_the_model_alone():
    model = quickstart_mlp()
    X, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
    full = adaptation.step_memory(transfer.prepare_finetuning(copy.deepcopy(model), "full"), X, y)
    lora_model = transfer.prepare_finetuning(copy.deepcopy(model), "lora", r=2)
    before = {k: v.clone() for k, v in lora_model.state_dict().items()}
    lora = adaptation.step_memory(lora_model, X, y)
    assert all(torch.equal(before[k], v) for k, v in lora_model.state_dict().items())
    assert full["gradients"] == full["weights"] == 4 * 669_706
    assert lora["gradients"] == 4 * (2 * (784 + 512) + 2 * (512 + 512))
    assert full["optimizer"] > 2 * full["gradients"] and lora["optimizer"] > 2 * lora["gradients"]
    assert lora["activations"] >= full["activations"] * 0.99  # LoRA keeps the frozen layers' inputs
    assert adaptation.step_memory(model.requires_grad_(False), X, y)["activations"] == 0


@pytest.mark.skipif(not (adaptation.RESULTS_DIR / "ch03_adaptation.jsonl").is_file(), reason="not stored yet")
def test_stored_file_is_complete_and_current():
    stored = results.load(adaptation.results_path(), adaptation.ADAPTATION)
    assert stored.complete and len(stored.rows()) == 180
    frozen = [r for r in stored.rows() if r["method"] == "frozen"]
    assert len({r["test_acc"] for r in frozen}) == 1
