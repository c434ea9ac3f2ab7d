"""Tests of lorakit.replicas: K replicas in one computation equal K sequential torch.optim runs.

Tolerance: float32, ``rtol=1e-5, atol=1e-6`` (``torch.testing.assert_close``) on every step's loss and
on the parameters after 40 steps. The replica engine computes the same products as a sequential run,
but batched (bmm instead of mm) and, with ``merge_lora=True``, as ``x (W + BA)ᵀ`` instead of
``x Wᵀ + (x Aᵀ) Bᵀ``, and ``torch.optim`` fuses ``p - lr·g`` where the engine rounds ``lr·g`` first:
only the summation order and the last bits of float32 change (~1e-7 relative per operation).
Measured here: losses agree to <= 2.4e-7 relative (two ulps) and parameters to <= 1.4e-5 relative
even on entries near 1e-3; a real error (a wrong update rule, a swapped learning rate, a missing or
coupled-instead-of-decoupled weight decay) moves parameters by 1e-3 relative or more in 40 steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lorakit.layer import LoRALinear
from lorakit.replicas import ReplicaTrainer, blocked, lora_rank_masks, mse_loss, shuffled, stacked, train_one

RTOL, ATOL = 1e-5, 1e-6
STEPS = 40
M = torch.randn(6, 2, generator=torch.Generator().manual_seed(99))


def lora_net(seed: int, *, rank: int = 3, shared_base: bool = True) -> nn.Module:
    """Frozen base (seed 1234 unless ``shared_base=False``), LoRA factors and head bias from ``seed``."""
    torch.manual_seed(1234 if shared_base else seed)
    layers = [nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)]
    torch.manual_seed(seed)
    net = nn.Sequential(
        LoRALinear(layers[0], r=rank, alpha=rank), nn.ReLU(), LoRALinear(layers[1], r=rank, alpha=rank), nn.Tanh(),
        layers[2],
    )
    for lora in (net[0], net[2]):
        with torch.no_grad():
            lora.B.normal_(0, 0.1)  # nonzero B, so that A gets gradients from the first step
    net[4].weight.requires_grad_(False)  # a frozen head weight, a trainable head bias
    return net


def loss_fn(model, batch):
    X, y = batch
    return F.mse_loss(model(X), y)


data = stacked(lambda g: (X := torch.randn(32, 6, generator=g), torch.sin(X @ M)))

SEEDS = [3, 4, 5, 6]
LRS = {"sgd": [0.2, 0.1, 0.05, 0.3], "adam": [1e-2, 3e-3, 1e-3, 2e-2], "adamw": [1e-2, 3e-3, 1e-3, 2e-2]}
WDS = [0.0, 0.01, 0.1, 0.05]


@pytest.mark.parametrize("engine", ["bmm", "vmap"])
@pytest.mark.parametrize("merge, chunk", [(True, None), (False, None), ("auto", 3)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_replicas_equal_sequential_runs(optimizer, merge, chunk, engine):
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    trainer = ReplicaTrainer(
        lora_net, K=4, seeds=SEEDS, lr=LRS[optimizer], weight_decay=WDS, optimizer=optimizer, merge_lora=merge,
        chunk=chunk, engine=engine, **extra
    )
    assert trainer.engine == engine
    history = trainer.fit(loss_fn, data, STEPS, progress=False)
    assert history.loss.shape == (STEPS, 4)
    assert "0.base.weight" in trainer._shared  # the equal frozen weights are shared, not stacked
    for k, seed in enumerate(SEEDS):
        model, losses = train_one(
            lora_net, seed, loss_fn, data, STEPS, lr=LRS[optimizer][k], weight_decay=WDS[k], optimizer=optimizer,
            **extra
        )
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)
        reference = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert set(reference) == set(trainer.names)
        for name, value in trainer.state_dict(k).items():
            torch.testing.assert_close(value, reference[name].detach(), rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("engine", ["bmm", "vmap"])
def test_stacked_frozen_weights_and_module_of(engine):
    fn = lambda s: lora_net(s, shared_base=False)  # noqa: E731
    trainer = ReplicaTrainer(fn, K=3, seeds=[2, 1, 0], lr=1e-2, optimizer="adam", chunk=2, engine=engine)
    assert "0.base.weight" in trainer._stacked
    trainer.fit(loss_fn, data, 10, progress=False)
    model, _ = train_one(fn, 1, loss_fn, data, 10, lr=1e-2, optimizer="adam")
    X = torch.randn(16, 6)
    with torch.no_grad():
        torch.testing.assert_close(trainer.module_of(1)(X), model(X), rtol=RTOL, atol=ATOL)
        per_replica = trainer.evaluate(lambda m, x: m(x).pow(2).mean(), X)
        torch.testing.assert_close(per_replica[1], model(X).pow(2).mean(), rtol=RTOL, atol=ATOL)


def test_seeds_reproduce_and_differ():
    def run():
        t = ReplicaTrainer(lora_net, K=3, seeds=[0, 1, 0], lr=1e-2, optimizer="adam")
        return t, t.fit(loss_fn, data, 5, progress=False)

    (t1, h1), (t2, h2) = run(), run()
    assert torch.equal(t1.params, t2.params) and torch.equal(h1.loss, h2.loss)
    assert torch.equal(h1.loss[:, 0], h1.loss[:, 2])  # same seed, same data stream, same run
    assert not torch.equal(h1.loss[:, 0], h1.loss[:, 1])


def test_rank_masks_give_a_lower_rank_model():
    ranks = [1, 3]
    trainer = ReplicaTrainer(lora_net, K=2, seeds=[7, 7], lr=1e-2, optimizer="adam",
                             masks=lora_rank_masks(lora_net(0), ranks))
    trainer.fit(loss_fn, data, 10, progress=False)
    A = trainer.state_dict(0)["0.A"]
    assert torch.count_nonzero(A[1:]) == 0 and torch.count_nonzero(trainer.state_dict(0)["0.B"][:, 1:]) == 0

    def rank_one(seed):  # the rank-3 draw, cut to rank 1 (alpha = r: scaling 1 at every rank)
        big = lora_net(seed)
        for i in (0, 2):
            small = LoRALinear(big[i].base, r=1, alpha=1)
            with torch.no_grad():
                small.A.copy_(big[i].A[:1])
                small.B.copy_(big[i].B[:, :1])
            big[i] = small
        return big

    model, _ = train_one(rank_one, 7, loss_fn, data, 10, lr=1e-2, optimizer="adam")
    torch.testing.assert_close(A[:1], model[0].A.detach(), rtol=RTOL, atol=ATOL)


def full_net(seed: int) -> nn.Module:
    """Every weight trainable (full training), no LoRA."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5, bias=False), nn.Tanh(), nn.Linear(5, 2))


@pytest.mark.parametrize("columns", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_bmm_engine_full_training_equals_sequential_runs(optimizer, columns, monkeypatch):
    from lorakit.replicas import _GroupedStack

    monkeypatch.setattr(_GroupedStack, "COLUMNS_MAX_WIDTH", 64 if columns else 0)  # feature- or row-major
    trainer = ReplicaTrainer(full_net, K=3, seeds=SEEDS[:3], lr=LRS[optimizer][:3], weight_decay=WDS[:3],
                             optimizer=optimizer, chunk=2)
    assert trainer.engine == "bmm" and trainer._stack.columns is columns
    history = trainer.fit(loss_fn, data, STEPS, progress=False)
    for k, seed in enumerate(SEEDS[:3]):
        model, losses = train_one(full_net, seed, loss_fn, data, STEPS, lr=LRS[optimizer][k], weight_decay=WDS[k],
                                  optimizer=optimizer)
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)
        for name, value in trainer.state_dict(k).items():
            torch.testing.assert_close(value, dict(model.named_parameters())[name].detach(), rtol=RTOL, atol=ATOL)


class Factored(nn.Module):
    """``B A x + b`` held as two factors, declared to the bmm engine through ``replica_dense``."""

    def __init__(self, n_in: int, n_out: int, r: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(r, n_in) / n_in**0.5)
        self.B = nn.Parameter(torch.randn(n_out, r) / r**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def replica_dense(self):
        return [("A", None), ("B", "bias")]


def nested_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Factored(6, 8, 2), nn.ReLU(),
                         nn.Sequential(nn.Linear(8, 3, bias=False), nn.Linear(3, 8)), nn.Tanh(), nn.Linear(8, 2))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bmm_engine_takes_nested_sequentials_and_factored_layers(optimizer):
    trainer = ReplicaTrainer(nested_net, K=3, seeds=SEEDS[:3], lr=LRS[optimizer][:3], optimizer=optimizer)
    assert trainer.engine == "bmm"
    assert [op.W for op in trainer._stack.ops if not isinstance(op, str)] == [
        "0.A", "0.B", "2.0.weight", "2.1.weight", "4.weight"]
    history = trainer.fit(loss_fn, data, STEPS, progress=False)
    for k, seed in enumerate(SEEDS[:3]):
        model, losses = train_one(nested_net, seed, loss_fn, data, STEPS, lr=LRS[optimizer][k], optimizer=optimizer)
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)
        for name, value in trainer.state_dict(k).items():
            torch.testing.assert_close(value, dict(model.named_parameters())[name].detach(), rtol=RTOL, atol=ATOL)


def test_a_factored_layer_naming_a_missing_tensor_falls_back_to_vmap():
    class Wrong(Factored):
        def replica_dense(self):
            return [("A", None), ("C", "bias")]

    trainer = ReplicaTrainer(lambda s: nn.Sequential(Wrong(6, 2, 2)), K=2, lr=1e-2)
    assert trainer.engine == "vmap"


def test_book_fnn_uses_the_bmm_engine_and_equals_sequential_runs():
    from lorakit.book.expressive.methods import trainable_parameters
    from lorakit.book.expressive.models import make_fnn_pair

    def fnn(seed):
        frozen = make_fnn_pair(6, 1, 2, 3, seed=seed)[1]
        trainable_parameters(frozen, "sgd")
        return frozen

    target = make_fnn_pair(6, 1, 2, 3, seed=0)[0]
    fnn_data = stacked(lambda g: (X := torch.randn(32, 6, generator=g), target(X).detach()))
    trainer = ReplicaTrainer(fnn, K=2, seeds=[1, 2], lr=1e-2, optimizer="adam")
    assert trainer.engine == "bmm"
    history = trainer.fit(loss_fn, fnn_data, 20, progress=False)
    for k, seed in enumerate([1, 2]):
        _, losses = train_one(fnn, seed, loss_fn, fnn_data, 20, lr=1e-2, optimizer="adam")
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bmm_engine_with_the_one_pass_mse_loss_equals_sequential_runs(optimizer):
    trainer = ReplicaTrainer(lora_net, K=4, seeds=SEEDS, lr=LRS[optimizer], weight_decay=WDS, optimizer=optimizer,
                             chunk=3)
    history = trainer.fit(mse_loss, data, STEPS, progress=False)
    for k, seed in enumerate(SEEDS):
        model, losses = train_one(lora_net, seed, loss_fn, data, STEPS, lr=LRS[optimizer][k], weight_decay=WDS[k],
                                  optimizer=optimizer)  # the plain F.mse_loss loss on the sequential side
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)
        for name, value in trainer.state_dict(k).items():
            torch.testing.assert_close(value, dict(model.named_parameters())[name].detach(), rtol=RTOL, atol=ATOL)


def test_bmm_engine_refuses_what_it_cannot_compute():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = lora_net(0)

        def forward(self, x):
            return self.net(x) * 2

    with pytest.raises(ValueError, match="engine='bmm' needs a sequential stack"):
        ReplicaTrainer(lambda s: Wrapped(), K=2, engine="bmm")
    assert ReplicaTrainer(lambda s: Wrapped(), K=2).engine == "vmap"
    trainer = ReplicaTrainer(lora_net, K=2)
    with pytest.raises(ValueError, match="calls the model differently"):
        trainer.fit(lambda m, b: F.mse_loss(m(b[0] * 1.0), b[1]), data, 1, progress=False)


def test_bmm_engine_leaves_a_loss_gradient_that_aliases_the_batch_alone():
    """d/d out of (out · y).sum() is y itself: the in-place backward must not write into the batch."""
    X, y = torch.randn(2, 16, 6), torch.randn(2, 16, 2)
    y0 = y.clone()
    dot = lambda m, b: (m(b[0]) * b[1]).sum()  # noqa: E731
    engines = [ReplicaTrainer(lora_net, K=2, lr=1e-2, optimizer="sgd", engine=e) for e in ("bmm", "vmap")]
    for t in engines:
        t.step(dot, (X, y))
    assert torch.equal(y, y0)
    torch.testing.assert_close(engines[0].params, engines[1].params, rtol=RTOL, atol=ATOL)


def test_blocked_streams_equal_per_step_draws():
    per_step = stacked(lambda g: torch.randn(32, 6, generator=g))
    in_blocks = blocked(lambda g, n: torch.randn(n, 32, 6, generator=g), block=3,
                        then=lambda t: (t[0], t[0].sum(-1)))
    g1 = [torch.Generator().manual_seed(s) for s in (0, 1)]
    g2 = [torch.Generator().manual_seed(s) for s in (0, 1)]
    for step in range(7):
        X, total = in_blocks(step, g1)
        assert torch.equal(X, per_step(step, g2)[0]) and torch.equal(total, X.sum(-1))
    with pytest.raises(ValueError, match="request steps in order"):
        blocked(lambda g, n: torch.randn(n, 2, generator=g), block=3)(1, g1)


def test_shuffled_gives_each_replica_its_own_order():
    X = torch.arange(12.0).unsqueeze(1)
    d = shuffled(X, batch_size=4)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    epoch = torch.cat([d(step, gens)[0] for step in range(3)], dim=1)  # (2, 12, 1)
    assert not torch.equal(epoch[0], epoch[1])
    for k in range(2):
        assert sorted(epoch[k, :, 0].tolist()) == X[:, 0].tolist()


def test_eval_hook_and_history():
    X = torch.randn(20, 6)
    trainer = ReplicaTrainer(lora_net, K=2, lr=1e-2, optimizer="adamw", weight_decay=[0.0, 0.1])
    h = trainer.fit(loss_fn, data, 6, eval_every=3, record_every=2, progress=False,
                    eval_fn=lambda t, step: t.evaluate(lambda m, x: m(x).abs().mean(), X))
    assert h.steps == [0, 2, 4] and h.loss.shape == (3, 2)
    assert [s for s, _ in h.evals] == [3, 6] and h.evals[0][1].shape == (2,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"K": 0}, "K=0 must be an int >= 1"),
        ({"K": 3, "lr": [0.1, 0.2]}, "lr has 2 values for K=3"),
        ({"K": 2, "weight_decay": [0.1, 0.2, 0.3]}, "weight_decay has 3 values for K=2"),
        ({"K": 2, "lr": [0.1, -1.0]}, "lr=-1.0 is invalid"),
        ({"K": 2, "seeds": [1]}, "seeds has 1 values for K=2"),
        ({"K": 2, "optimizer": "rmsprop"}, "optimizer='rmsprop' is unknown"),
        ({"K": 2, "masks": {"0.A": torch.ones(3, 3, 6)}}, "mask of 0.A has shape"),
        ({"K": 2, "masks": {"0.base.weight": torch.ones(2, 6, 6)}}, "are not trainable parameters"),
        ({"K": 2, "chunk": 0}, "chunk=0 must be None or an int >= 1"),
        ({"K": 2, "merge_lora": "yes"}, "merge_lora='yes' must be"),
        ({"K": 2, "engine": "jit"}, "engine='jit' must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        ReplicaTrainer(lora_net, **kwargs)


def test_bad_fit_arguments():
    trainer = ReplicaTrainer(lora_net, K=2)
    with pytest.raises(ValueError, match="steps=0 must be an int >= 1"):
        trainer.fit(loss_fn, data, 0)
    with pytest.raises(ValueError, match="leading dimension 1"):
        trainer.fit(loss_fn, lambda step, gens: data(step, gens[:1]), 1, progress=False)


def test_benchmark_quick(tmp_path):
    from lorakit.book import replicas_bench

    report = replicas_bench.main(["--quick", "--out", str(tmp_path / "bench.json")])
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert stored["rows"] == report["rows"] and [row["K"] for row in stored["rows"]] == [1, 8]
    assert all(row["ratio"] > 0 and row["model"] == "fnn" for row in stored["rows"])


def test_tolerance_is_tight_enough_to_catch_a_wrong_weight_decay():
    """Adam's coupled L2 decay instead of AdamW's decoupled one fails the comparison above."""
    trainer = ReplicaTrainer(lora_net, K=1, seeds=[3], lr=1e-2, weight_decay=0.1, optimizer="adam")
    trainer.fit(loss_fn, data, STEPS, progress=False)
    model, _ = train_one(lora_net, 3, loss_fn, data, STEPS, lr=1e-2, weight_decay=0.1, optimizer="adamw")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(trainer.state_dict(0)["0.A"], model[0].A.detach(), rtol=RTOL, atol=ATOL)


def test_independent_data_seeds_out_of_order_reach_their_own_replica():
    """Data seeds [20, 10]: batches are drawn in sorted-seed order and must still reach the right replica."""
    trainer = ReplicaTrainer(lora_net, K=2, seeds=[3, 4], data_seeds=[20, 10], lr=1e-2, optimizer="adam")
    history = trainer.fit(loss_fn, data, 10, progress=False)
    for k, (seed, data_seed) in enumerate([(3, 20), (4, 10)]):
        _, losses = train_one(lora_net, seed, loss_fn, data, 10, lr=1e-2, optimizer="adam", data_seed=data_seed)
        torch.testing.assert_close(history.loss[:, k], torch.tensor(losses), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("merge", [True, False])  # feature-major (columns) and batch-major stacks
def test_shared_data_seeds_gathered_per_chunk_equal_gathered_batches(merge):
    """fit() hands the bmm engine one batch per data seed and an index: each chunk gathers its own
    replicas' batches (the feature-major stack its transposed input). Same numbers as step() on the
    batches gathered up front, bit for bit, and as sequential runs within the tolerance."""
    kwargs = dict(K=4, seeds=SEEDS, data_seeds=[8, 8, 7, 9], lr=LRS["adam"], optimizer="adam",
                  merge_lora=merge, chunk=3)
    trainer, reference = ReplicaTrainer(lora_net, **kwargs), ReplicaTrainer(lora_net, **kwargs)
    assert trainer.engine == "bmm" and trainer._stack.columns is merge
    history = trainer.fit(mse_loss, data, 10, progress=False)
    gens = reference.generators()
    for step in range(10):
        batch = tuple(t.index_select(0, reference._data_index) for t in data(step, gens))
        torch.testing.assert_close(reference.step(mse_loss, batch), history.loss[step], rtol=0, atol=0)
    assert torch.equal(trainer.params, reference.params)
    _, losses = train_one(lora_net, SEEDS[1], loss_fn, data, 10, lr=LRS["adam"][1], optimizer="adam", data_seed=8)
    torch.testing.assert_close(history.loss[:, 1], torch.tensor(losses), rtol=RTOL, atol=ATOL)


def test_adam_moments_into_a_kept_buffer_gives_the_same_numbers():
    """The replica optimizer keeps its denominator buffer across steps: bit-identical to fresh tensors."""
    from lorakit.optim import adam_moments

    grads = torch.randn(5, 3, 40, generator=torch.Generator().manual_seed(0))
    fresh, kept, out = {"step": 0}, {"step": 0}, torch.empty(3, 40)
    for g in grads:
        m1, d1, b1 = adam_moments(fresh, g, (0.9, 0.999), 1e-8)
        m2, d2, b2 = adam_moments(kept, g, (0.9, 0.999), 1e-8, out=out)
        assert d2 is out and torch.equal(d1, d2) and torch.equal(m1, m2) and b1 == b2
