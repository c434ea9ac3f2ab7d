"""Checks for the solutions of Chapter 12 (QLoRA). Run from the repository root:
    .venv/bin/python scripts/solution_checks/12_check.py
Exercises 1-5: quantisation and memory arithmetic, a few seconds. Exercise 6 trains (33 runs of
2 epochs, under a minute on 2 cores) with the chapter's protocol and code.
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import time

import copy

import torch
from torch.nn import functional as F

import lorakit as lk
from lorakit import protocol
from lorakit.book import adaptation, transfer
from lorakit.book.scaffold import finetune
from lorakit.train import accuracy
from lorakit import variants as lv

T0 = time.time()
g = lk.seed_everything(0)
model = transfer.pretrained_mlp(progress=False)
weights = {name: model.get_submodule(name).weight.detach() for name in ("0", "2", "4")}
W0 = weights["0"]
rel = lambda W_hat, W: float((W_hat - W).norm() / W.norm())  # relative Frobenius error


def blockwise(W, table, block=64):
    """Block-wise absmax quantisation to the nearest value of `table` (ascending, in [-1, 1]); returns the dequantised W."""
    blocks = F.pad(W.flatten(), (0, (-W.numel()) % block)).view(-1, block)
    c = blocks.abs().amax(dim=1, keepdim=True)
    idx = torch.bucketize(blocks / c, (table[1:] + table[:-1]) / 2)
    return (table[idx] * c).flatten()[: W.numel()].view(W.shape)


# ---------------- Exercise 1: uniform 4-bit grid vs NF4 ----------------
print("Exercise 1: layer 0, blocks of 64")
nf4, uni = lv.nf4_table(), torch.linspace(-1, 1, 16)
W_nf4, W_uni = blockwise(W0, nf4), blockwise(W0, uni)
print(f"  our blockwise(NF4) equals dequantize_nf4(quantize_nf4): {torch.equal(W_nf4, lv.dequantize_nf4(lv.quantize_nf4(W0)))}")
print(f"  relative error: NF4 {rel(W_nf4, W0):.4g}, uniform {rel(W_uni, W0):.4g}, ratio {rel(W_uni, W0) / rel(W_nf4, W0):.3g}")
for name, W in weights.items():
    print(f"  layer {name}: NF4 {rel(blockwise(W, nf4), W):.4g}  uniform {rel(blockwise(W, uni), W):.4g}")
blocks = F.pad(W0.flatten(), (0, (-W0.numel()) % 64)).view(-1, 64)
u = (blocks / blocks.abs().amax(dim=1, keepdim=True)).flatten()[: W0.numel()].abs()  # |w| / block absmax
err_n, err_u = (W_nf4 - W0).flatten() ** 2, (W_uni - W0).flatten() ** 2
print("  |w|/absmax bin   share of weights   MSE NF4 / MSE uniform   share of uniform's total SE")
for lo, hi in ((0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.01)):
    k = (u >= lo) & (u < hi)
    print(f"  [{lo:.2f}, {hi:.2f})        {float(k.float().mean()):8.3g}           {float(err_n[k].mean() / err_u[k].mean()):8.3g}"
          f"               {float(err_u[k].sum() / err_u.sum()):8.3g}")
print(f"  weights NF4 rounds to exactly 0: {int((W_nf4 == 0).sum())} ({100 * float((W_nf4 == 0).float().mean()):.3g} %); "
      f"uniform has no 0, its smallest |value| is {float(uni.abs().min()):.4g} x absmax")
print(f"  grid steps: uniform {float(uni[1] - uni[0]):.4g}; NF4 around 0 {float(nf4[8] - nf4[7]):.4g}, at the ends {float(nf4[15] - nf4[14]):.4g}")

# ---------------- Exercise 2: block size ----------------
print("\nExercise 2: block size vs bits and error (all three weight matrices, fp32 scales)")
n = sum(W.numel() for W in weights.values())
for bs in (16, 32, 64, 128, 256, 1024, 4096):
    qs = {k: lv.quantize_nf4(W, block_size=bs) for k, W in weights.items()}
    bits = 8 * sum(q.nbytes for q in qs.values()) / n
    err = rel(torch.cat([lv.dequantize_nf4(q).flatten() for q in qs.values()]),
              torch.cat([W.flatten() for W in weights.values()]))
    print(f"  block {bs:5d}: {bits:.4g} bits/weight, relative error {err:.4g}")

# ---------------- Exercise 3: QPiSSA ----------------
print("\nExercise 3: quantise W (QLoRA) or the PiSSA residual (QPiSSA), NF4 + double quant")
for name in ("0", "2"):
    W = weights[name]
    e_qlora = rel(lv.dequantize_nf4(lv.quantize_nf4(W, double_quant=True)), W)
    parts = [f"layer {name}: QLoRA {e_qlora:.4g}"]
    for r in (8, 64):
        layer = lv.PiSSALinear(transfer.pretrained_mlp(progress=False).get_submodule(name), r=r, alpha=r)
        W_res = layer.base.weight.detach()
        principal = layer.delta_weight().detach()  # s B A = U_r S_r V_r^T
        W_hat = lv.dequantize_nf4(lv.quantize_nf4(W_res, double_quant=True)) + principal
        parts.append(f"QPiSSA r={r} {rel(W_hat, W):.4g} (||W_res||/||W|| {float(W_res.norm() / W.norm()):.4g})")
    print("  " + ", ".join(parts))

# ---------------- Exercise 4: int8 vs fp8 double quantisation of the scales ----------------
print("\nExercise 4: the 2nd-level quantisation of the block scales (blocks of 64, groups of 256)")
for name, W in weights.items():
    c = lv.quantize_nf4(W).absmax                          # fp32 absmax per block
    c_int8 = lv.quantize_nf4(W, double_quant=True).block_absmax()
    mean = c.mean()
    outs = []
    for grp in (c - mean).split(256):
        s = grp.abs().max() / torch.finfo(torch.float8_e4m3fn).max    # largest |value| maps to 448
        outs.append((grp / s).to(torch.float8_e4m3fn).float() * s)
    c_fp8 = torch.cat(outs) + mean
    c_cast = c.to(torch.float8_e4m3fn).float()             # no mean, no group scale: a plain cast
    re = lambda ch: (float((ch - c).norm() / c.norm()), float(((ch - c).abs() / c).max()))
    q = lv.quantize_nf4(W)
    idx = torch.stack([q.codes >> 4, q.codes & 15], dim=1).flatten().long()
    w = lambda ch: rel((lv.nf4_table()[idx].view(-1, 64) * ch[:, None]).flatten()[: W.numel()].view(W.shape), W)
    print(f"  layer {name} ({c.numel()} scales): relative error of the scales (2-norm, max): "
          f"int8 {re(c_int8)[0]:.3g}, {re(c_int8)[1]:.3g} | fp8 e4m3 {re(c_fp8)[0]:.3g}, {re(c_fp8)[1]:.3g} | "
          f"plain fp8 cast {re(c_cast)[0]:.3g}, {re(c_cast)[1]:.3g}")
    print(f"    weight error with these scales: fp32 {w(c):.5g}, int8 {w(c_int8):.5g}, fp8 {w(c_fp8):.5g}, plain fp8 {w(c_cast):.5g}")

# ---------------- Exercise 5: the memory arithmetic for LLaMA-7B, and the largest rank at 65B ----------------
print("\nExercise 5: memory arithmetic (GB = 1e9 bytes; the chapter's conventions)")
BITS_DQ = 4 + 8 / 64 + 32 / (64 * 256)


def llama(L, d, d_ff, vocab=32000):
    """(linear parameters, other parameters, LoRA parameters per unit of rank) of a LLaMA model."""
    shapes = [(d, d)] * 4 + [(d, d_ff)] * 2 + [(d_ff, d)]  # q, k, v, o, gate, up, down as (in, out)
    return L * sum(i * o for i, o in shapes), 2 * vocab * d + (2 * L + 1) * d, L * sum(i + o for i, o in shapes)


def qlora_bytes(linear, other, per_rank, r, adapter_bytes=12):
    return BITS_DQ / 8 * linear + 2 * other + adapter_bytes * r * per_rank


for name, (L, d, d_ff) in {"LLaMA-7B": (32, 4096, 11008), "LLaMA-65B": (80, 8192, 22016)}.items():
    linear, other, per_rank = llama(L, d, d_ff)
    N = linear + other
    print(f"  {name}: {N:,} parameters; r=64 adapter {64 * per_rank:,} ({100 * 64 * per_rank / N:.3g} %); "
          f"full FT 16 B/param {16 * N / 1e9:.4g} GB (12 B: {12 * N / 1e9:.4g} GB); "
          f"QLoRA r=64 {qlora_bytes(linear, other, per_rank, 64) / 1e9:.4g} GB "
          f"(16 B/adapter param: {qlora_bytes(linear, other, per_rank, 64, 16) / 1e9:.4g} GB)")
linear, other, per_rank = llama(80, 8192, 22016)
for adapter_bytes in (12, 16):
    fixed = BITS_DQ / 8 * linear + 2 * other
    r_max = int((48e9 - fixed) // (adapter_bytes * per_rank))
    print(f"  LLaMA-65B, {adapter_bytes} B per adapter parameter: fixed part {fixed / 1e9:.4g} GB, "
          f"{adapter_bytes * per_rank / 1e9:.4g} GB per unit of rank -> largest r under 48 GB: {r_max} "
          f"({qlora_bytes(linear, other, per_rank, r_max, adapter_bytes) / 1e9:.4g} GB; "
          f"r={r_max + 1}: {qlora_bytes(linear, other, per_rank, r_max + 1, adapter_bytes) / 1e9:.4g} GB)")

# ---------------- Exercise 6: QLoRA at r = 64 under the chapter's protocol ----------------
print("\nExercise 6: QLoRA (NF4 base) at r=8 and r=64 vs full FT, the chapter's protocol")
t6 = time.time()
X, y, X_test, y_test = transfer.downstream_task()
X_val, y_val = adaptation.validation_set()
base = transfer.pretrained_mlp(progress=False)
EPOCHS, BODY = 2, ("0", "2")
METHODS = {"QLoRA r=8": 8, "QLoRA r=64": 64, "full FT (fp32)": None}   # the rank; None: every parameter
# the chapter's grids; r = 64 half a decade lower (the larger adapter, the smaller rate: Chapter 3)
GRIDS = {"QLoRA r=8": [3e-3, 1e-2, 3e-2], "QLoRA r=64": [1e-3, 3e-3, 1e-2], "full FT (fp32)": [1e-3, 3e-3, 1e-2]}
TUNE_SEEDS, SEEDS = protocol.seeds(3), protocol.seeds(5)


def build(method, seed):  # the chapter's build(), with the rank as the setting
    model, r = copy.deepcopy(base), METHODS[method]
    if r is None:
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(protocol.derive_seed(seed, "init"))
        lk.inject_adapter(model, lk.LoraConfig(r=r, target_modules=BODY, match="exact", variant="qlora",
                                               variant_options={"double_quant": True}))
    return model


def train(method, lr, seed):
    model = build(method, seed)
    batches = torch.Generator().manual_seed(protocol.derive_seed(seed, "batches"))
    return model, finetune(model, X, y, X_val, y_val, epochs=EPOCHS, lr=lr, optimizer="adam",
                           generator=batches, progress=False)


runs = {(m, lr, s): train(m, lr, s) for m in METHODS for lr in GRIDS[m] for s in TUNE_SEEDS}
choices = {m: protocol.tune({"lr": GRIDS[m]},
                            lambda c, m=m: sum(runs[m, c["lr"], s][1].accuracy for s in TUNE_SEEDS) / 3)
           for m in METHODS}
test = {}
for m, c in choices.items():
    print("  " + c.describe(m, metric="mean val acc"), "| inside the grid:", GRIDS[m][0] < c.best["lr"] < GRIDS[m][-1])
    models = {s: runs[m, c.best["lr"], s][0] for s in TUNE_SEEDS}
    models |= {s: train(m, c.best["lr"], s)[0] for s in SEEDS if s not in TUNE_SEEDS}
    test[m] = {s: accuracy(models[s], X_test, y_test) for s in SEEDS}
notes = {m: f"{c.label()}, {runs[m, c.best['lr'], 0][1].trainable:,} trainable" for m, c in choices.items()}
print(protocol.method_table(test, scale=100, metric="test acc %", notes=notes))
for a, b in (("QLoRA r=64", "QLoRA r=8"), ("QLoRA r=64", "full FT (fp32)"), ("QLoRA r=8", "full FT (fp32)")):
    print("  " + protocol.lesson(a, test[a], b, test[b]))
print(f"  ({time.time() - t6:.0f} s)")

print(f"\ntotal {time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU")
