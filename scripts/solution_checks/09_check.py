"""Checks for the exercises of Chapter 9 (notebooks/09_what_delta_w_looks_like.ipynb).

Run: .venv/bin/python scripts/solution_checks/09_check.py
The chapter's protocol: LoRA on W_q, W_v, alpha = 8, lr 1e-2, 3 epochs on 2,000 images (10 in Exercise 2).
The amplification analysis is reported as the two ratios of Table 7 (vs random, vs W's own directions).
"""
import copy
import os
import time

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import torch

import lorakit as lk
from lorakit import peft_methods as pm
from lorakit import subspace as ss
from lorakit.book import tinyformer as tf
from lorakit.book.scaffold import finetune

t_start = time.time()
lk.seed_everything(0)
base = tf.load_pretrained()
X_train, y_train, X_test, y_test = tf.downstream_task()  # 2,000 + 2,000 rotated images, seed 0


def adapt(r: int, seed: int, epochs: int = 3, init_A: str = "kaiming") -> tf.TinyViT:
    lk.seed_everything(seed)
    model = copy.deepcopy(base)
    tf.reset_head(model, 5, generator=torch.Generator().manual_seed(seed))
    lk.inject_lora(model, ["q_proj", "v_proj"], r=r, alpha=8, init_A=init_A)
    pm.unfreeze(model, "head")
    res = finetune(model, X_train, y_train, X_test, y_test, lr=1e-2, epochs=epochs, batch_size=64,
                      generator=torch.Generator().manual_seed(seed), progress=False)
    print(f"  [trained r={r} seed={seed} epochs={epochs} init_A={init_A}: acc {res.accuracy:.4g}]")
    return model


def layer(model, which, block=-1):
    return getattr(model.blocks[block].attn, f"{which}_proj")


def diag(phi, ks=(1, 2, 4, 8)):
    return " ".join(f"{float(phi[k - 1, k - 1]):.3g}" for k in ks)


runs = {(r, s): adapt(r, s) for r, s in [(8, 0), (64, 0), (64, 1), (4, 0)]}

print("\nExercise 1: first block (blocks[0]) vs last block (blocks[1]); phi(i, i) for i = 1, 2, 4, 8")
for b in (0, 1):
    for w in "qv":
        p_rank = ss.subspace_similarity(layer(runs[(8, 0)], w, b).A, layer(runs[(64, 0)], w, b).A)
        p_dw = ss.subspace_similarity(layer(runs[(8, 0)], w, b).delta_weight(), layer(runs[(64, 0)], w, b).delta_weight())
        p_seed = ss.subspace_similarity(layer(runs[(64, 0)], w, b).A, layer(runs[(64, 1)], w, b).A)
        print(f"  block {b} ΔW_{w}: A r=8 vs r=64 {diag(p_rank)} | ΔW r=8 vs r=64 {diag(p_dw)} | "
              f"A seeds (r=64) {diag(p_seed)}")
    for r in (4, 8):
        a = ss.amplification(layer(runs[(r, 0)], "q", b).delta_weight(), layer(runs[(r, 0)], "q", b).base.weight, r,
                             generator=torch.Generator().manual_seed(0))
        print(f"  block {b} amplification r={r}: ΔW_q dirs {a.proj_delta:.3g}, W_q's own {a.proj_W:.3g}, "
              f"random {a.proj_random:.3g}, ‖ΔW_q‖ {a.norm_delta:.3g}, ‖W_q‖ {a.norm_W:.3g}, factor {a.factor:.3g}")
        print(f"    ratios: ΔW_q dirs / random {a.proj_delta / a.proj_random:.2g}, "
              f"ΔW_q dirs / W_q's own {a.proj_delta / a.proj_W:.2g}, ‖ΔW_q‖/‖W_q‖ {a.norm_delta / a.norm_W:.2g}")
print("  random baseline phi(i, i):", " ".join(f"{ss.random_similarity(k, k, 64):.3g}" for k in (1, 2, 4, 8)))

print("\nExercise 2: 10 epochs instead of 3 (last block)")
long = {r: adapt(r, 0, epochs=10) for r in (8, 64)}
A_init = {}
for r in (8, 64):  # the initial A of each run: the same seeding as adapt(), before any training
    lk.seed_everything(0)
    m = copy.deepcopy(base)
    tf.reset_head(m, 5, generator=torch.Generator().manual_seed(0))
    lk.inject_lora(m, ["q_proj", "v_proj"], r=r, alpha=8)
    A_init[r] = {w: layer(m, w).A.detach().clone() for w in "qv"}
for name, src in (("3 epochs", runs), ("10 epochs", {(8, 0): long[8], (64, 0): long[64]})):
    for w in "qv":
        A8 = layer(src[(8, 0)], w).A.detach()
        moved = float((A8 - A_init[8][w]).norm() / A_init[8][w].norm())
        p = ss.subspace_similarity(A8, layer(src[(64, 0)], w).A)
        p_dw = ss.subspace_similarity(layer(src[(8, 0)], w).delta_weight(), layer(src[(64, 0)], w).delta_weight())
        print(f"  {name:9s} ΔW_{w}: ‖A-A0‖/‖A0‖ (r=8) {moved:.3g}; phi(A_8, A_64) {diag(p)}; phi(ΔW_8, ΔW_64) {diag(p_dw)}")
    a = ss.amplification(layer(src[(8, 0)], "q").delta_weight(), layer(src[(8, 0)], "q").base.weight, 8,
                         generator=torch.Generator().manual_seed(0))
    print(f"  {name:9s} amplification r=8: proj {a.proj_delta:.3g}, ‖ΔW_q‖ {a.norm_delta:.3g}, factor {a.factor:.3g}")
    print(f"  {name:9s} ratios r=8: ΔW_q dirs / random {a.proj_delta / a.proj_random:.2g}, "
          f"ΔW_q dirs / W_q's own {a.proj_delta / a.proj_W:.2g}, ‖ΔW_q‖/‖W_q‖ {a.norm_delta / a.norm_W:.2g}")

print("\nExercise 3: ΔW_q vs ΔW_v of the same run (input directions; last block)")
for key in ((8, 0), (64, 0)):
    lq, lv = layer(runs[key], "q"), layer(runs[key], "v")
    pA = ss.subspace_similarity(lq.A, lv.A)
    pD = ss.subspace_similarity(lq.delta_weight(), lv.delta_weight())
    print(f"  r={key[0]:2d}: phi(A_q, A_v) {diag(pA)} | phi(ΔW_q, ΔW_v) {diag(pD)}")
A0q, A0v = A_init[8]["q"], A_init[8]["v"]
print(f"  at initialisation (r=8): phi(A_q, A_v) {diag(ss.subspace_similarity(A0q, A0v))}")

print("\nExercise 4: init_A='gaussian' (std 1/r) vs 'kaiming'; seed 0 vs seed 1 at r=64, phi(i, i) for i = 1, 2, 4, 8, 16")
gauss = {s: adapt(64, s, init_A="gaussian") for s in (0, 1)}
for w in "qv":
    pk = ss.subspace_similarity(layer(runs[(64, 0)], w).A, layer(runs[(64, 1)], w).A)
    pg = ss.subspace_similarity(layer(gauss[0], w).A, layer(gauss[1], w).A)
    pgd = ss.subspace_similarity(layer(gauss[0], w).delta_weight(), layer(gauss[1], w).delta_weight())
    pkd = ss.subspace_similarity(layer(runs[(64, 0)], w).delta_weight(), layer(runs[(64, 1)], w).delta_weight())
    ks = (1, 2, 4, 8, 16)
    print(f"  ΔW_{w}: A kaiming {diag(pk, ks)} | A gaussian {diag(pg, ks)}")
    print(f"  ΔW_{w}: ΔW kaiming {diag(pkd, ks)} | ΔW gaussian {diag(pgd, ks)}")
print(f"  std of A at init: kaiming {1 / 64 ** 0.5 / 3 ** 0.5:.3g}, gaussian (r=64) {1 / 64:.3g}")
print(f"\n[09_check ran in {time.time() - t_start:.0f} s]")
