"""Checks for the solutions of Chapter 2 (02_low_rank_layers): every number quoted in 02.md.

Run: .venv/bin/python scripts/solution_checks/02_check.py            (about 45 s, one thread)
Exercise 5 trains only the first epoch of the command's runs: with the same seed and unshuffled batches it is
the command's epoch 1 (the command uses all CPU threads, which can move the last digit).
"""
import time

import torch
from torch import nn
from torch.nn import functional as F

import lorakit as lk
from lorakit.book import lowrank
from lorakit.book.data import load_fashion_mnist
from lorakit.book.scaffold import finetune

T0 = time.time()
g = lk.seed_everything(0)
X_train, y_train = load_fashion_mnist("train")
X_test, y_test = load_fashion_mnist("test")
X20, y20 = X_train[:20_000], y_train[:20_000]
VP = 3 ** 0.25  # multiply both AE factors by 3^(1/4): the product's entry variance grows by sqrt(3)^2 = 3


def variance_preserving(model):
    """Rescale both nn.Linear factors of every AE pair so that Var(BA) = 1/(3 d_in)."""
    for layer in model:
        if isinstance(layer, nn.Sequential):
            with torch.no_grad():
                for linear in layer:
                    linear.weight.mul_(VP)
    return model


def logits(kind, r=None, modify=lambda m: m, seed=0):
    """(std over all logits, mean over classes of the std over inputs) at init, on 1000 test images."""
    torch.manual_seed(seed)
    with torch.no_grad():
        out = modify(lowrank.build_model(kind, r))(X_test[:1000])
    return out.std().item(), out.std(0).mean().item()


def train(kind, r, *, modify=lambda m: m, optimizer="sgd", epochs=3, X=X20, y=y20):
    """run_comparison's recipe (seed 0, sequential batches of 64, lr 1e-3), optionally a modified init or Adam."""
    lk.seed_everything(0, threads=None)
    model = modify(lowrank.build_model(kind, r))
    if optimizer == "sgd":
        return lowrank.train_comparison_model(model, X, y, X_test, y_test, epochs=epochs, progress=False).history.metric("accuracy")
    # lowrank.train_comparison_model's recipe with Adam instead of SGD
    res = finetune(model, X, y, X_test, y_test, epochs=epochs, lr=1e-3, optimizer="adam", batch_size=64,
                   sampling="sequential", eval_every=1, progress=False)
    return res.history.metric("accuracy")


pct = lambda accs: " ".join(f"{100 * a:.4g}%" for a in accs)

# ---------------------------------------------------------------- Exercise 1
print("== Exercise 1: AE layers with a variance-preserving init (both factors x 3^(1/4))")
torch.manual_seed(0)
pair = variance_preserving(nn.Sequential(nn.Sequential(nn.Linear(784, 16, bias=False), nn.Linear(16, 512))))[0]
var = torch.stack([pair[1].weight @ pair[0].weight]).double().var().item()
print(f"  Var(BA) of a rescaled 784->512 pair, r=16: {var:.4g}; target 1/(3*784) = {1 / (3 * 784):.4g}; "
      f"plain AE: {lowrank.theoretical_product_variance('ae', 16):.4g}")
print(f"  logits at init (std over all entries | std over inputs): mlp {logits('mlp')[0]:.4g} | {logits('mlp')[1]:.4g}")
for r in (4, 16, 64):
    (a0, a1), (v0, v1) = logits("ae", r), logits("ae", r, variance_preserving)
    print(f"    r={r:>2}: ae {a0:.4g} | {a1:.4g}    ae, variance-preserving {v0:.4g} | {v1:.4g}")
for r in (4, 16):
    print(f"  ae_r{r} variance-preserving, 3 epochs on 20,000 images: {pct(train('ae', r, modify=variance_preserving))}")
print("  (chapter, same recipe: mlp 23.93% 43.91% 51.8%; ae_r4 10% 11.04% 18.25%; ae_r16 10% 10% 10.95%)")

# ---------------------------------------------------------------- Exercise 2
print("== Exercise 2: the rank at which the source's init matches the default variance of layer 1")
r_star = 784 / 3
print(f"  1/(9r) = 1/(3*784)  <=>  r = 784/3 = {r_star:.4g}; at r = 261: 1/(9*261) = {1 / (9 * 261):.4g} "
      f"vs 1/(3*784) = {1 / (3 * 784):.4g}; layers 2-3 (d_in = 512): ratio (1/(9*261)) / (1/(3*512)) = {3 * 512 / (9 * 261):.3g}")
for r in (16, 64, 261):
    s0, s1 = logits("lowrank", r)
    print(f"    lowrank r={r:>3}: logit std {s0:.4g} | over inputs {s1:.4g}; parameters {lowrank.expected_parameters('lowrank', r):,}")
print(f"  (mlp: {lowrank.expected_parameters('mlp'):,} parameters)")

# ---------------------------------------------------------------- Exercise 3
print("== Exercise 3: r = 128")
for r in (8, 10, 16, 128):
    layer = lowrank.LowRankLinear(512, 10, r)
    print(f"  512->10 layer at r={r:>3}: rank of BA {torch.linalg.matrix_rank(layer.weight.detach()).item():>2}, "
          f"parameters {sum(p.numel() for p in layer.parameters()):,} (full nn.Linear(512, 10): 5,130)")
print(f"  lowrank_r128, 3 epochs on 20,000 images: {pct(train('lowrank', 128))}; "
      f"logit std at init {logits('lowrank', 128)[0]:.4g}")
print(f"  ae_r128, 3 epochs on 20,000 images: {pct(train('ae', 128))}")

# ---------------------------------------------------------------- Exercise 4
print("== Exercise 4: Adam (lr 1e-3) instead of SGD, 1 epoch on 20,000 images (313 steps)")
for kind, r in [("ae", 4), ("ae", 16), ("mlp", None)]:
    print(f"  {kind}{'' if r is None else f'_r{r}'}: Adam {pct(train(kind, r, optimizer='adam', epochs=1))}")
print("  (chapter, SGD after epoch 1: mlp 23.93%, ae_r4 10%, ae_r16 10%)")

# ---------------------------------------------------------------- Exercise 5 (first epoch on all 60,000 images)
print("== Exercise 5: the first epoch of `--epochs 10 --ranks 4 16` (all 60,000 images, 938 steps, CPU)")
for kind, r in [("lowrank", 4), ("lowrank", 16), ("ae", 4), ("ae", 16)]:
    print(f"  {kind}_r{r}: epoch 1 on 60,000 images {pct(train(kind, r, epochs=1, X=X_train, y=y_train))}")
print("  (chapter, epoch 3 on 20,000 images = 939 steps: lowrank_r4 48.51%, lowrank_r16 67.55%, ae_r4 18.25%, ae_r16 10.95%)")
print(f"(checks took {time.time() - T0:.0f} s)")
