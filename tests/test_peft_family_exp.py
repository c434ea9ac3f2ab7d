"""Tests of lorakit.book.peft_family_exp (Chapter 7's protocol runs)."""
import pytest
import torch
from torch import nn

from lorakit import protocol
from lorakit.book import peft_family_exp as exp
from lorakit.replicas import train_one, shuffled


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def data(n: int = 48, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=gen)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def test_train_replicas_equals_separate_runs():
    X, y = data()
    trainer = exp.train_replicas(linear, X, y, seeds=[0, 1], lrs=[0.1, 0.01], epochs=2, batch_size=8)
    loss = lambda model, b: nn.functional.cross_entropy(model(b[0]), b[1])
    for k, (seed, lr) in enumerate(((0, 0.1), (1, 0.01))):
        model, _ = train_one(linear, seed, loss, shuffled(X, y, batch_size=8), 12, lr=lr, optimizer="adamw")
        assert torch.allclose(trainer.module_of(k).weight, model.weight, atol=1e-5)


def test_tune_then_seeds_chooses_on_validation_and_refuses_an_opened_split():
    X, y = data()
    X_val, y_val = data(32, seed=1)
    runs = exp.tune_then_seeds(linear, [1e-4, 0.3], [0, 1, 2], X, y, X_val, y_val, batch_size=8)
    assert runs.lr == 0.3 and runs.choice.best == {"lr": 0.3}
    assert sorted(runs.val) == [0, 1, 2] and runs.trainable == 15
    acc = runs.test_accuracy(X_val, y_val)
    assert acc[0] == pytest.approx(runs.val[0]) and isinstance(runs.module(2), nn.Linear)
    split = protocol.make_split(10, seed=0)
    split.final_evaluation()
    with pytest.raises(ValueError, match="already opened"):
        exp.tune_then_seeds(linear, [0.1], [0, 1, 2], X, y, X_val, y_val, split=split, batch_size=8)


def test_downstream_split_extends_the_chapter_task():
    pytest.importorskip("lorakit.book.data")
    from lorakit.book import tinyformer as tf
    split, X_all, y_all = exp.downstream_split(20, 10, 10)
    assert (len(split.train), len(split.val), split.n_test) == (20, 10, 10)
    task = tf.downstream_task(20, 10)
    (X_train,) = split.take("train", X_all)
    assert torch.equal(X_train, task.X)
    (X_test,) = split.final_evaluation(X_all)
    assert torch.equal(X_test, task.X_test)
