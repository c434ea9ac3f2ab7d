"""Checks for the exercises of Chapter 10 (notebooks/10_riemannian_preconditioning.ipynb).

Run: .venv/bin/python scripts/solution_checks/10_check.py

Section 1 (Exercises 1-2) is the chapter's factorisation problem, run for many problems at once: the
update formulas of GD and of lorakit.optim.ScaledGD (Cholesky of the damped Gram matrix, plain gradient
if it is not positive definite) applied to a batch of (A, B) pairs. A few entries are checked against
the ScaledGD class itself. Section 2 (Exercises 3-6) is the chapter's fine-tune (LoRA r=4 on the
quickstart MLP, rotated FashionMNIST, batch 64): Exercises 3-5 on all 5,000 training images with batches
from seed 2, Exercise 6 and the main text's 10-epoch run on the chapter's split and seeds;
reduced where stated.
"""
import copy
import math
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import lorakit as lk
from lorakit.book import transfer
from lorakit.train import accuracy
from lorakit.optim import ScaledAdamW, ScaledGD

t_start = time.time()
lk.seed_everything(0)

# ----------------------------------------------------------------------------- Section 1
m, n, k = 64, 48, 4
TOL, MAX_ITER = 1e-6, 3000
KAPPAS, STARTS, SEEDS = (10, 100, 1000), ("small random", "LoRA"), range(5)


def conditioned_target(kappa, generator):  # the chapter's
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    return (U * torch.logspace(0, -math.log10(kappa), k, dtype=torch.float64)) @ V.T


def start_factors(start, seed):  # the chapter's factor_layer, as tensors
    gen = torch.Generator().manual_seed(seed)
    if start == "small random":
        A = 1e-3 * torch.randn(k, n, generator=gen, dtype=torch.float64)
        B = 1e-3 * torch.randn(m, k, generator=gen, dtype=torch.float64)
    else:
        A = (2 * torch.rand(k, n, generator=gen, dtype=torch.float64) - 1) / math.sqrt(n)
        B = torch.zeros(m, k, dtype=torch.float64)
    return A, B


def solve(gram, rhs):
    L, info = torch.linalg.cholesky_ex(gram)
    return torch.where((info != 0)[:, None, None], rhs, torch.cholesky_solve(rhs, L))


def iterations(M0, A0, B0, damping=None, lr=0.5):
    """Iterations to relative error TOL for each problem of the batch (inf if not within MAX_ITER)."""
    A, B = A0.clone(), B0.clone()
    eye = torch.eye(k, dtype=torch.float64)
    lam = None if damping is None else torch.as_tensor(damping, dtype=torch.float64).expand(len(M0))[:, None, None]
    # (one damping per problem of the batch, or one for all)
    norm = M0.flatten(1).norm(dim=1)
    done = torch.full((len(M0),), -1)
    for it in range(MAX_ITER + 1):
        D = B @ A - M0
        err = D.flatten(1).norm(dim=1) / norm
        done[(err <= TOL) & (done < 0)] = it
        active = ((done < 0) & torch.isfinite(err))[:, None, None]
        if not active.any():
            break
        gA, gB = B.mT @ D, D @ A.mT
        if lam is not None:
            gA, gB = solve(B.mT @ B + lam * eye, gA), solve(A @ A.mT + lam * eye, gB.mT).mT
        A, B = torch.where(active, A - lr * gA, A), torch.where(active, B - lr * gB, B)
    return [int(c) if c >= 0 else math.inf for c in done]


fmt = lambda c: ">3000" if c == math.inf else str(c)
keys, Ms, As, Bs = [], [], [], []
for s in SEEDS:
    g = torch.Generator().manual_seed(s)  # s = 0 is the chapter's draw (g = seed_everything(0))
    targets = {kappa: conditioned_target(kappa, g) for kappa in KAPPAS}
    for kappa in KAPPAS:
        for start in STARTS:
            A, B = start_factors(start, s + 1)  # s = 0: the chapter's seed=1 start
            keys.append((s, kappa, start)); Ms.append(targets[kappa]); As.append(A); Bs.append(B)
M0, A0, B0 = torch.stack(Ms), torch.stack(As), torch.stack(Bs)

print("Exercise 1: iterations to 1e-6 for 5 draws of M and of the start (draw 0 = the chapter's table)")
METHODS = {"GD": None, "scaled GD, λ=1e-6": 1e-6, "scaled GD, λ=1e-2": 1e-2}
counts = {"GD": dict(zip(keys, iterations(M0, A0, B0)))}
both = iterations(M0.repeat(2, 1, 1), A0.repeat(2, 1, 1), B0.repeat(2, 1, 1),  # both dampings in one batch
                  torch.tensor([1e-6] * len(keys) + [1e-2] * len(keys), dtype=torch.float64))
counts["scaled GD, λ=1e-6"], counts["scaled GD, λ=1e-2"] = dict(zip(keys, both[:len(keys)])), dict(zip(keys, both[len(keys):]))
for kappa in KAPPAS:
    for start in STARTS:
        cells = []
        for name in METHODS:
            c = [counts[name][s, kappa, start] for s in SEEDS]
            cells.append(f"{name}: {'/'.join(map(fmt, c))} (median {fmt(statistics.median(c))})")
        print(f"  kappa={kappa:4d} {start:12s} " + " | ".join(cells))

# The same iteration with the ScaledGD class itself, one problem at a time: three regular entries, and two
# erratic ones (small random start, λ = 1e-6), whose count depends on floating-point summation order.
for s, kappa, start, lam in ((0, 1000, "LoRA", 1e-6), (0, 10, "small random", 1e-2), (0, 100, "LoRA", 1e-2),
                             (4, 100, "small random", 1e-6), (1, 1000, "small random", 1e-6)):
    g = torch.Generator().manual_seed(s)
    M = {kk: conditioned_target(kk, g) for kk in KAPPAS}[kappa]
    layer = lk.LoRALinear(nn.Linear(n, m, bias=False, dtype=torch.float64), r=k, alpha=k)
    A, B = start_factors(start, s + 1)
    with torch.no_grad():
        layer.base.weight.zero_(); layer.A.copy_(A); layer.B.copy_(B)
    opt = ScaledGD(layer, lr=0.5, damping=lam)
    it_class = math.inf
    for it in range(MAX_ITER + 1):
        with torch.no_grad():
            D = layer.B @ layer.A - M
            if D.norm() / M.norm() <= TOL:
                it_class = it
                break
            layer.A.grad, layer.B.grad = layer.B.T @ D, D @ layer.A.T
        opt.step()
    batched = counts["scaled GD, λ=1e-6" if lam == 1e-6 else "scaled GD, λ=1e-2"][s, kappa, start]
    print(f"  ScaledGD class, draw {s}, kappa={kappa} {start}, λ={lam:g}: {fmt(it_class)} iterations "
          f"(batched: {fmt(batched)})")
print(f"    [{time.time() - t_start:.0f} s]")
print("\nExercise 2: damping sweep, small random start, kappa = 1000 (5 draws; median)")
sel = [i for i, key in enumerate(keys) if key[1] == 1000 and key[2] == "small random"]
lams = [10.0 ** e for e in range(-8, 0)]
c_all = iterations(M0[sel].repeat(len(lams), 1, 1), A0[sel].repeat(len(lams), 1, 1), B0[sel].repeat(len(lams), 1, 1),
                   torch.tensor(lams, dtype=torch.float64).repeat_interleave(len(sel)))
for j, lam in enumerate(lams):
    c = c_all[j * len(sel):(j + 1) * len(sel)]
    print(f"  λ={lam:.0e}: {'/'.join(map(fmt, c))} (median {fmt(statistics.median(c))})")
print(f"  start scale: ‖A0 A0ᵀ‖₂ ≈ {float(torch.linalg.matrix_norm(A0[sel[0]] @ A0[sel[0]].T, 2)):.2g}, "
      f"‖B0ᵀ B0‖₂ ≈ {float(torch.linalg.matrix_norm(B0[sel[0]].T @ B0[sel[0]], 2)):.2g}; "
      f"σ_min(M) = {float(torch.linalg.svdvals(M0[sel[0]])[k - 1]):.3g}")

# ----------------------------------------------------------------------------- Section 2
X_train, y_train, X_test, y_test = transfer.downstream_task()
pretrained = transfer.pretrained_mlp(progress=False)
R, BATCH = 4, 64


def lora_model():  # the chapter's
    torch.manual_seed(1)
    return transfer.prepare_finetuning(copy.deepcopy(pretrained), "lora", r=R)


def lora_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def steps(model, opt, n_steps):
    """n_steps optimiser steps on the chapter's batch order; the training loss of each step."""
    gen = torch.Generator().manual_seed(2)
    batches = torch.randperm(len(X_train), generator=gen).split(BATCH)
    losses = []
    for idx in batches[:n_steps]:
        opt.zero_grad()
        loss = F.cross_entropy(model(X_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


print(f"    [{time.time() - t_start:.0f} s]")
print("\nExercise 3: A -> 10 A, B -> B / 10 (= 0) before training; first 40 steps at each optimiser's best lr")
MAKERS = {"SGD": (lambda mo: torch.optim.SGD(lora_params(mo), lr=0.1)),
          "scaled GD": (lambda mo: ScaledGD(mo, lr=0.1)),
          "scaled GD λ=0": (lambda mo: ScaledGD(mo, lr=0.1, damping=0.0)),
          "AdamW": (lambda mo: torch.optim.AdamW(lora_params(mo), lr=1e-2)),
          "scaled AdamW": (lambda mo: ScaledAdamW(mo, lr=1e-2))}
for name, make in MAKERS.items():
    curves = []
    print(f"    [{time.time() - t_start:.0f} s]")
    for c in (1.0, 10.0):
        model = lora_model()
        with torch.no_grad():
            for _, layer in lk.lora_layers(model):
                layer.A.mul_(c); layer.B.div_(c)
        curves.append(steps(model, make(model), 40))
    diff = max(abs(a - b) for a, b in zip(*curves))
    print(f"  {name:12s} loss at steps 1/10/40: original {' / '.join(f'{curves[0][i]:.4g}' for i in (0, 9, 39))}; "
          f"rescaled {' / '.join(f'{curves[1][i]:.4g}' for i in (0, 9, 39))}; max |difference| {diff:.2g}")

print("\nExercise 4: ScaledAdamW(damping=1e6) vs AdamW(eps=1e-8 * 1e6), lr 1e-2, 40 steps")
_, first = next(lk.lora_layers(lora_model()))
print(f"  at the start: ‖A Aᵀ‖₂ = {float(torch.linalg.matrix_norm(first.A.detach() @ first.A.detach().T, 2)):.3g} (first LoRA layer), B = 0")
runs = {}
for name, make in (("scaled AdamW λ=1e6", lambda mo: ScaledAdamW(mo, lr=1e-2, damping=1e6)),
                   ("AdamW eps=1e-2", lambda mo: torch.optim.AdamW(lora_params(mo), lr=1e-2, eps=1e-2)),
                   ("AdamW eps=1e-8", lambda mo: torch.optim.AdamW(lora_params(mo), lr=1e-2))):
    model = lora_model()
    runs[name] = (steps(model, make(model), 40), torch.cat([p.detach().flatten() for p in lora_params(model)]))
ref_loss, ref_p = runs["scaled AdamW λ=1e6"]
for name in ("AdamW eps=1e-2", "AdamW eps=1e-8"):
    loss, p = runs[name]
    print(f"  vs {name}: max |Δ loss| {max(abs(a - b) for a, b in zip(ref_loss, loss)):.2g}, "
          f"max |Δ parameter| {float((p - ref_p).abs().max()):.2g} (parameters up to {float(ref_p.abs().max()):.2g})")


class GaussSeidelAdamW(ScaledAdamW):
    """ScaledAdamW, but B's preconditioner is built from the already-updated A (the authors' AdamWr)."""

    @torch.no_grad()
    def step(self, closure=None):
        pairs = [group["params"] for group in self.param_groups]
        grads = [(A.grad, B.grad) for A, B in pairs]
        for A, B in pairs:
            B.grad = None                       # pass 1: only A moves (preconditioned by the old B)
        super().step()
        for (A, B), (gA, gB) in zip(pairs, grads):
            A.grad, B.grad = None, gB           # pass 2: only B moves, preconditioned by the new A
        super().step()
        for (A, B), (gA, gB) in zip(pairs, grads):
            A.grad = gA
        return None


def finetune(make, epochs, eval_every):
    model = lora_model()
    h = lk.fit(model, X_train, y_train, loss_fn=F.cross_entropy, optimizer=make(model), epochs=epochs,
               batch_size=BATCH, generator=torch.Generator().manual_seed(2), progress=False, eval_every=eval_every,
               evaluate=lambda mo: {"acc": accuracy(mo, X_test, y_test)})
    return h


print(f"    [{time.time() - t_start:.0f} s]")
print("\nExercise 5: Gauss-Seidel vs Jacobi scaled AdamW, 2 epochs on all 5,000 images, batches from seed 2")
for lr in (1e-3, 1e-2, 1e-1):
    for label, cls in (("Jacobi (ScaledAdamW)", ScaledAdamW), ("Gauss-Seidel", GaussSeidelAdamW)):
        h = finetune(lambda mo: cls(mo, lr=lr), 2, 2)
        print(f"  {label:20s} lr={lr:g}: loss {h.train_loss[-1]:.4g}, acc {100 * h.evals[-1]['acc']:.4g}%")

print(f"    [{time.time() - t_start:.0f} s]")
print("\nExercise 6: damping on the fine-tune: the chapter's split and seeds, scaled GD at its chosen lr 0.3")
from lorakit import protocol
X_all, y_all = torch.cat([X_train, X_test]), torch.cat([y_train, y_test])
order = torch.randperm(len(X_train), generator=torch.Generator().manual_seed(0))
split = protocol.Split(order[1000:], order[:1000], torch.arange(len(X_train), len(X_all)), seed=0)  # the chapter's
(X_tr, y_tr), (X_val, y_val) = split.take("train", X_all, y_all), split.take("val", X_all, y_all)
for lam in (0.0, 1e-6, 1e-3, 1e-1, 1.0):
    accs = []
    for seed in protocol.seeds(3):
        torch.manual_seed(protocol.derive_seed(seed, "init"))
        model = transfer.prepare_finetuning(copy.deepcopy(pretrained), "lora", r=R)
        try:
            lk.fit(model, X_tr, y_tr, loss_fn=F.cross_entropy, optimizer=ScaledGD(model, lr=0.3, damping=lam),
                   epochs=2, batch_size=BATCH, generator=torch.Generator().manual_seed(protocol.derive_seed(seed, "batches")),
                   progress=False)
            accs.append(accuracy(model, X_val, y_val))
        except ValueError:
            accs.append(float("nan"))
    print(f"  λ={lam:g}: val acc per seed " + " / ".join(f"{100 * a:.4g}" for a in accs)
          + f"; mean {100 * sum(accs) / 3:.4g}%")

print(f"    [{time.time() - t_start:.0f} s]")
print("\nSection 2, longer training (quoted in the main text and the Summary): the AdamW pair at the rate")
print("the chapter chose on validation (1e-2 for both), 10 epochs, the chapter's split, seeds and batches")
long_val, long_test = {}, {}
X_te, y_te = split.final_evaluation(X_all, y_all)
for name, make in (("AdamW", lambda mo: torch.optim.AdamW(lora_params(mo), lr=1e-2)),
                   ("scaled AdamW", lambda mo: ScaledAdamW(mo, lr=1e-2))):
    long_val[name], long_test[name] = [], {}
    for seed in protocol.seeds(3):
        torch.manual_seed(protocol.derive_seed(seed, "init"))
        model = transfer.prepare_finetuning(copy.deepcopy(pretrained), "lora", r=R)
        h = lk.fit(model, X_tr, y_tr, loss_fn=F.cross_entropy, optimizer=make(model), epochs=10, batch_size=BATCH,
                   generator=torch.Generator().manual_seed(protocol.derive_seed(seed, "batches")), progress=False,
                   eval_every=2, evaluate=lambda mo: {"val": accuracy(mo, X_val, y_val)})
        long_val[name].append(h.metric("val"))
        long_test[name][seed] = accuracy(model, X_te, y_te)
    means = [100 * sum(v[i] for v in long_val[name]) / 3 for i in range(5)]
    print(f"  {name:12s} mean val acc at epochs 2/4/6/8/10: " + " / ".join(f"{m:.2f}" for m in means)
          + "; test acc at 10: " + " / ".join(f"{100 * a:.4g}" for a in long_test[name].values()))
print("  " + protocol.lesson("after 10 epochs, scaled AdamW", long_test["scaled AdamW"], "AdamW", long_test["AdamW"]))
print(f"\n[10_check ran in {time.time() - t_start:.0f} s]")
