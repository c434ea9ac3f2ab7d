"""Checks for the exercises of Chapter 8 (notebooks/08_which_weights_and_rank.ipynb).

Run: .venv/bin/python scripts/solution_checks/08_check.py
The chapter's protocol: 2 epochs on 2,000 images, lr 1e-2, alpha = 8, one run per cell (23 runs here).
Reduced to fit about a minute: Exercise 1 reruns 2 of the 7 columns with seeds 1 and 2; Exercise 3 reruns only r = 64.
"""
import copy
import os
import statistics
import time

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import torch

import lorakit as lk
from lorakit import peft_methods as pm
from lorakit.book import tinyformer as tf
from lorakit.book.scaffold import finetune

t_start = time.time()
lk.seed_everything(0)
base = tf.load_pretrained()
X_train, y_train, X_test, y_test = tf.downstream_task()  # 2,000 + 2,000 rotated images, seed 0
NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "1": "fc1", "2": "fc2"}


def run_lora(types: str, r: int, seed: int = 0, rslora: bool = False):
    """The chapter's run_lora with a seed and rslora; returns (LoRA parameters, test accuracy in %, epoch losses)."""
    lk.seed_everything(seed)
    model = copy.deepcopy(base)
    tf.reset_head(model, 5, generator=torch.Generator().manual_seed(seed))
    lk.inject_lora(model, [NAMES[t] for t in types], r=r, alpha=8, rslora=rslora)
    n_lora = lk.count_parameters(model).trainable
    pm.unfreeze(model, "head")
    res = finetune(model, X_train, y_train, X_test, y_test, lr=1e-2, epochs=2, batch_size=64,
                      generator=torch.Generator().manual_seed(seed), progress=False)
    return n_lora, 100 * res.accuracy, res.history.train_loss


TABLE = [("q", 8), ("k", 8), ("v", 8), ("o", 8), ("qk", 4), ("qv", 4), ("qkvo", 2)]
full = {key: run_lora(*key)[1] for key in TABLE}  # the chapter's weight-type table (seed 0)
print("seed 0, full budget (the chapter's table):", ", ".join(f"{t} r={r}: {full[(t, r)]:.4g}" for t, r in TABLE))

print("\nExercise 1: three seeds for two columns")
seeds = {}
for key in (("q", 8), ("qkvo", 2)):
    seeds[key] = accs = [full[key]] + [run_lora(*key, seed=seed)[1] for seed in (1, 2)]
    print(f"  {key[0]:5s} r={key[1]}: seeds 0,1,2 = {', '.join(f'{a:.4g}' for a in accs)}; "
          f"mean {statistics.mean(accs):.4g} ± {statistics.stdev(accs):.2g} (sd)")

a, b = seeds[("qkvo", 2)], seeds[("q", 8)]
se_diff = (statistics.variance(a) / 3 + statistics.variance(b) / 3) ** 0.5
print(f"  difference of means {statistics.mean(a) - statistics.mean(b):.3g} points, its standard error {se_diff:.2g}")

print("\nExercise 2: the MLP at (about) the same budget of 2,048 LoRA parameters")
for types, r in (("12", 3), ("qkvo12", 1)):
    n, acc, _ = run_lora(types, r)
    print(f"  {types:7s} r={r}: {n:,} LoRA parameters, acc {acc:.4g}%")

print("\nExercise 3: rslora (scale alpha/sqrt(r) = 1 instead of alpha/r = 0.125) at r = 64")
for types in ("q", "qv", "qkvo"):
    n, acc, losses = run_lora(types, 64, rslora=True)
    print(f"  {types:5s} r=64 rslora: acc {acc:.4g}%, train loss epochs 1/2: {losses[0]:.4g} / {losses[1]:.4g}")

print("\nExercise 4: half the budget (1,024 LoRA parameters)")
HALF = [("q", 4), ("k", 4), ("v", 4), ("o", 4), ("qk", 2), ("qv", 2), ("qkvo", 1)]
half = {}
for key in HALF:
    n, half[key], _ = run_lora(*key)
    print(f"  {key[0]:5s} r={key[1]}: {n:,} params, acc {half[key]:.4g}%  (full budget, r={2 * key[1]}: "
          f"{full[(key[0], 2 * key[1])]:.4g}%)")
rank = lambda accs: [t for (t, _), _ in sorted(accs.items(), key=lambda kv: -kv[1])]
print("  ranking at full budget:", rank(full))
print("  ranking at half budget:", rank(half))
print(f"\n[08_check ran in {time.time() - t_start:.0f} s]")
