"""The stored expressive-power grid: one entry's replicas equal one run_experiment per setting."""
import pytest
import torch

from lorakit.book.expressive import stored
from lorakit.book.expressive.experiment import grid, run_experiment


def _point(**overrides):
    base = dict(shape="relu_2_4", seed=1, pretrained=1, rank=3, method="sgd", tune_bias=0, width=8,
                n_epochs=60, batch_size=64, n_test=500, std=0.25, lrs=[1e-2, 1e-3], wds=[0.0, 1e-2])
    return {**base, **overrides}


def test_replicas_equal_one_run_per_setting() -> None:
    point = _point()
    out = stored.run_point(point)
    assert len(out["test_loss"]) == 4
    for k, (lr, wd) in enumerate(zip(out["lr"], out["weight_decay"])):
        res = run_experiment(stored._config(point, lr, wd), progress=False, log=lambda *a: None)
        torch.testing.assert_close(out["validation_loss"][k], res.validation_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(out["test_loss"][k], res.test_loss, rtol=1e-5, atol=0)
        assert out["trainable"] == res.trainable
    # the settings really differ: a wrong pairing of replicas and settings would not pass the above
    assert len(set(out["test_loss"])) == 4


def test_construction_entry_is_exact() -> None:
    out = stored.run_point(_point(shape="linear", pretrained=0, tune_bias=1, method="ours", rank=8))
    assert out["validation_loss"] == [None] and out["test_loss"][0] < 1e-20


def test_grid_points_cover_the_papers_grid() -> None:
    """Every configuration of the one-at-a-time grid is one replica of exactly one stored entry."""
    seeds = (0, 1)
    folded = {(p["shape"], p["seed"], p["pretrained"], p["rank"], p["method"], p["tune_bias"])
              for p in stored.grid_points(["linear", "relu_1_2", "relu_2_4"], seeds=seeds)}
    shape_of = {(s["target_depth"], s["frozen_depth"], s["activation"]): name
                for name, s in stored.SHAPES.items() if s.get("exp", "fnn") == "fnn"}
    configs = [c for fam in ("linear", "relu") for c in grid(fam, seeds=seeds)]
    keys = {(shape_of[(c.target_depth, c.frozen_depth, c.activation)], c.seed, c.pretrained, c.rank,
             c.method, c.tune_bias) for c in configs}
    assert keys == folded
    n_sgd = sum(1 for c in configs if c.method == "sgd")
    assert n_sgd == 12 * sum(1 for k in folded if k[4] == "sgd")


def test_paper_median_picks_by_validation_not_test() -> None:
    """The best setting is chosen on validation loss; the test loss of that setting is reported."""
    entries = [({"rank": 2, "method": "sgd", "shape": "x", "seed": s},
                {"validation_loss": [0.5, 0.1, 0.3], "test_loss": [0.0, 1.0 + s, 0.0]}) for s in range(3)]
    entries += [({"rank": 2, "method": "ours", "shape": "x", "seed": 0},
                 {"validation_loss": [None], "test_loss": [7.0]}),
                ({"rank": 2, "method": "sgd", "shape": "y", "seed": 0},
                 {"validation_loss": [0.0], "test_loss": [99.0]})]
    median, per_rank = stored.paper_median(entries, method="sgd", shape="x")
    assert per_rank == {2: {0: 1.0, 1: 2.0, 2: 3.0}} and median == {2: 2.0}
    assert stored.paper_median(entries, method="ours")[0] == {2: 7.0}
    flt = [({"rank": 1, "last_layers": k, "method": "flt", "seed": 0},
            {"validation_loss": [1], "test_loss": [k]}) for k in (3, 1)]
    assert stored.paper_median(flt, by="last_layers")[0] == {1: 1, 3: 3}
    with pytest.raises(ValueError, match="two entries"):  # the shapes were not told apart
        stored.paper_median(entries, method="sgd")


def test_transformer_replicas_equal_one_run_per_setting() -> None:
    """The transformer entries (Chapter 6): replicas equal run_experiment, frozen base independent of R."""
    point = _point(shape="tfn_1", pretrained=0, tune_bias=1, width=4, rank=2, n_epochs=15, batch_size=16,
                   n_test=50, lrs=[1e-2, 1e-3], wds=[0.0])
    out = stored.run_point(point)
    for k, (lr, wd) in enumerate(zip(out["lr"], out["weight_decay"])):
        cfg = stored._config(point, lr, wd)
        assert cfg.exp == "tfn" and cfg.draw_order == "rank_independent"
        res = run_experiment(cfg, progress=False, log=lambda *a: None)
        torch.testing.assert_close(out["validation_loss"][k], res.validation_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(out["test_loss"][k], res.test_loss, rtol=1e-5, atol=0)
    assert out["test_loss"][0] != out["test_loss"][1]
    built = stored.run_point(dict(point, method="ours", rank=2))
    assert built["test_loss"][0] < 1e-16  # R = D/2: exact


def test_rank_step_entries_give_layers_unequal_ranks() -> None:
    point = _point(rank=4, rank_step=-1, tune_bias=1, pretrained=0, lrs=[1e-2], wds=[0.0])
    cfg = stored._config(point)
    assert cfg.rank_step == -1
    out = stored.run_point(point)
    # 4 layers of width 8 with ranks 4, 3, 2, 1 (two factors of 8 x r each) plus 4 biases of 8
    assert out["trainable"] == 2 * 8 * (4 + 3 + 2 + 1) + 4 * 8
    res = run_experiment(cfg, progress=False, log=lambda *a: None)
    torch.testing.assert_close(out["test_loss"][0], res.test_loss, rtol=1e-5, atol=0)


def test_tfn_points_cover_the_papers_transformer_grid() -> None:
    seeds = (0, 1)
    folded = {(int(p["shape"][-1]), p["seed"], p["pretrained"], p["rank"], p["method"])
              for p in stored.tfn_points(seeds=seeds)}
    configs = list(grid("tfn", seeds=seeds))
    assert {(c.target_depth, c.seed, c.pretrained, c.rank, c.method) for c in configs} == folded
    assert sum(c.method == "sgd" for c in configs) == 12 * sum(k[4] == "sgd" for k in folded)
    assert set(map(str, stored.TFN_SLICE.points())) <= set(map(str, stored.TFN_GRID.points()))
