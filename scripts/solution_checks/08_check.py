"""Checks for the exercises of Chapter 8 (notebooks/08_which_weights_and_rank.ipynb).

Run: set -a && source scripts/numerics.env && set +a && .venv/bin/python scripts/solution_checks/08_check.py
The chapter's protocol: 2 epochs on 2,000 images, lr 1e-2, alpha = 8, seeds 0, 1, 2 for every
configuration (45 runs, in the notebook's order, so the numbers are the notebook's).
Reduced to fit about two minutes: Exercise 1 adds seeds 3 and 4 to two columns only; Exercise 3
reruns only r = 64; nothing is tuned (the learning rate is Chapter 7's).
"""
import copy
import os
import time

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import torch

import lorakit as lk
from lorakit import peft_methods as pm
from lorakit import protocol
from lorakit.book import tinyformer as tf
from lorakit.book.scaffold import finetune

t_start = time.time()
lk.seed_everything(0)
base = tf.load_pretrained()
X_train, y_train, X_test, y_test = tf.downstream_task()  # 2,000 + 2,000 rotated images, seed 0
NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "1": "fc1", "2": "fc2"}
SEEDS = protocol.seeds(3)


def run_lora(types: str, r: int, seed: int = 0, rslora: bool = False, lr: float = 1e-2):
    """The chapter's run_lora plus rslora and lr; returns (LoRA params, test acc in [0, 1], losses)."""
    lk.seed_everything(seed)
    model = copy.deepcopy(base)
    tf.reset_head(model, 5, generator=torch.Generator().manual_seed(seed))
    lk.inject_lora(model, [NAMES[t] for t in types], r=r, alpha=8, rslora=rslora)
    n_lora = lk.count_parameters(model).trainable
    pm.unfreeze(model, "head")
    res = finetune(model, X_train, y_train, X_test, y_test, lr=lr, epochs=2, batch_size=64,
                   generator=torch.Generator().manual_seed(seed), progress=False)
    return n_lora, res.accuracy, res.history.train_loss


def fmt(values) -> str:
    return ", ".join(f"{100 * v:.2f}" for v in values)


def mean_sd(values) -> str:
    s = protocol.summarize(values)
    return f"mean {100 * s.mean:.2f} ± {100 * s.sd:.2f} (sd)"


# The chapter's runs, in the notebook's order.
TABLE = [("q", 8), ("k", 8), ("v", 8), ("o", 8), ("qk", 4), ("qv", 4), ("qkvo", 2)]
acc = {key: [run_lora(*key, seed=s)[1] for s in SEEDS] for key in TABLE}
for key in [(t, r) for t in ("q", "qv", "qkvo") for r in (1, 8, 64)]:
    if key not in acc:
        acc[key] = [run_lora(*key, seed=s)[1] for s in SEEDS]
print("The chapter's table, test accuracy % for seeds 0, 1, 2:")
for key, values in acc.items():
    print(f"  {key[0]:5s} r={key[1]:2d}: {fmt(values)}; {mean_sd(values)}")

print("\nExercise 1: seeds 3 and 4 added to two columns (5 seeds)")
five = {}
for key in (("q", 8), ("qkvo", 2)):
    five[key] = acc[key] + [run_lora(*key, seed=s)[1] for s in (3, 4)]
    print(f"  {key[0]:5s} r={key[1]}: seeds 0-4 = {fmt(five[key])}; {mean_sd(five[key])}")
for n in (3, 5):
    print(" ", protocol.lesson("all four r=2", five[("qkvo", 2)][:n], "W_q r=8",
                               five[("q", 8)][:n], decimals=2))
d = protocol.paired_difference(five[("qkvo", 2)], five[("q", 8)])
print(f"  sd of the paired difference over 5 seeds: {100 * d.sd:.2f} points")
for n in range(3, 9):  # half-width of the 95 % interval with n seeds at this sd
    print(f"  n = {n} seeds: half-width {protocol.t_quantile(0.975, n - 1) * 100 * d.sd / n ** 0.5:.2f}")

print("\nExercise 2: the MLP at (about) the same budget of 2,048 LoRA parameters")
mlp = {}
for types, r in (("12", 3), ("qkvo12", 1)):
    runs = [run_lora(types, r, seed=s) for s in SEEDS]
    mlp[types] = [a for _, a, _ in runs]
    print(f"  {types:7s} r={r}: {runs[0][0]:,} LoRA parameters, acc {fmt(mlp[types])}; "
          f"{mean_sd(mlp[types])}")
print(" ", protocol.lesson("fc1+fc2 r=3", mlp["12"], "W_o r=8", acc[("o", 8)], decimals=2))
print(" ", protocol.lesson("all six r=1", mlp["qkvo12"], "all four r=2", acc[("qkvo", 2)],
                           decimals=2))

print("\nExercise 3: rslora (scale alpha/sqrt(r) = 1 instead of alpha/r = 0.125) at r = 64")
rs = {}
for types in ("q", "qv", "qkvo"):
    runs = [run_lora(types, 64, seed=s, rslora=True) for s in SEEDS]
    rs[types] = [a for _, a, _ in runs]
    losses = "; ".join(f"{h[0]:.3f} / {h[1]:.3f}" for _, _, h in runs)
    print(f"  {types:5s} r=64 rslora, lr 1e-2: acc {fmt(rs[types])}; {mean_sd(rs[types])}")
    print(f"        train loss epochs 1 / 2, seeds 0, 1, 2: {losses}")
    print("   ", protocol.lesson("rsLoRA", rs[types], "alpha/r", acc[(types, 64)], decimals=2))
low = [run_lora("qkvo", 64, seed=s, rslora=True, lr=1e-2 / 8)[1] for s in SEEDS]
print(f"  qkvo  r=64 rslora, lr 1e-2/8 = 1.25e-3: acc {fmt(low)}; {mean_sd(low)}")
print("   ", protocol.lesson("rsLoRA at lr/8", low, "alpha/r at lr", acc[("qkvo", 64)],
                           decimals=2))
print("   ", protocol.lesson("rsLoRA at lr/8", low, "rsLoRA at lr", rs["qkvo"], decimals=2))

print("\nExercise 4: half the budget (1,024 LoRA parameters)")
HALF = [("q", 4), ("k", 4), ("v", 4), ("o", 4), ("qk", 2), ("qv", 2), ("qkvo", 1)]
half = {}
for key in HALF:
    half[key] = acc[key] if key in acc else [run_lora(*key, seed=s)[1] for s in SEEDS]
    full = acc[(key[0], 2 * key[1])]
    print(f"  {key[0]:5s} r={key[1]}: half {100 * protocol.summarize(half[key]).mean:.2f}, "
          f"full {100 * protocol.summarize(full).mean:.2f}; "
          + protocol.lesson("half", half[key], "full", full, decimals=2))
mean = lambda v: protocol.summarize(v).mean
rank = lambda d: [t for (t, _), _ in sorted(d.items(), key=lambda kv: -mean(kv[1]))]
print("  ranking of means at full budget:", rank({k: acc[k] for k in TABLE}))
print("  ranking of means at half budget:", rank(half))
print(" ", protocol.lesson("half: all four r=1", half[("qkvo", 1)], "half: W_q r=4",
                           half[("q", 4)], decimals=2))
print(f"\n[08_check ran in {time.time() - t_start:.0f} s]")
