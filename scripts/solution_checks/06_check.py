"""Checks for the exercises of Chapter 6 (notebooks/06_expressive_transformer.ipynb).

Run: .venv/bin/python scripts/solution_checks/06_check.py
"""
import copy
import time

import torch

import lorakit as lk
from lorakit.book import expressive as ex
from lorakit.book.expressive import experiment as ex_experiment
from lorakit.book.expressive import models as ex_models

t_start = time.time()
g = lk.seed_everything(0)
quiet = dict(progress=False, log=lambda *a: None)

print("Exercise 1: W_V -> G W_V, W_O -> W_O G^-1")
target, frozen = ex.make_tfn_pair(8, 1, 4, n_head=2, seed=0)
head = target.blocks[0].heads[0]
X = torch.randn(3, 10, 8, generator=g)
before = target(X)
G = torch.randn(8, 8, generator=g) + 3 * torch.eye(8)
with torch.no_grad():
    head.v.weight.copy_(G @ head.v.weight)
    head.o.weight.copy_(head.o.weight @ torch.linalg.inv(G))
change = (target(X) - before).abs().max() / before.abs().max()
print(f"  relative change of the output: {change:.2g}")

print("\nExercise 2: the construction (D=16, R=8) evaluated in float32")
X_test = torch.randn(1000, 10, 16, generator=torch.Generator().manual_seed(127))  # run_experiment's test stream
for depth in (1, 2):
    t, f = ex.make_tfn_pair(16, depth, 8, seed=123)
    ex.adapt_ours_tfn(f, t, 8)  # computed in float64 inside, stored in the float32 model
    mse32 = ex.mse(f, t, X_test)
    mse_w = ex.mse(f.double(), t.double(), X_test.double())  # float32-rounded weights, float64 arithmetic
    var = float(t.double()(X_test.double()).var())
    t64, f64 = ex.make_tfn_pair(16, depth, 8, seed=123)
    t64, f64 = t64.double(), f64.double()
    ex.adapt_ours_tfn(f64, t64, 8)
    print(f"  depth {depth}: float64 MSE {ex.format_mse(ex.mse(f64, t64, X_test.double()))}; "
          f"float32 MSE {mse32:.3g} (weights rounded to float32 only: {mse_w:.3g}); "
          f"target output variance {var:.4g}")


def round32(modules):
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.float().double())


t, f = ex.make_tfn_pair(16, 2, 8, seed=123)
t, f = t.double(), f.double()
ex.adapt_ours_tfn(f, t, 8)
X64 = X_test.double()
print(f"  depth 2 in float64: MSE {ex.mse(f, t, X64):.2g}")
groups = {
    "block 0 W_Q, W_K": lambda m: [h.q for h in m.blocks[0].heads] + [h.k for h in m.blocks[0].heads],
    "block 0 W_V, W_O": lambda m: [h.v for h in m.blocks[0].heads] + [h.o for h in m.blocks[0].heads],
    "block 0 FFN": lambda m: [m.blocks[0].w1, m.blocks[0].w2],
    "block 1 W_Q, W_K": lambda m: [h.q for h in m.blocks[1].heads] + [h.k for h in m.blocks[1].heads],
    "block 1 W_V, W_O": lambda m: [h.v for h in m.blocks[1].heads] + [h.o for h in m.blocks[1].heads],
    "block 1 FFN + W_o": lambda m: [m.blocks[1].w1, m.blocks[1].w2, m.out],
}
for name, select in groups.items():
    m = copy.deepcopy(f)
    round32(select(m))
    print(f"  round only {name:18s} to float32: MSE {ex.mse(m, t, X64):.3g}")
h0 = f.blocks[0].heads[0]
with torch.no_grad():
    dWq = max(float(h.q.delta_weight().abs().max()) for h in f.blocks[0].heads)
    print(f"  block 0: max |ΔW_Q| {dWq:.4g} (frozen |W_Q| entries ~1); cond(W_K) {float(torch.linalg.cond(h0.k.base.weight)):.3g}, "
          f"cond(W_Q + ΔW_Q) {float(torch.linalg.cond(h0.q.base.weight + h0.q.delta_weight())):.3g} (head 0)")
    W1_0, W2_0 = f.blocks[0].w1.weight, f.blocks[0].w2.weight
    print(f"  FFN inverses: cond(W_1) {float(torch.linalg.cond(W1_0)):.3g}, cond(W_2) {float(torch.linalg.cond(W2_0)):.3g} (block 0)")
    m = copy.deepcopy(f)
    round32([h.q for h in m.blocks[0].heads] + [h.k for h in m.blocks[0].heads])
    hid, hid_r = f.blocks[0](X64), m.blocks[0](X64)
    scores1 = torch.cat([(h.q(hid) @ h.k(hid).mT).flatten() for h in f.blocks[1].heads])
    print(f"  rounding block 0's W_Q, W_K: relative error of block 0's output {float((hid_r - hid).norm() / hid.norm()):.2g}; "
          f"median |score| in block 1 {float(scores1.abs().median()):.3g}")

print("\nExercise 3: attention matrices scaled by 1/sqrt(D); reduced 'sgd' (depth 1, 100 steps, lr 1e-2)")


def make_scaled(width, depth, rank, **kw):
    """make_tfn_pair with every attention matrix (target and frozen) multiplied by 1/sqrt(D): N(0, 1/D)."""
    t, f = ex_models.make_tfn_pair(width, depth, rank, **kw)
    with torch.no_grad():
        for model in (t, f):
            for block in model.blocks:
                for h in block.heads:
                    for lin in (h.q, h.k, h.v, h.o):
                        getattr(lin, "base", lin).weight.mul_(width ** -0.5)
    return t, f


def top_prob(t, X):  # mean largest attention probability in the target's first head, and the scores' std
    with torch.no_grad():
        h = t.blocks[0].heads[0]
        scores = h.q(X) @ h.k(X).mT
        return f"{float(torch.softmax(scores, -1).max(-1).values.mean()):.3g} (score std {float(scores.std()):.3g})"


for name, maker in (("N(0,1) (chapter)", ex_models.make_tfn_pair), ("scaled by 1/sqrt(D)", make_scaled)):
    ex_experiment.make_tfn_pair = maker  # run_experiment draws its models with this function
    for R in (2, 8, 16):
        res = ex.run_experiment(ex.Config(exp="tfn", width=16, target_depth=1, rank=R, method="sgd", n_epochs=100,
                                          lr=1e-2, weight_decay=0.0, n_test=1000), **quiet)
        t, f = maker(16, 1, R, seed=123)
        frozen_mse = ex.mse(f, t, X_test)
        print(f"  {name:20s} R={R:2d}: sgd test MSE {res.test_loss:.4g}, frozen {frozen_mse:.4g}, "
              f"removed {1 - res.test_loss / frozen_mse:.0%}; mean top attention probability {top_prob(t, X_test)}")
ex_experiment.make_tfn_pair = ex_models.make_tfn_pair
print(f"\n[06_check ran in {time.time() - t_start:.0f} s]")
