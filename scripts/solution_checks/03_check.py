"""Checks for the solutions of Chapter 3 (03_lora_finetuning): every number the solutions quote.

Run (about 1-2 min, one thread), under the pinned numerics:
    set -a; source scripts/numerics.env; set +a
    PYTHONPATH=. .venv/bin/python scripts/solution_checks/03_check.py
The chapter's protocol throughout: the stored comparison (lorakit/book/results/ch03_adaptation.jsonl) gives each
method's learning rate, chosen on validation; every variant below runs at that rate on the same 5 seeds
(seed s draws LoRA's A from derive_seed(s, "init") and the batch order from derive_seed(s, "batches")),
and is compared with the stored method by paired differences over seeds, on validation first.
"""
import copy
import time

import torch

import lorakit as lk
from lorakit import protocol, results
from lorakit.book import adaptation, transfer
from lorakit.book.data import load_fashion_mnist
from lorakit.book.scaffold import finetune, rotate
from lorakit.train import accuracy

T0 = time.time()
torch.set_num_threads(1)
g = lk.seed_everything(0)
base = transfer.pretrained_mlp(progress=False)
X, y, X_test, y_test = transfer.downstream_task()
X_val, y_val = adaptation.validation_set()
rows = results.load(adaptation.results_path(), adaptation.ADAPTATION).rows()
by = {}
for row in rows:
    by.setdefault((adaptation.method_name(row["method"], row["r"]), row["lr"]), {})[row["seed"]] = row
names = [adaptation.method_name(m, r) for m, r in adaptation.METHODS][1:]
mean_val = {(n, lr): sum(v["val_acc"][-1] for v in by[n, lr].values()) / 5
            for n in names for lr in adaptation.LR_GRID}
best = {n: max(adaptation.LR_GRID, key=lambda lr: mean_val[n, lr]) for n in names}


def train(method, r, lr, seed, targets=transfer.LORA_TARGETS, data=(X, y)):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(protocol.derive_seed(seed, "init"))
        model = transfer.prepare_finetuning(copy.deepcopy(base), method, r, targets=targets)
    res = finetune(model, *data, X_val, y_val, epochs=adaptation.EPOCHS, lr=lr, optimizer="adam",
                   eval_every=1, progress=False,
                   generator=torch.Generator().manual_seed(protocol.derive_seed(seed, "batches")))
    return model.eval(), res.history.metric("accuracy")[-1], accuracy(model, X_test, y_test), res.trainable


def stored(name, part):
    return {s: (r["val_acc"][-1] if part == "val" else r["test_acc"]) for s, r in by[name, best[name]].items()}


print("== Exercise 1: learning-rate sensitivity (stored grid, mean validation accuracy %, 5 seeds)")
for n in names:
    i = adaptation.LR_GRID.index(best[n])
    nb = [adaptation.LR_GRID[j] for j in (i - 1, i + 1) if 0 <= j < len(adaptation.LR_GRID)]
    drops = ", ".join(f"at {lr:g}: -{100 * (mean_val[n, best[n]] - mean_val[n, lr]):.2f}" for lr in nb)
    worst = min(mean_val[n, lr] for lr in adaptation.LR_GRID)
    print(f"  {n:>10}: best lr {best[n]:g} ({100 * mean_val[n, best[n]]:.2f}); one half-decade off {drops};"
          f" grid range {100 * (mean_val[n, best[n]] - worst):.2f} points")

for ex, label, targets in [(2, "targets 0, 2, 4", ("0", "2", "4")), (3, "first layer only", ("0",))]:
    print(f"== Exercise {ex}: LoRA r=8 on {label}, lr {best['LoRA r=8']:g} (LoRA r=8's choice), 5 seeds")
    val, test = {}, {}
    for s in adaptation.SEEDS:
        _, val[s], test[s], n = train("lora", 8, best["LoRA r=8"], s, targets=targets)
    print(f"  {n:,} trainable; val {protocol.summarize(val).format(2, scale=100)}")
    print(f"  test {protocol.summarize(test).format(2, scale=100)}")
    print("  " + protocol.lesson(label, val, "LoRA r=8 (0, 2)", stored("LoRA r=8", "val")) + " [validation]")
    print("  " + protocol.lesson(label, test, "LoRA r=8 (0, 2)", stored("LoRA r=8", "test")) + " [test]")
    if ex == 3:
        frozen = by["frozen", None][0]["test_acc"]
        share = [(test[s] - frozen) / (stored("LoRA r=8", "test")[s] - frozen) for s in adaptation.SEEDS]
        print(f"  share of LoRA r=8's gain over the frozen model (test): "
              f"{protocol.summarize(share).format(3)}")

print("== Exercise 4: 1,000 training images instead of 5,000 (5 epochs = 80 steps), rates as chosen")
X1k, y1k, _, _ = transfer.downstream_task(1000)
for method, r in [("last_layer", None), ("full", None), ("lora", 8)]:
    n = adaptation.method_name(method, r)
    test = {s: train(method, r, best[n], s, data=(X1k, y1k))[2] for s in adaptation.SEEDS}
    print(f"  {n:>10} (lr {best[n]:g}): 1,000 images {protocol.summarize(test).format(2, scale=100)}; "
          f"5,000 images {protocol.summarize(stored(n, 'test')).format(2, scale=100)}")
    print("    " + protocol.lesson("1,000 images", test, "5,000", stored(n, "test")))

print("== Exercise 5: the rot90 adapter (LoRA r=8, seed 0, chosen lr) on images rotated by 270 degrees")
rot90, _, acc90, _ = train("lora", 8, best["LoRA r=8"], 0)
X_up, y_up = load_fashion_mnist("test")
X270 = rotate(X_up, 3)
mirror90 = X_test.reshape(-1, 28, 28).flip(2).reshape(-1, 784)  # 90-degree images mirrored left-right
print(f"  rot90 adapter: 90 deg {100 * acc90:.4g}%, 270 deg {100 * accuracy(rot90, X270, y_up):.4g}%, "
      f"90 deg mirrored {100 * accuracy(rot90, mirror90, y_up):.4g}%")
print(f"  frozen base: 270 deg {100 * accuracy(base, X270, y_up):.4g}%, "
      f"180 deg {100 * accuracy(base, rotate(X_up, 2), y_up):.4g}%")
up = X_up.reshape(-1, 28, 28)
sym = ((up + up.flip(2)) / 2).reshape(-1, 784)  # symmetrised images
print(f"  on symmetrised images rotate(x, 3) == mirror(rotate(x, 1)): "
      f"{torch.equal(rotate(sym, 3), rotate(sym, 1).reshape(-1, 28, 28).flip(2).reshape(-1, 784))}")
with torch.no_grad():
    pred = rot90(X270).argmax(1)
per_class = [(pred[y_up == c] == c).float().mean().item() for c in range(10)]
print("  per class on 270 deg: " + ", ".join(
    f"{name} {100 * a:.3g}%" for name, a in zip(("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                                  "Shirt", "Sneaker", "Bag", "Boot"), per_class)))
print(f"(checks took {time.time() - T0:.0f} s)")
