"""Checks for the exercises of Chapter 7 (notebooks/07_peft_family.ipynb).

Run: .venv/bin/python scripts/solution_checks/07_check.py
Same protocol as the chapter (2,000 images, 3 epochs, batch 64, AdamW, seed 0); one run per setting.
"""
import copy
import os
import time

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import torch
from torch import nn
from torch.nn import functional as F

import lorakit as lk
from lorakit import peft_methods as pm
from lorakit.book import measure
from lorakit.book import tinyformer as tf
from lorakit.book.scaffold import finetune
from lorakit.train import accuracy

t_start = time.time()
lk.seed_everything(0)
base = tf.load_pretrained()
X_train, y_train, X_test, y_test = tf.downstream_task()  # 2,000 + 2,000 rotated images, seed 0
x1 = X_test[:1]
total = lk.count_parameters(base).total
base_flops = measure.forward_flops(base, x1)


def fresh(seed: int = 0) -> tf.TinyViT:
    model = copy.deepcopy(base)
    tf.reset_head(model, 5, generator=torch.Generator().manual_seed(seed))
    return model


def run(setup, lr):
    lk.seed_everything(0)
    model = fresh()
    setup(model)
    res = finetune(model, X_train, y_train, X_test, y_test, lr=lr, epochs=3, batch_size=64,
                      generator=torch.Generator().manual_seed(0), progress=False)
    return model, res


def report(name, model, res):
    flops = measure.forward_flops(model, x1)
    print(f"{name:28s} trainable {res.trainable:7,d}  acc {res.accuracy:.4g}  "
          f"MFLOPs/image {flops / 1e6:.4g} ({100 * (flops / base_flops - 1):+.3g}%)")


print("Exercise 1: adapter bottleneck (chapter: b=8 -> 4,709 trainable, acc 0.8005, +5.62% FLOPs)")
for b in (2, 32):
    model, res = run(lambda m: (pm.inject_adapters(m, ["o_proj", "fc2"], bottleneck=b), pm.unfreeze(m, "head")), 1e-2)
    report(f"adapters b={b}", model, res)
for b in (7, 8):
    print(f"  adapter parameters at b={b}: {4 * (2 * 64 * b + 64 + b)} (+325 head); LoRA q,v r=8: {4 * 8 * (64 + 64)}")

print("\nExercise 2: prefix tuning with 32 vectors (chapter: 8 -> 2,373 trainable, acc 0.8225, +2.81% FLOPs)")
model, res = run(lambda m: (pm.add_prefix(m, 32, generator=torch.Generator().manual_seed(0)), pm.unfreeze(m, "head")), 1e-1)
report("prefix 32", model, res)
print("  key/value length: 17 tokens ->", 17 + 8, "(8 prefixes),", 17 + 32, "(32 prefixes)")

print("\nExercise 3: LoRA r=8 on q,k,v,o,fc1,fc2 vs on q,v (chapter's setup); full FT in the chapter: 0.8635")
_, res_qv = run(lambda m: (lk.inject_lora(m, ["q_proj", "v_proj"], r=8, alpha=8), pm.unfreeze(m, "head")), 1e-2)
print(f"  LoRA q,v: trainable {res_qv.trainable:,}, acc {res_qv.accuracy:.4g}")
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
model, res = run(lambda m: (lk.inject_lora(m, targets, r=8, alpha=8), pm.unfreeze(m, "head")), 1e-2)
report("LoRA all, unmerged", model, res)
merged = copy.deepcopy(model)
lk.merge_lora(merged)
report("LoRA all, merged", merged, res)
print("  merged == unmerged logits:", torch.allclose(merged(X_test[:256]), model(X_test[:256]), atol=1e-5))
# Counted by hand: an unmerged LoRA layer adds x Aᵀ and h Bᵀ, 2·r·(in + out) FLOPs per token.
extra = 17 * sum(2 * 8 * (layer.in_features + layer.out_features) for _, layer in lk.lora_layers(model))
print(f"  by hand: unmerged LoRA adds {extra / 1e6:.4g} MFLOPs/image -> {(base_flops + extra) / 1e6:.4g} "
      f"({100 * extra / base_flops:+.3g}%)")
print("\nExercise 4: intrinsic dimension (chapter: d=10 0.4205, 100 0.731, 1000 0.873; full FT 0.8635)")
full_acc = 0.8635
sub_acc = {}
for d in (30, 300, 3000):
    lk.seed_everything(0)
    sub = pm.SubspaceModel(fresh(), d, generator=torch.Generator().manual_seed(d))
    res = finetune(sub, X_train, y_train, X_test, y_test, lr=1e-1, epochs=3, batch_size=64,
                      generator=torch.Generator().manual_seed(0), progress=False)
    sub_acc[d] = res.accuracy
    print(f"  all weights in subspace d={d:5d}: acc {res.accuracy:.4g} ({100 * res.accuracy / full_acc:.4g}% of full FT)")
import math
goal, lo, hi = 0.9 * full_acc, (100, 0.731), (300, sub_acc[300])  # d = 100: the chapter's 0.731
frac = (goal - lo[1]) / (hi[1] - lo[1])
d90 = 10 ** (math.log10(lo[0]) + frac * (math.log10(hi[0]) - math.log10(lo[0])))
print(f"  90% of full FT = {goal:.4g}; log-linear interpolation between d=100 and d=300: d90 ≈ {d90:.3g} "
      f"({100 * d90 / total:.2g}% of {total:,} weights)")
for d in (30,):
    # Hint: the new head trains normally (lr 3e-2, the head-only rate); only the body lives in the subspace.
    lk.seed_everything(0)
    model = fresh()
    head, model.head = model.head, nn.Identity()
    sub = pm.SubspaceModel(model, d, generator=torch.Generator().manual_seed(d))
    net = nn.Sequential(sub, head)
    opt = torch.optim.AdamW([{"params": [sub.z], "lr": 1e-1}, {"params": head.parameters(), "lr": 3e-2}], weight_decay=0.0)
    lk.fit(net, X_train, y_train, loss_fn=F.cross_entropy, optimizer=opt, epochs=3, batch_size=64,
           generator=torch.Generator().manual_seed(0), progress=False)
    acc = accuracy(net, X_test, y_test)
    print(f"  body in subspace d={d:5d}, head trained normally: acc {acc:.4g} ({100 * acc / full_acc:.4g}% of full FT)")

print("\nExercise 5: latency, LoRA unmerged vs merged (timings: machine- and load-dependent)")
# Latency does not depend on the values of A and B, so an untrained LoRA (B set non-zero) is enough.
lora_qv = fresh()
lk.inject_lora(lora_qv, ["q_proj", "v_proj"], r=8, alpha=8)
for _, layer in lk.lora_layers(lora_qv):
    nn.init.normal_(layer.B, std=0.01)
lora_qv_merged = copy.deepcopy(lora_qv)
lk.merge_lora(lora_qv_merged)
for bs, reps in ((1, 200), (256, 10)):
    t = measure.compare_latency({"unmerged": lora_qv, "merged": lora_qv_merged}, X_test[:bs], repeats=reps)
    print(f"  batch {bs:3d}: unmerged {1e3 * t['unmerged']:.3g} ms, merged {1e3 * t['merged']:.3g} ms, "
          f"ratio {t['unmerged'] / t['merged']:.3g}")
n_lin = sum(type(m) is nn.Linear for m in base.modules())
n_lora = len(list(lk.lora_layers(lora_qv)))
print(f"  matrix products per forward: merged {n_lin}, unmerged {n_lin + 2 * n_lora} (+{2 * n_lora} thin ones, "
      f"plus {n_lora} scalings)")
print(f"\n[07_check ran in {time.time() - t_start:.0f} s]")
