"""Checks for the exercises of Chapter 7 (notebooks/07_peft_family.ipynb).

Run: make solution-checks NB=07
The chapter's protocol: the 2,000 training images, 1,000 validation images, the 2,000 test images;
3 epochs, batch 64, AdamW; the learning rate chosen on validation with seed 0 from three rates half a
decade apart, then seeds 1 and 2 at that rate; differences paired over the 3 seeds. The chapter's own
configurations are re-run with the same code, so their numbers equal the chapter's.
"""
import copy
import time

import torch
from torch import nn

import lorakit as lk
from lorakit import peft_methods as pm
from lorakit import protocol
from lorakit.book import measure
from lorakit.book import peft_family_exp as exp
from lorakit.book import tinyformer as tf

t_start = time.time()
lk.seed_everything(0)
base = tf.load_pretrained()
split, X_all, y_all = exp.downstream_split()
X_train, y_train = split.take("train", X_all, y_all)
X_val, y_val = split.take("val", X_all, y_all)
SEEDS = protocol.seeds(3)


def fresh(seed, random_init=False):
    torch.manual_seed(protocol.derive_seed(seed, "init"))
    model = tf.TinyViT(base.config) if random_init else copy.deepcopy(base)
    tf.reset_head(model, 5, generator=torch.Generator().manual_seed(seed))
    return model


def method(setup):
    def build(seed):
        model = fresh(seed)
        setup(model)
        return model
    return build


def with_head(setup):
    return lambda m: (setup(m), pm.unfreeze(m, "head"))


adapters = lambda b: with_head(lambda m: pm.inject_adapters(m, ["o_proj", "fc2"], bottleneck=b))
prefix = lambda n: with_head(lambda m: pm.add_prefix(m, n))
lora = lambda targets: with_head(lambda m: lk.inject_lora(m, targets, r=8, alpha=8))
QV, ALL = ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]

runs = {}


def run(name, build, grid):
    runs[name] = exp.tune_then_seeds(build, grid, SEEDS, X_train, y_train, X_val, y_val, desc=name)
    print("  " + runs[name].choice.describe(name, metric="val acc of seed 0").replace("\n", "\n  "))


print("Exercise 1: adapter bottleneck (chapter: b=8)")
for b in (2, 8, 32):
    run(f"adapters (b={b})", method(adapters(b)), [3e-3, 1e-2, 3e-2])
run("LoRA (q,v; r=8)", method(lora(QV)), [3e-3, 1e-2, 3e-2])
for b in (7, 8):
    print(f"  adapter parameters at b={b}: {4 * (2 * 64 * b + 64 + b)} (+325 head); "
          f"LoRA q,v r=8: {4 * 8 * (64 + 64)}")

print("\nExercise 2: prefix tuning with 2, 8, 16, 32 vectors")
for n in (2, 8, 16, 32):
    grid = [1e-2, 3e-2, 1e-1] if n == 32 else [3e-2, 1e-1, 3e-1]  # the chapter's grids for 8, 32
    run(f"prefix ({n})", method(prefix(n)), grid)
    print(f"    key/value length: 17 tokens -> {17 + n}")

print("\nExercise 3: LoRA r=8 on q,k,v,o,fc1,fc2")
run("LoRA (all six; r=8)", method(lora(ALL)), [3e-3, 1e-2, 3e-2])
run("full fine-tuning", method(lambda m: m.requires_grad_(True)), [1e-3, 3e-3, 1e-2])

print("\nExercise 4: only the body in the subspace, the head trained normally (same lr for z and head)")


def body_subspace(d):
    def build(seed):
        model = fresh(seed)
        head, model.head = model.head, nn.Identity()
        body = pm.SubspaceModel(model, d, generator=torch.Generator().manual_seed(seed))
        return nn.Sequential(body, head)
    return build


for d in (10, 30, 100):
    run(f"body subspace (d={d})", body_subspace(d), [3e-2, 1e-1, 3e-1])
run("head only", method(lambda m: pm.train_only(m, "head")), [3e-2, 1e-1, 3e-1])

X_test, y_test = split.final_evaluation(X_all, y_all)  # every choice is made
test = {name: r.test_accuracy(X_test, y_test) for name, r in runs.items()}
notes = {name: f"{r.trainable:,} trained, lr={r.lr:g}" for name, r in runs.items()}
print("\nTest accuracies (all exercises)")
print(protocol.method_table(test, scale=100, metric="test acc %", notes=notes))

x1 = X_test[:1]
base_flops = measure.forward_flops(base, x1)


def flops(name, model=None):
    f = measure.forward_flops(model if model is not None else runs[name].module(0), x1)
    return f"{f / 1e6:.4g} MFLOPs/image ({100 * (f / base_flops - 1):+.3g}%)"


print("\nExercise 1, continued")
for b in (2, 8, 32):
    print(f"  adapters (b={b}): {flops(f'adapters (b={b})')}")
for b in (2, 32):
    print("  " + protocol.lesson(f"adapters (b={b})", test[f"adapters (b={b})"], "b=8", test["adapters (b=8)"]))
print("  " + protocol.lesson("adapters (b=8)", test["adapters (b=8)"], "LoRA", test["LoRA (q,v; r=8)"]))

print("\nExercise 2, continued")
for n in (2, 8, 16, 32):
    print(f"  prefix ({n}): {flops(f'prefix ({n})')}")
for n in (2, 16, 32):
    print("  " + protocol.lesson(f"prefix ({n})", test[f"prefix ({n})"], "prefix (8)", test["prefix (8)"]))

print("\nExercise 3, continued")
model = runs["LoRA (all six; r=8)"].module(0)
merged = copy.deepcopy(model)
lk.merge_lora(merged)
print(f"  unmerged: {flops('', model)}; merged: {flops('', merged)}")
print("  merged == unmerged logits:", torch.allclose(merged(X_test[:256]), model(X_test[:256]), atol=1e-5))
extra = 17 * sum(2 * 8 * (layer.in_features + layer.out_features) for _, layer in lk.lora_layers(model))
print(f"  by hand: unmerged LoRA adds {extra / 1e6:.4g} MFLOPs/image")
for other in ("LoRA (q,v; r=8)", "full fine-tuning"):
    print("  " + protocol.lesson("LoRA (all six)", test["LoRA (all six; r=8)"], other, test[other]))

print("\nExercise 4, continued")
goal = 0.9 * protocol.summarize(test["full fine-tuning"]).mean
print(f"  90% of full fine-tuning: {100 * goal:.4g} %")
for d in (10, 30, 100):
    s = protocol.summarize(test[f"body subspace (d={d})"])
    print(f"  body subspace d={d:4d}: mean {100 * s.mean:.4g} % (reaches 90%: {s.mean >= goal})")
print("  " + protocol.lesson("body subspace (d=10)", test["body subspace (d=10)"], "head only", test["head only"]))

print("\nExercise 5: latency, LoRA unmerged vs merged (timings: machine- and load-dependent)")
lora_qv = fresh(0)
lk.inject_lora(lora_qv, QV, r=8, alpha=8)
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
