"""Checks for the solutions of Chapter 11 (the LoRA family). Run from the repository root:
    .venv/bin/python scripts/solution_checks/11_check.py
Same task and budget as the chapter (2 epochs, 158 steps, r = 8), one thread, MKL strict mode as `make notebooks`.
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as the Makefile: bitwise-repeatable MKL results
import math
import time

import torch

import lorakit as lk
from lorakit.book import transfer
from lorakit.train import accuracy
from lorakit import variants as lv
from lorakit.variants._common import update_rank
from lorakit.book.compare import effective_weight, run_variant

T0 = time.time()
g = lk.seed_everything(0)
X, y, X_test, y_test = transfer.downstream_task()
R, EPOCHS, STEPS = 8, 2, 158
ADAPTERS = ["lora", "lora+", "rslora", "dora", "pissa", "adalora", "relora"]


def custom(build, seed=0):
    """run_variant's protocol for a hand-built method: build(model) -> optimizer, init drawn after manual_seed(seed)."""
    model = transfer.pretrained_mlp(progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = build(model)
    before = {n: effective_weight(model.get_submodule(n)).clone() for n in ("0", "2")}
    lk.fit(model, X, y, loss_fn=torch.nn.functional.cross_entropy, optimizer=opt, epochs=EPOCHS, batch_size=64,
           generator=torch.Generator().manual_seed(seed), progress=False)
    ranks = {n: update_rank(effective_weight(model.get_submodule(n)) - before[n]) for n in ("0", "2")}
    return accuracy(model, X_test, y_test), ranks


# ---------------- Exercise 1: seeds 1 and 2 for the adapters (seed 0: the chapter's table) ----------------
print("Exercise 1: test accuracy per seed (2 epochs, r=8)")
CHAPTER_SEED0 = {"lora": 0.6523, "lora+": 0.7458, "rslora": 0.687, "dora": 0.6561, "pissa": 0.7415,
                 "adalora": 0.7087, "relora": 0.6928}  # printed in the chapter's comparison table
acc = {m: [] for m in ADAPTERS}
for seed in (0, 1, 2):  # seed 0 rerun and checked against the chapter's table
    for m in ADAPTERS:
        torch.manual_seed(1234 + seed)  # a different global state each time: run_variant must not depend on it
        res = run_variant(m, X, y, X_test, y_test, r=R, epochs=EPOCHS, seed=seed, progress=False)
        acc[m].append(res.accuracy)
        if m == "adalora":
            print(f"  adalora seed {seed}: {res.notes}")
print(f"{'method':8s} {'seed0*':>7s} {'seed1':>7s} {'seed2':>7s} {'mean':>7s} {'std':>7s} {'min':>7s} {'max':>7s}")
for m, a in acc.items():
    t = torch.tensor(a)
    print(f"{m:8s} " + " ".join(f"{v:7.4g}" for v in a) +
          f" {t.mean():7.4g} {t.std():7.3g} {t.min():7.4g} {t.max():7.4g}"
          + ("" if f"{a[0]:.4g}" == f"{CHAPTER_SEED0[m]:.4g}" else f"   (chapter's table: {CHAPTER_SEED0[m]:.4g})"))
print("  * seed 0 rerun here; it must equal the chapter's table")
for s in range(3):
    print(f"  ranking seed {s}: {sorted(ADAPTERS, key=lambda m: -acc[m][s])}")
print(f"  [{time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU]")

# ---------------- Exercise 2: LoRA+ ratio sweep ----------------
print("\nExercise 2: LoRA+ ratio lambda = lr_B / lr_A (lr_A = 1e-3, seed 0)")
for lam in (1, 4, 16, 64):  # 1 must equal the table's LoRA (0.6523), 16 its LoRA+ (0.7458)
    def build(model, lam=lam):
        lk.inject_lora(model, ["0", "2"], r=R, alpha=R, match="exact")
        return torch.optim.Adam(lv.loraplus_param_groups(model, lr=1e-3, ratio=lam))
    a, _ = custom(build)
    print(f"  lambda={lam:3d}: accuracy {a:.4g}")
print(f"  [{time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU]")

# ---------------- Exercise 3: LoRA at AdaLoRA's learning rate ----------------
print("\nExercise 3")
lora_hi = run_variant("lora", X, y, X_test, y_test, r=R, epochs=EPOCHS, lr=1e-2, progress=False)
ada_lo = run_variant("adalora", X, y, X_test, y_test, r=R, epochs=EPOCHS, lr=1e-4, progress=False)  # uses 10*lr = 1e-3
print(f"  LoRA at lr 1e-2: {lora_hi.accuracy:.4g}  (LoRA at 1e-3: {CHAPTER_SEED0['lora']:.4g}; AdaLoRA at 1e-2: {CHAPTER_SEED0['adalora']:.4g})")
print(f"  AdaLoRA at lr 1e-3: {ada_lo.accuracy:.4g}  ||dW|| layer 0 = {ada_lo.update_norms['0']:.4g}; {ada_lo.notes}")
print(f"  [{time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU]")

# ---------------- Exercise 4: ReLoRA cycles ----------------
print("\nExercise 4: ReLoRA by hand, lv.ReLoRA(model, opt, reset_every=158 // k, seed=0) (init seed 0)")
for warm in (False, True):  # as worded (no warm-up), and with the chapter's warm-up min(10, every - 1)
    for k in (1, 2, 5, 20):
        every = STEPS // k
        def build(model, every=every, warm=warm):
            lk.inject_lora(model, ["0", "2"], r=R, alpha=R, match="exact")
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            lv.ReLoRA(model, opt, reset_every=every, seed=0, **({"warmup_steps": min(10, every - 1)} if warm else {}))
            return opt
        torch.manual_seed(4321 + k)  # must not matter: ReLoRA draws from its own seeded generator
        a, ranks = custom(build)
        cycles = math.ceil(STEPS / every)
        print(f"  {'warm-up' if warm else 'as worded'}: k={k:2d} reset_every={every:3d} cycles={cycles:2d} cap {R * cycles:3d}: "
              f"rank layer 0 {ranks['0']:3d}, layer 2 {ranks['2']:3d}, accuracy {a:.4g}")
print(f"  [{time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU]")

# ---------------- Exercise 5: DoRA's update, magnitude vs direction ----------------
print("\nExercise 5: DoRA (seed 0), layer by layer")
dora_model = transfer.pretrained_mlp(progress=False)
W_before = {n: dora_model.get_submodule(n).weight.detach().clone() for n in ("0", "2")}
res = run_variant("dora", X, y, X_test, y_test, r=R, epochs=EPOCHS, model=dora_model, progress=False)
print(f"  accuracy {res.accuracy:.4g}, total-update ranks {res.update_ranks}")
for n in ("0", "2"):
    layer = dora_model.get_submodule(n)
    with torch.no_grad():
        W0 = W_before[n].double()
        m0 = W0.norm(dim=1)
        V = layer._directional().double()                     # W + s B A
        m = layer.m.detach().double()
        D0, D1 = W0 / m0[:, None], V / V.norm(dim=1, keepdim=True)
        total = m[:, None] * D1 - W0
        mag = (m - m0)[:, None] * D1                          # length change, along the new direction
        dirn = m0[:, None] * (D1 - D0)                        # direction change, at the old length
        lowrank = (m / V.norm(dim=1))[:, None] * (V - W0)     # diag(m/||V||) s B A: rank <= r
        rescale = (m / V.norm(dim=1) - 1)[:, None] * W0       # diag(m/||V|| - 1) W
        fro = lambda t: float(torch.linalg.matrix_norm(t))
        print(f"  layer {n}: split error {fro(mag + dirn - total):.2g}, {fro(lowrank + rescale - total):.2g}")
        for name, part in (("total", total), ("magnitude part", mag), ("direction part", dirn),
                           ("rank-r part diag(m/|V|) sBA", lowrank), ("row rescaling diag(m/|V|-1) W", rescale)):
            print(f"    {name:30s} rank {update_rank(part):4d}  ||.||_F {fro(part):.4g}")
        dm = (m - m0).abs() / m0
        print(f"    |m - m0|/m0: median {dm.median():.3g}, max {dm.max():.3g}; "
              f"rows with |m-m0|/m0 > 1e-3: {int((dm > 1e-3).sum())} of {dm.numel()}")
print(f"\ntotal {time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU")
