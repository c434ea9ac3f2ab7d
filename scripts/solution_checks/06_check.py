"""Checks for the exercises of Chapter 6 (notebooks/06_expressive_transformer.ipynb).

Prints every number the solutions quote. Exercise 3 reruns the chapter's gradient-LoRA protocol
(rank-independent draws, R = 16, 2000 Adam steps, lr chosen per seed on its validation MSE from
{3e-3, 1e-2}, 3 seeds) twice: on the chapter's models and with every attention matrix scaled by
1/sqrt(D); on the book's 2-core machine that takes several minutes.

Run: .venv/bin/python scripts/solution_checks/06_check.py
"""
import copy
import time

import torch

import lorakit as lk
from lorakit import protocol
from lorakit.book import expressive as ex
from lorakit.replicas import ReplicaTrainer, mse_loss

t_start = time.time()
g = lk.seed_everything(0)

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
print("  (a) the paper's draw order, seed 123, run_experiment's test set")
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
          f"target output variance {var:.4g} (float32 MSE / variance {mse32 / var:.2g})")


def round32(modules):
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.float().double())


t, f = ex.make_tfn_pair(16, 2, 8, seed=123)
t, f = t.double(), f.double()
ex.adapt_ours_tfn(f, t, 8)
X64 = X_test.double()
print(f"  depth 2 in float64: MSE {ex.mse(f, t, X64):.2g}; blocks numbered from 1 as in the chapter (block 1 = blocks[0])")
groups = {
    "block 1 W_Q, W_K": lambda m: [h.q for h in m.blocks[0].heads] + [h.k for h in m.blocks[0].heads],
    "block 1 W_V, W_O": lambda m: [h.v for h in m.blocks[0].heads] + [h.o for h in m.blocks[0].heads],
    "block 1 FFN": lambda m: [m.blocks[0].w1, m.blocks[0].w2],
    "block 2 W_Q, W_K": lambda m: [h.q for h in m.blocks[1].heads] + [h.k for h in m.blocks[1].heads],
    "block 2 W_V, W_O": lambda m: [h.v for h in m.blocks[1].heads] + [h.o for h in m.blocks[1].heads],
    "block 2 FFN + W_o": lambda m: [m.blocks[1].w1, m.blocks[1].w2, m.out],
}
for name, select in groups.items():
    m = copy.deepcopy(f)
    round32(select(m))
    print(f"  round only {name:18s} to float32: MSE {ex.mse(m, t, X64):.3g}")
h0 = f.blocks[0].heads[0]
with torch.no_grad():
    dWq = max(float(h.q.delta_weight().abs().max()) for h in f.blocks[0].heads)
    print(f"  block 1: max |ΔW_Q| {dWq:.4g} (frozen |W_Q| entries ~1); cond(W_K) {float(torch.linalg.cond(h0.k.base.weight)):.3g}, "
          f"cond(W_Q + ΔW_Q) {float(torch.linalg.cond(h0.q.base.weight + h0.q.delta_weight())):.3g} (head 1)")
    W1_0, W2_0 = f.blocks[0].w1.weight, f.blocks[0].w2.weight
    print(f"  FFN inverses: cond(W_1) {float(torch.linalg.cond(W1_0)):.3g}, cond(W_2) {float(torch.linalg.cond(W2_0)):.3g} (block 1)")
    m = copy.deepcopy(f)
    round32([h.q for h in m.blocks[0].heads] + [h.k for h in m.blocks[0].heads])
    hid, hid_r = f.blocks[0](X64), m.blocks[0](X64)
    scores1 = torch.cat([(h.q(hid) @ h.k(hid).mT).flatten() for h in f.blocks[1].heads])
    print(f"  rounding block 1's W_Q, W_K: relative error of block 1's output {float((hid_r - hid).norm() / hid.norm()):.2g}; "
          f"median |score| in block 2 {float(scores1.abs().median()):.3g}")


# The chapter's models and data streams (notebook cells "SEEDS = ...", "def gradient_lora", tuning, final runs).
SEEDS = protocol.seeds(3)
STEPS, LRS, R_GRAD = 2000, [3e-3, 1e-2], 16


def chapter_pair(R, seed, depth=1):
    return ex.make_tfn_pair(16, depth, R, seed=seed, draw_order="rank_independent")


def scaled_pair(R, seed, depth=1):
    """The chapter's pair with every attention matrix (target and frozen) times 1/sqrt(D): N(0, 1/D)."""
    t, f = chapter_pair(R, seed, depth)
    with torch.no_grad():
        for model in (t, f):
            for block in model.blocks:
                for h in block.heads:
                    for lin in (h.q, h.k, h.v, h.o):
                        getattr(lin, "base", lin).weight.mul_(16 ** -0.5)
    return t, f


def inputs(seed, purpose, n=1000):
    generator = torch.Generator().manual_seed(protocol.derive_seed(seed, purpose))
    return torch.randn(n, 10, 16, generator=generator)


print("\nExercise 2: (b) the chapter's models (rank-independent order), depth 2, R = 8, float32")
for s in SEEDS:
    t, f = chapter_pair(8, s, 2)
    ex.adapt_ours_tfn(f, t, 8)
    print(f"  seed {s}: float32 MSE {ex.mse(f, t, inputs(s, 'test')):.3g}")


def gradient_lora(pair, R, runs):
    batch_seed = {s: protocol.derive_seed(s, "batches") for s, _ in runs}
    targets = {batch_seed[s]: pair(R, s)[0] for s, _ in runs}

    def model_fn(s):
        frozen = pair(R, s)[1]
        ex.trainable_parameters(frozen, "sgd")
        return frozen

    trainer = ReplicaTrainer(model_fn, len(runs), seeds=[s for s, _ in runs], lr=[lr for _, lr in runs],
                             data_seeds=[batch_seed[s] for s, _ in runs])

    def data(step, generators):
        X = torch.stack([torch.randn(256, 10, 16, generator=gen) for gen in generators])
        return X, torch.stack([targets[b](x) for b, x in zip(trainer.generator_seeds, X)])

    return trainer, lambda steps: trainer.fit(mse_loss, data, steps, progress=False)


def val_mse(model, X, y):
    return ((model(X) - y) ** 2).mean()


def chapter_protocol(pair, name):
    """The chapter's runs at R_GRAD: lr per seed on its validation MSE, then the test MSE: {seed: MSE}."""
    runs = [(s, lr) for s in SEEDS for lr in LRS]
    trainer, train = gradient_lora(pair, R_GRAD, runs)
    valid = {s: (pair(R_GRAD, s)[0], inputs(s, "validation")) for s in SEEDS}
    curve = []
    for _ in range(2):
        train(STEPS // 2)
        curve.append([ex.mse(trainer.module_of(k), *valid[s]) for k, (s, _) in enumerate(runs)])
    grad, chosen = {}, {}
    for s in SEEDS:
        val = {lr: v for (seed, lr), v in zip(runs, curve[-1]) if seed == s}
        chosen[s] = protocol.tune({"lr": LRS}, lambda c: val[c["lr"]], maximize=False).best["lr"]
        grad[s] = ex.mse(trainer.module_of(runs.index((s, chosen[s]))), pair(R_GRAD, s)[0], inputs(s, "test"))
        k = runs.index((s, chosen[s]))
        print(f"  {name}, seed {s}: validation MSE after {STEPS // 2}/{STEPS} steps: "
              + "; ".join(f"lr {lr:g}: {curve[0][runs.index((s, lr))]:.4g}/{curve[1][runs.index((s, lr))]:.4g}"
                          for lr in LRS) + f" → lr {chosen[s]:g} (fell {curve[0][k] / curve[1][k]:.2g}x over the "
              f"second half), test MSE {grad[s]:.4g}")
    return grad, chosen


def top_prob(pair, seed):  # mean largest attention probability in the target's first head, and the scores' std
    t, _ = pair(1, seed)
    X = inputs(seed, "test")
    with torch.no_grad():
        h = t.blocks[0].heads[0]
        scores = h.q(X) @ h.k(X).mT
        return float(torch.softmax(scores, -1).max(-1).values.mean()), float(scores.std())


print("\nExercise 3: (a) the paper's draw order: which frozen weights change with R, and the frozen model's MSE")
a, b = ex.make_tfn_pair(16, 1, 2, seed=123)[1], ex.make_tfn_pair(16, 1, 8, seed=123)[1]
same = [n for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters())
        if not n.endswith((".A", ".B")) and torch.equal(p, q)]
differ = [n for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters())
          if not n.endswith((".A", ".B")) and not torch.equal(p, q)]
print(f"  base tensors equal at R = 2 and 8: {same}; differing: {len(differ)} of {len(same) + len(differ)}")
X123 = inputs(123, "test")
paper_frozen = {R: ex.mse(f, t, X123) for R in range(1, 17)
                for t, f in [ex.make_tfn_pair(16, 1, R, seed=123)]}
print("  frozen test MSE, paper order, seed 123, R = 1..16:",
      " ".join(f"{paper_frozen[R]:.4g}" for R in range(1, 17)))
print(f"  min {min(paper_frozen.values()):.4g}, max {max(paper_frozen.values()):.4g}; "
      f"rank-independent order: {ex.mse(*reversed(chapter_pair(2, 123)), X123):.4g} at every R")

print("\nExercise 3: (b) attention scaled by 1/sqrt(D), the chapter's gradient-LoRA protocol at R = 16")
left = {}
for name, pair in (("N(0,1) (chapter)", chapter_pair), ("scaled by 1/sqrt(D)", scaled_pair)):
    grad, chosen = chapter_protocol(pair, name)
    frozen = {s: ex.mse(*reversed(pair(1, s)), inputs(s, "test")) for s in SEEDS}
    variance = {s: float(pair(1, s)[0](inputs(s, "test")).var()) for s in SEEDS}
    probs = [top_prob(pair, s) for s in SEEDS]
    print(f"  {name}: mean top attention probability (target, head 1) "
          f"{sum(p for p, _ in probs) / len(probs):.3g}, score std {sum(s for _, s in probs) / len(probs):.3g} "
          f"(means over seeds)")
    mse = protocol.summarize(grad)
    left[name] = {s: grad[s] / frozen[s] for s in SEEDS}
    share = protocol.summarize(left[name])
    of_var = protocol.summarize({s: grad[s] / variance[s] for s in SEEDS})
    print(f"  {name}: frozen test MSE {', '.join(f'{frozen[s]:.4g}' for s in SEEDS)}; output variance "
          f"{', '.join(f'{variance[s]:.4g}' for s in SEEDS)}")
    print(f"  {name}: gradient LoRA test MSE {mse.mean:.4g} ± {mse.sd:.2g}; share of the frozen error left "
          f"{share.mean:.1%} (95 % CI {share.lo:.1%} to {share.hi:.1%}); of the output variance {of_var.mean:.1%} "
          f"(95 % CI {of_var.lo:.1%} to {of_var.hi:.1%})")
print("  " + protocol.lesson("scaled", left["scaled by 1/sqrt(D)"], "N(0,1)", left["N(0,1) (chapter)"],
                             unit="points of the frozen error left", scale=100, decimals=1,
                             higher_is_better=False))
print(f"\n[06_check ran in {time.time() - t_start:.0f} s]")
