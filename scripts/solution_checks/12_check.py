"""Checks for the solutions of Chapter 12 (QLoRA). Run from the repository root:
    .venv/bin/python scripts/solution_checks/12_check.py
Only quantisation arithmetic on the pretrained MLP's weights: no training, a few seconds.
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import time

import torch
from torch.nn import functional as F

import lorakit as lk
from lorakit.book import transfer
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

print(f"\ntotal {time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU")
