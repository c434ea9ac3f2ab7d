"""Tests for lorakit.book.expressive: the construction's error equals the Eckart–Young tail, exactness at the
rank threshold for linear/ReLU FNN and TFN, and rejection of invalid configurations."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lorakit.book.expressive import (
    Config,
    adapt_ours_fnn,
    adapt_ours_tfn,
    canonical_svd,
    chain_product,
    lowrank_update,
    make_fnn_pair,
    make_tfn_pair,
    mse,
    rank_threshold,
    run_experiment,
    summarize,
    tail_errors,
    trainable_parameters,
    validate,
)
from lorakit.book.expressive.cli import main

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.mark.parametrize("D,M,r", [(6, 2, 1), (6, 2, 2), (8, 3, 2), (5, 1, 3), (7, 2, 4)])
def test_linear_residual_is_the_singular_value_tail(D: int, M: int, r: int) -> None:
    g = torch.Generator().manual_seed(D * 100 + M * 10 + r)
    Wbar = torch.randn(D, D, generator=g, dtype=torch.float64)
    frozen = [torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(M)]
    factors, S = lowrank_update(Wbar, frozen, r)
    adapted = [W + B @ A for W, (B, A) in zip(frozen, factors)]
    residual = Wbar - chain_product(adapted)
    spectral, frob2 = tail_errors(S, r * M)
    assert torch.allclose(S, torch.linalg.svdvals(Wbar - chain_product(frozen)))
    assert abs(torch.linalg.matrix_norm(residual, 2).item() - spectral) < 1e-8
    assert abs((residual**2).sum().item() - frob2) < 1e-8
    for B, A in factors:  # every update has rank <= r
        assert B.shape == (D, r) and A.shape == (r, D)
        assert torch.linalg.matrix_rank(B @ A).item() <= r


def test_below_threshold_error_is_positive_and_decreasing() -> None:
    g = torch.Generator().manual_seed(1)
    Wbar, W1, W2 = (torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    errors = []
    for r in range(1, 5):
        factors, _ = lowrank_update(Wbar, [W1, W2], r)
        adapted = [W + B @ A for W, (B, A) in zip([W1, W2], factors)]
        errors.append(((Wbar - chain_product(adapted)) ** 2).sum().item())
    assert errors[0] > errors[1] > errors[2] > 1e-3  # r*M < D: the tail is left
    assert errors[3] < 1e-20  # r*M = D: exact


def test_canonical_svd_breaks_ties_deterministically() -> None:
    U, S, V = canonical_svd(0.7 * torch.eye(5))
    assert torch.equal(V, torch.eye(5, dtype=torch.float64))
    assert torch.allclose(U @ torch.diag(S) @ V.T, 0.7 * torch.eye(5, dtype=torch.float64))
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    E = Q @ torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ Q.T
    U, S, V = canonical_svd(E)
    assert torch.allclose(U @ torch.diag(S) @ V.T, E, atol=1e-12)
    assert torch.allclose(V.T @ V, torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_rank_threshold() -> None:
    assert rank_threshold(16, 1, 2) == rank_threshold(16, 2, 4) == 8
    assert rank_threshold(16, 1, 3) == 6
    with pytest.raises(ValueError, match="L >= L̄"):
        rank_threshold(16, 3, 2)


@pytest.mark.parametrize(
    "activation,use_bias,Lbar,L", [("linear", False, 1, 2), ("relu", True, 1, 2), ("relu", True, 2, 4), ("relu", True, 2, 5)]
)
def test_fnn_exact_at_and_above_threshold(activation: str, use_bias: bool, Lbar: int, L: int) -> None:
    D = 8
    thr = rank_threshold(D, Lbar, L)
    for r in (thr, D):
        target, frozen = make_fnn_pair(D, Lbar, L, r, use_bias=use_bias, activation=activation, seed=3)
        adapt_ours_fnn(frozen, target, r, torch.randn(256, D, generator=torch.Generator().manual_seed(1)))
        X = torch.randn(2000, D, generator=torch.Generator().manual_seed(2))
        assert mse(frozen, target, X) < 1e-8, (r, activation)
    # one rank below the threshold is not exact
    target, frozen = make_fnn_pair(D, Lbar, L, thr - 1, use_bias=use_bias, activation=activation, seed=3)
    adapt_ours_fnn(frozen, target, thr - 1, torch.randn(256, D, generator=torch.Generator().manual_seed(1)))
    assert mse(frozen, target, torch.randn(2000, D, generator=torch.Generator().manual_seed(2))) > 1e-5


def test_linear_fnn_mse_matches_closed_form() -> None:
    res = run_experiment(Config(width=8, rank=2, method="ours", use_bias=0, activation="linear", n_test=20000), **QUIET)
    _, frob2 = tail_errors(torch.tensor(res.singular_values[0]), 2 * 2)
    assert res.test_loss == pytest.approx(frob2 / 8, rel=0.05)


def test_relu_linearisation_breaks_outside_calibration_range() -> None:
    target, frozen = make_fnn_pair(8, 1, 2, 4, seed=0)
    adapt_ours_fnn(frozen, target, 4, torch.randn(256, 8, generator=torch.Generator().manual_seed(1)))
    X = torch.randn(2000, 8, generator=torch.Generator().manual_seed(2))
    assert mse(frozen, target, X) < 1e-8
    assert mse(frozen, target, 50 * X) > 1e-3


@pytest.mark.parametrize("depth", [1, 2])
def test_tfn_exact_at_threshold(depth: int) -> None:
    D = 8
    for r in (D // 2, D):
        target, frozen = make_tfn_pair(D, depth, r, n_head=2, seed=5)
        # float64: at depth 2, float32 rounding alone leaves an MSE of ~1e-7 (several inverses of FFN weights)
        target.double(), frozen.double()
        adapt_ours_tfn(frozen, target, r)
        X = torch.randn(200, 10, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert mse(frozen, target, X) < 1e-8, (depth, r)
    target, frozen = make_tfn_pair(D, 1, D // 2 - 1, seed=5)
    adapt_ours_tfn(frozen, target, D // 2 - 1)
    assert mse(frozen, target, torch.randn(200, 10, D, generator=torch.Generator().manual_seed(0))) > 1e-4


def _tfn_base_weights(model) -> dict[str, torch.Tensor]:
    """Every base (frozen) weight and bias of a TFN by name; LoRA factors left out."""
    return {n: p for n, p in model.named_parameters() if not n.endswith((".A", ".B"))}


def test_tfn_rank_independent_draw_keeps_the_frozen_model_across_ranks() -> None:
    targets, bases = [], []
    for r in (1, 3, 8):
        target, frozen = make_tfn_pair(8, 2, r, seed=4, draw_order="rank_independent")
        targets.append(target.state_dict())
        bases.append(_tfn_base_weights(frozen))
        assert frozen.out.A.shape == (r, 8) and frozen.blocks[1].w2.A.shape == (r, 8)
    for other in bases[1:]:
        assert other.keys() == bases[0].keys()
        assert all(torch.equal(bases[0][n], other[n]) for n in other)
    for other in targets[1:]:
        assert all(torch.equal(targets[0][n], other[n]) for n in other)
    # the paper's order (the default) draws the same target but a frozen FFN that changes with the rank
    paper = [make_tfn_pair(8, 2, r, seed=4) for r in (1, 8)]
    assert all(torch.equal(paper[0][0].state_dict()[n], targets[0][n]) for n in targets[0])
    assert not torch.equal(paper[0][1].blocks[0].w1.weight, paper[1][1].blocks[0].w1.weight)
    assert torch.equal(paper[0][1].blocks[0].heads[0].q.base.weight, paper[1][1].blocks[0].heads[0].q.base.weight)


def test_tfn_default_draw_order_is_unchanged() -> None:
    """The default is the paper's order: the values drawn before draw_order existed (seed 7, D=8, depth 2, R=3)."""
    target, frozen = make_tfn_pair(8, 2, 3, seed=7)
    expected = {
        "frozen W_1 (block 1)": (frozen.blocks[1].w1.weight[0, :3], [0.33656332, 0.00249560, -0.16845387]),
        "frozen W_O (block 1, head 1)": (frozen.blocks[1].heads[1].o.base.weight[0, :3],
                                         [0.66842008, 1.21947110, -1.81975758]),
        "frozen W_o": (frozen.out.base.weight[0, :3], [-0.22267405, -0.16219005, -0.07594348]),
        "LoRA A of W_o": (frozen.out.A[0, :3], [-0.12049212, 0.37305605, 0.28798971]),
        "target W_o": (target.out.weight[0, :3], [-0.29886609, -0.31253919, -0.21257968]),
    }
    for name, (got, want) in expected.items():
        assert torch.allclose(got, torch.tensor(want), atol=1e-6), name
    explicit = make_tfn_pair(8, 2, 3, seed=7, draw_order="paper")[1]
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), explicit.state_dict().values()))
    with pytest.raises(ValueError, match="rank_independent"):
        make_tfn_pair(8, 1, 2, draw_order="sorted")


def test_sgd_trains_only_lora_and_biases_and_reduces_loss() -> None:
    target, frozen = make_fnn_pair(8, 1, 2, 2, seed=0)
    before = [lin.weight.clone() for lin in frozen.base_linears()]
    params = trainable_parameters(frozen, "sgd", tune_bias=True)
    assert sum(p.numel() for p in params) == 2 * (2 * 8 * 2) + 2 * 8
    r0 = run_experiment(Config(width=8, rank=2, method="sgd", n_epochs=1, n_test=1000, seed=0), **QUIET)
    r1 = run_experiment(Config(width=8, rank=2, method="sgd", n_epochs=300, n_test=1000, seed=0), **QUIET)
    assert r1.test_loss < 0.7 * r0.test_loss
    assert all(torch.equal(b, lin.weight) for b, lin in zip(before, frozen.base_linears()))


def test_flt_counts_and_pretraining_shrinks_error() -> None:
    res = run_experiment(Config(width=8, frozen_depth=3, method="flt", last_layers=2, n_epochs=5, n_test=100), **QUIET)
    assert res.trainable == 2 * (64 + 8)
    rand = run_experiment(Config(width=8, rank=2, method="ours", n_test=100), **QUIET)
    pre = run_experiment(Config(width=8, rank=2, method="ours", n_test=100, pretrained=1), **QUIET)
    assert pre.pretrain_stop is not None and pre.pretrain_stop < 1000
    assert sum(pre.singular_values[0]) < sum(rand.singular_values[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=0), "rank=0"),
        (dict(rank=17), "1..width"),
        (dict(exp="tfn", init_mode="uniform_singular_values"), "FNNs only"),
        (dict(method="ours", rank_step=1), "rank_step 0"),
        (dict(method="ours", use_bias=0, activation="relu"), "needs biases"),
        (dict(method="ours", init_mode="uniform_singular_values", target_depth=2, frozen_depth=5), "multiple"),
        (dict(target_depth=3, frozen_depth=2), "frozen_depth=2 < target_depth=3"),
        (dict(method="flt", last_layers=3), "last_layers=3"),
        (dict(exp="tfn", method="flt"), "FNNs only"),
        (dict(method="adam"), "unknown"),
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate(Config(**kwargs))


def test_cli_rejects_invalid_and_prints_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rank", "0"]) == 2
    assert "rank=0" in capsys.readouterr().err
    assert main(["--width", "8", "--rank", "4", "--method", "ours", "--n_test", "500", "--wandb", "1", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "--wandb is accepted" in out and "| method: ours" in out
    assert "Singular values: tensor([" in out
    assert float(out.strip().splitlines()[-1].split(": ")[1]) < 1e-8


def test_module_entry_point_exits_nonzero_on_invalid_config() -> None:
    proc = subprocess.run([sys.executable, "-m", "lorakit.book.expressive", "--exp", "tfn", "--init_mode",
                           "uniform_singular_values"], capture_output=True, text=True)
    assert proc.returncode == 2 and "FNNs only" in proc.stderr


def test_summarize_takes_best_validation_then_median(tmp_path) -> None:
    from lorakit.book.expressive import run_grid

    cfgs = [Config(width=4, rank=1, method="sgd", n_epochs=2, n_test=50, seed=s, lr=lr) for s in (0, 1) for lr in (1e-2, 1e-3)]
    path = tmp_path / "r.jsonl"
    assert run_grid(cfgs, path, progress=False) == 4
    assert run_grid(cfgs, path, progress=False) == 0  # resumable: nothing left to do
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    (value,) = summarize(rows).values()
    best = {}
    for row in rows:
        s = row["config"]["seed"]
        if s not in best or row["validation_loss"] < best[s][0]:
            best[s] = (row["validation_loss"], row["test_loss"])
    assert value == pytest.approx(sum(t for _, t in best.values()) / 2)
