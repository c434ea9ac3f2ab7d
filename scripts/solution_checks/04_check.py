"""Checks for the solutions of Chapter 4 (04_expressive_linear): every number quoted in 04.md.

Run: .venv/bin/python scripts/solution_checks/04_check.py            (about 30 s, one thread)
"""
import time

import torch

import lorakit as lk
from lorakit.book import expressive as ex

T0 = time.time()
g = lk.seed_everything(0)
# the chapter's small example: the same draws in the same order
D = 4
Wbar = torch.randn(D, D, generator=g, dtype=torch.float64)
W1, W2 = (torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(2))


def check(target, frozen, r):
    factors, S = ex.lowrank_update(target, frozen, r)
    residual = target - ex.chain_product([W + B @ A for W, (B, A) in zip(frozen, factors)])
    k = r * len(frozen)
    spectral, frob2 = ex.tail_errors(S, k)
    return factors, S, residual, spectral, frob2


# ---------------------------------------------------------------- Exercise 1
print("== Exercise 1: L = 3 frozen layers, R = 1")
W3 = torch.randn(D, D, generator=g, dtype=torch.float64)
factors, S, residual, spectral, frob2 = check(Wbar, [W1, W2, W3], 1)
print("  singular values of E = Wbar - W3 W2 W1:", " ".join(f"{s:.4g}" for s in S))
print(f"  ||residual||_2 = {torch.linalg.matrix_norm(residual, 2):.4g}, tail_errors(S, 3) -> sigma_4 = {spectral:.4g}; "
      f"||residual||_F^2 = {(residual ** 2).sum():.4g}, sigma_4^2 = {frob2:.4g}")
print("  ranks of the three updates:", [torch.linalg.matrix_rank(B @ A).item() for B, A in factors])

# ---------------------------------------------------------------- Exercise 2
print("== Exercise 2: a rank-1 error, Wbar = W2 W1 + u v^T, L = 2")
u, v = (torch.randn(D, 1, generator=g, dtype=torch.float64) for _ in range(2))
factors, S, residual, spectral, frob2 = check(W2 @ W1 + u @ v.T, [W1, W2], 1)
print("  singular values of E:", " ".join(f"{s:.3g}" for s in S))
print(f"  R = 1: max |residual| = {residual.abs().max():.3g}; "
      f"||Delta W_1|| = {torch.linalg.matrix_norm(factors[0][0] @ factors[0][1]):.4g}, "
      f"||Delta W_2|| = {torch.linalg.matrix_norm(factors[1][0] @ factors[1][1]):.3g}")
print(f"  ceil(rank(E) / L) = {-(-torch.linalg.matrix_rank(u @ v.T).item() // 2)}")

# ---------------------------------------------------------------- Exercise 3
print("== Exercise 3: a zero column in W2")
W2_bad = W2.clone()
W2_bad[:, 0] = 0
try:
    ex.lowrank_update(Wbar, [W1, W2_bad], 1)
except ValueError as err:
    print(f"  ValueError: {err}")
for eps in (1e-4, 1e-8):
    W2_eps = W2_bad.clone()
    W2_eps[:, 0] = eps * torch.randn(D, generator=g, dtype=torch.float64)
    factors, S, residual, spectral, _ = check(Wbar, [W1, W2_eps], 1)
    print(f"  column = {eps:g} * noise: runs; cond(W2) = {torch.linalg.cond(W2_eps):.3g}, "
          f"max |Delta W_1| = {(factors[0][0] @ factors[0][1]).abs().max():.3g}, "
          f"||residual||_2 = {torch.linalg.matrix_norm(residual, 2):.4g} vs sigma_3 = {spectral:.4g}")
torch.manual_seed(0)
dets = torch.stack([torch.linalg.det(torch.randn(D, D, dtype=torch.float64)) for _ in range(100_000)])
print(f"  100,000 Gaussian 4x4 matrices: smallest |det| = {dets.abs().min():.3g}, exactly singular: {int((dets == 0).sum())}")

# ---------------------------------------------------------------- Exercise 4
print("== Exercise 4: gradient LoRA (method='sgd', trained with Adam) with weight decay 1e-2")
print("   (the chapter's reduced protocol: 400 Adam steps, lr 1e-2, seed 123)")
base = dict(width=16, target_depth=1, frozen_depth=2, use_bias=0, activation="linear", n_test=2000)
quiet = dict(progress=False, log=lambda *a: None)
sgd_ranks = [1, 2, 4, 6, 8, 16]
CHAPTER_WD0 = {0: "0.253 0.1594 0.04034 0.004435 4.616e-05 5.671e-08", 1: "0.08318 0.0461 0.009755 0.0006037 3.678e-06 <1e-12"}
for pre in (0, 1):
    res = [ex.run_experiment(ex.Config(**base, rank=R, method="sgd", n_epochs=400, lr=1e-2, weight_decay=1e-2,
                                       pretrained=pre), **quiet).test_loss for R in sgd_ranks]
    print(f"  {'pretrained' if pre else 'random    '} wd 1e-2: " + "  ".join(f"R={R}: {ex.format_mse(m)}" for R, m in zip(sgd_ranks, res)))
    print(f"  {'':10} wd 0 (chapter): " + "  ".join(f"R={R}: {m}" for R, m in zip(sgd_ranks, CHAPTER_WD0[pre].split())))
# ---------------------------------------------------------------- Exercise 5
print("== Exercise 5: equal depths, frozen_depth = 1 (M = 1), the construction (method='ours')")
base1 = dict(base, frozen_depth=1)
print(f"  ex.rank_threshold(16, 1, 1) = {ex.rank_threshold(16, 1, 1)}")
for pre in (0, 1):
    runs = [ex.run_experiment(ex.Config(**base1, rank=R, method="ours", pretrained=pre), **quiet)
            for R in range(1, 17)]
    S = torch.tensor(runs[0].singular_values[0])
    untouched = float((S ** 2).sum()) / 16
    share = torch.cumsum(S ** 2, 0) / (S ** 2).sum()
    exact = [R for R, r in zip(range(1, 17), runs) if r.test_loss < 1e-12]
    name = "pretrained" if pre else "random"
    print(f"  {name}: sigma(E) = " + " ".join(f"{s:.3f}" for s in S))
    print(f"  {name}: test MSE R=1..16: " + " ".join(ex.format_mse(r.test_loss) for r in runs))
    print(f"  {name}: exact (<1e-12) from R = {min(exact)}; R = 15: {runs[14].test_loss:.4g}; "
          f"untouched ||E||_F^2/D = {untouched:.4g}")
    print(f"  {name}: R = 4 leaves {runs[3].test_loss / untouched:.1%} (test inputs), "
          f"{ex.tail_errors(S, 4)[1] / 16 / untouched:.1%} (closed form); "
          f"90 % of ||E||_F^2 in the top {int((share < 0.9).sum()) + 1} of 16")
print(f"(checks took {time.time() - T0:.0f} s)")
