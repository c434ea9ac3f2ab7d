"""Checks for the solutions of Chapter 14 (speed). Run from the repository root:
    .venv/bin/python scripts/solution_checks/14_check.py
FLOP counts come from torch's FlopCounterMode (exact, machine-independent). The only timing is one short
bench.bench_one call per size (a few seconds, one thread): indicative only, it varies with the machine and its load.
Exercise 6 reads the stored run of `make bench` (lorakit/book/results/ch14_bench_e2e.json); nothing is re-timed.
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lorakit as lk
from lorakit.book import bench

T0 = time.time()
g = lk.seed_everything(0)


def step_flops(module: nn.Module, T: int, d_in: int, input_grad: bool) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward + backward of `module` on T tokens."""
    x = torch.randn(T, d_in, requires_grad=input_grad)
    with FlopCounterMode(display=False) as counter:
        module(x).sum().backward()
    return counter.get_total_flops()


def ratios(d_in: int, d_out: int, r: int, T: int = 64) -> tuple[float, float]:
    """(LoRA step / full step) measured in FLOPs, for an inner layer and for a first layer."""
    out = []
    for input_grad in (True, False):
        full = nn.Linear(d_in, d_out)
        lora = lk.LoRALinear(nn.Linear(d_in, d_out), r=r)
        out.append(step_flops(lora, T, d_in, input_grad) / step_flops(full, T, d_in, input_grad))
    return out[0], out[1]


# ---------------- Exercise 2 and 3: the product count, checked with FlopCounterMode ----------------
print("Exercises 2 and 3: LoRA step / full step in FLOPs (FlopCounterMode) vs the formulas")
# T = 2 tokens keeps LoRALinear on its plain autograd path (it fuses only when tokens x out >= 2**15). The fused
# path does the same products, but accumulates two of them with in-place addmm_, which FlopCounterMode does not
# count (its registry has aten.mm and aten.addmm only): the T = 16 column shows the undercount where it fuses.
print("  d_in d_out   r | inner: counted  2/3 + r(1/din + 1/dout) | first layer: counted  1/2 + r(2din + 3dout)/(2 din dout)"
      " | inner counted at T=16")
for d_in, d_out, r in ((256, 256, 8), (1024, 1024, 8), (784, 512, 8), (512, 2048, 16), (2048, 512, 16), (4096, 11008, 64)):
    inner, first = ratios(d_in, d_out, r, T=2)
    inner16, _ = ratios(d_in, d_out, r, T=16)
    f_inner = 2 / 3 + r * (1 / d_in + 1 / d_out)
    f_first = 1 / 2 + r * (2 * d_in + 3 * d_out) / (2 * d_in * d_out)
    fused = 16 * d_out >= lk.layer.FUSE_MIN_OUTPUT_ELEMENTS
    print(f"  {d_in:4d} {d_out:5d} {r:3d} |        {inner:.6f}  {f_inner:.6f}              |             {first:.6f}  {f_first:.6f}"
          f"   |  {inner16:.6f}{' (fused)' if fused else ''}")
print("  FlopCounterMode counts:", sorted(str(k) for k in FlopCounterMode().flop_registry if "mm" in str(k)))
print(f"  square first layer, r = d/10: 1/2 + 5r/(2d) = {1 / 2 + 5 / 20:.4g}; break-even (ratio 1) at r = d/5")
print(f"  [{time.time() - T0:.1f} s]")

# ---------------- Exercise 1: a short, indicative timing ----------------
print("\nExercise 1 (indicative: 3 repeats, one thread, shared machine)")
for d in (256, 1024):
    res = bench.bench_one(d, 512, 8, repeats=3, warmup=1)
    print(f"  d={d}, tokens=512, r=8: lorakit/full {res.ratio('lorakit_step'):.3f}, ideal {res.ideal:.3f}, "
          f"gap {res.ratio('lorakit_step') - res.ideal:+.3f}")
print(f"  [{time.time() - T0:.1f} s]")

# ---------------- Exercise 5: mixed precision memory table ----------------
print("\nExercise 5: MiniLM, LoRA on W_q, W_v at r = 8; MiB, activations not counted")
N, n = 22_713_216, 73_728
mib = 1 / 2**20
for label, w_bytes, master in (("float32 (the chapter)", 4, 0), ("bf16 weights+grads, fp32 Adam", 2, 0),
                               ("... plus fp32 master copy of trained weights", 2, 4)):
    rows = {"full fine-tuning": (N * w_bytes, N * w_bytes, 8 * N, N * master, N * w_bytes),
            "LoRA q,v r=8": ((N + n) * w_bytes, n * w_bytes, 8 * n, n * master, n * w_bytes)}
    print(f"  {label}")
    print("    run                weights  grads   Adam  master  total | checkpoint")
    tot = {}
    for run, (w, gr, adam, mas, ck) in rows.items():
        tot[run] = (w + gr + adam + mas, ck)
        print(f"    {run:16s} {w * mib:8.4g} {gr * mib:6.4g} {adam * mib:6.4g} {mas * mib:6.4g} {(w + gr + adam + mas) * mib:6.4g}"
              f" | {ck * mib:.4g}")
    print(f"    training-memory ratio {tot['full fine-tuning'][0] / tot['LoRA q,v r=8'][0]:.3g}x, "
          f"checkpoint ratio {tot['full fine-tuning'][1] / tot['LoRA q,v r=8'][1]:.4g}x")
print("  bounds (bytes per trained parameter / bytes per frozen one): float32 16/4 = "
      f"{16 / 4:.3g}x, bf16 + fp32 Adam 12/2 = {12 / 2:.3g}x, + fp32 master 16/2 = {16 / 2:.3g}x")

# ---------------- Exercise 6: the model-level prediction from the stored shares ----------------
import json

from lorakit.book import bench_e2e

print("\nExercise 6: predict lorakit/full from full fine-tuning's shares (stored run of make bench)")
report = json.loads(bench_e2e.RESULT_PATH.read_text())
env, sh, tm = report["environment"], report["shares"], report["timings"]
print(f"  stored run: {env['date']}, {env['cpu']}, batch {report['setup']['batch']} x {report['setup']['seq_len']}")
full = sh["full"]
pred = 1 - full["optimizer"] - full["big GEMMs"] / 3
meas = tm["lorakit"]["median"] / tm["full"]["median"]
print("  full fine-tuning shares: " + ", ".join(f"{k} {v:.3g}" for k, v in full.items()))
print("  lorakit shares:          " + ", ".join(f"{k} {v:.3g}" for k, v in sh["lorakit"].items()))
print(f"  prediction 1 - optimizer - big GEMMs / 3 = {pred:.3g}; measured lorakit/full = {meas:.3g}")
full_ms = tm["full"]["median"] * 1e3
lk_ms = tm["lorakit"]["median"] * 1e3
print(f"  full step {full_ms:.4g} ms; 'other' in full {full['other'] * full_ms:.4g} ms, "
      f"in lorakit {sh['lorakit']['other'] * lk_ms:.4g} ms; lorakit's optimizer {sh['lorakit']['optimizer'] * lk_ms:.3g} ms, "
      f"LoRA GEMMs {sh['lorakit']['LoRA GEMMs'] * lk_ms:.3g} ms")
print(f"  big GEMMs: full {full['big GEMMs'] * full_ms:.4g} ms, lorakit {sh['lorakit']['big GEMMs'] * lk_ms:.4g} ms "
      f"(ratio {sh['lorakit']['big GEMMs'] * lk_ms / (full['big GEMMs'] * full_ms):.3g}; 2/3 expected)")
print(f"\ntotal {time.time() - T0:.1f} s wall, {time.process_time():.1f} s CPU")
