"""Checks for the solutions of Chapter 2 (02_low_rank_layers): every number quoted in 02.md.

Run: .venv/bin/python scripts/solution_checks/02_check.py            (about 45 s, one thread)
Exercises 3 and 5 read the stored 100-epoch sweep (lorakit/book/results/ch02_source_sweep.jsonl).
"""
import statistics
import time

import torch
from torch import nn

import lorakit as lk
from lorakit import results
from lorakit.book import lowrank
from lorakit.book.data import load_fashion_mnist

T0 = time.time()
g = lk.seed_everything(0)
X_train, y_train = load_fashion_mnist("train")
X_test, y_test = load_fashion_mnist("test")
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


# ---------------------------------------------------------------- Exercise 1
print("== Exercise 1: AE layers with a variance-preserving init (both factors x 3^(1/4))")
torch.manual_seed(0)
pair = variance_preserving(nn.Sequential(nn.Sequential(nn.Linear(784, 16, bias=False), nn.Linear(16, 512))))[0]
var = torch.stack([pair[1].weight @ pair[0].weight]).double().var().item()
print(f"  Var(BA) of a rescaled 784->512 pair, r=16: {var:.4g}; target 1/(3*784) = {1 / (3 * 784):.4g}; "
      f"plain AE: {lowrank.theoretical_product_variance('ae', 16):.4g}")
print(f"  logits at init (std over inputs, mean over classes): mlp {logits('mlp')[1]:.3g}")
for r in (4, 16, 64):
    print(f"    r={r:>2}: ae {logits('ae', r)[1]:.3g}    ae, variance-preserving {logits('ae', r, variance_preserving)[1]:.3g}")


def first_epoch(kind, r, modify=lambda m: m):
    """Test accuracy (%) after the source's first epoch (60,000 images, 938 steps), seeds 0, 1, 2."""
    accs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = modify(lowrank.build_model(kind, r))
        res = lowrank.train_comparison_model(model, X_train, y_train, X_test, y_test, epochs=1, progress=False)
        accs.append(100 * res.history.metric("accuracy")[0])
    return accs


ms = lambda v: f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}"
for r in (4, 16):
    print(f"  ae_r{r}, epoch 1 (3 seeds): default {ms(first_epoch('ae', r))}%, "
          f"variance-preserving {ms(first_epoch('ae', r, variance_preserving))}%")
print(f"  mlp, epoch 1 (3 seeds): {ms(first_epoch('mlp', None))}%")

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
stored = results.load(lowrank.sweep_results_path(), lowrank.SOURCE_SWEEP)
runs = {p["kind"] + (f"_r{p['r']}" if p["r"] else ""): res for p, res in stored.entries}
at = lambda name, epoch: [100 * c[epoch - 1] for c in runs[name]["test_accuracy"]]
for name in ("lowrank_r16", "lowrank_r64", "lowrank_r128", "mlp"):
    print(f"  stored {name}: epoch 1 {ms(at(name, 1))}%, epoch 10 {ms(at(name, 10))}%, epoch 100 {ms(at(name, 100))}%")
print(f"  source init 1/(9*128) = {1 / (9 * 128):.3g} = {(1 / (9 * 128)) / (1 / (3 * 784)):.3g} x default (layer 1)")

# ---------------------------------------------------------------- Exercise 5
print("== Exercise 5: first epoch at which each AE model's mean is within 1 point of the low-rank model's")
for r in lowrank.SOURCE_RANKS:
    ae = torch.tensor(runs[f"ae_r{r}"]["test_accuracy"]).mean(0) * 100
    lo = torch.tensor(runs[f"lowrank_r{r}"]["test_accuracy"]).mean(0) * 100
    close = [e + 1 for e in range(len(ae)) if ae[e] >= lo[e] - 1]
    print(f"  r={r:>3}: first epoch within 1 point: {close[0] if close else 'never'}; "
          f"epoch 100: ae {ae[-1]:.1f}% vs lowrank {lo[-1]:.1f}%")
print(f"(checks took {time.time() - T0:.0f} s)")
