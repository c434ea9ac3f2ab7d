"""Checks for the solutions of Chapter 5 (05_expressive_fnn): every number quoted in 05.md.

Run: .venv/bin/python scripts/solution_checks/05_check.py            (about 45 s, one thread)
"""
import time

import torch

import lorakit as lk
from lorakit.book import expressive as ex

T0 = time.time()
quiet = dict(progress=False, log=lambda *a: None)

# ---------------------------------------------------------------- Exercise 1
print("== Exercise 1: calibration margin 2 (default) vs 10; D=16, (Lbar, L) = (2, 4), R = 8")
scales = [1, 2, 3, 5, 10, 20]
for margin in (2.0, 10.0):
    g = lk.seed_everything(0)  # the chapter's calibration batch and test inputs
    target, frozen = ex.make_fnn_pair(16, 2, 4, rank=8, seed=123)
    target, frozen = target.double(), frozen.double()
    calib = torch.randn(256, 16, generator=g, dtype=torch.float64)
    ex.adapt_ours_fnn(frozen, target, 8, calib, margin=margin)
    X = torch.randn(5000, 16, generator=g, dtype=torch.float64)
    biases = [lin.bias.abs().max().item() for lin in frozen.base_linears()]
    line = "  ".join(f"x{s}: {ex.format_mse(ex.mse(frozen, target, s * X))}" for s in scales)
    print(f"  margin {margin:g}: largest |bias| per layer " + ", ".join(f"{b:.4g}" for b in biases))
    print(f"    float64 test MSE, inputs scaled: {line}")
    mse32 = ex.mse(frozen.float(), target.float(), X.float())
    print(f"    the same adapted model evaluated in float32, inputs x1: MSE {mse32:.3g}")

# ---------------------------------------------------------------- Exercise 2
print("== Exercise 2: (Lbar, L) = (2, 5)")
print(f"  block sizes {ex.block_sizes(2, 5)}; rank_threshold(16, 2, 5) = {ex.rank_threshold(16, 2, 5)}; "
      f"per block ceil(16/2) = 8, ceil(16/3) = 6")
base25 = dict(width=16, target_depth=2, frozen_depth=5, n_test=2000)
for R in (5, 6, 7, 8):
    res = ex.run_experiment(ex.Config(**base25, rank=R, method="ours"), **quiet)
    tails = [ex.tail_errors(torch.tensor(S), R * m)[1] for S, m in zip(res.singular_values, ex.block_sizes(2, 5))]
    print(f"  R={R}: test MSE {ex.format_mse(res.test_loss)}; sum of the uncorrected sigma_i^2 per block: "
          + ", ".join(ex.format_mse(t) for t in tails))

# ---------------------------------------------------------------- Exercise 3
print("== Exercise 3: 'sgd' with 2000 steps and weight decay 1e-3 (lr 1e-2, seed 123; chapter: 300 steps, wd 0)")
base = dict(width=16, target_depth=2, frozen_depth=4, n_test=2000)
sgd_ranks = [8, 16]
ours = {R: ex.run_experiment(ex.Config(**base, rank=R, method="ours"), **quiet).test_loss for R in sgd_ranks}
for wd, rs in [(1e-3, sgd_ranks), (0.0, [16])]:  # the wd = 0 control at R = 16 only, to stay within a minute
    sgd = [ex.run_experiment(ex.Config(**base, rank=R, method="sgd", n_epochs=2000, lr=1e-2, weight_decay=wd),
                             **quiet).test_loss for R in rs]
    print(f"  sgd 2000 steps, wd {wd:g}: " + "  ".join(f"R={R}: {ex.format_mse(m)}" for R, m in zip(rs, sgd)))
print("  chapter, sgd 300 steps, wd 0: R=8: 0.006777  R=16: 0.004773")
print("  ours (construction):        " + "  ".join(f"R={R}: {ex.format_mse(m)}" for R, m in ours.items()))

# ---------------------------------------------------------------- Exercise 4
print("== Exercise 4: LoRA vs final-layer tuning with a pretrained frozen model (Lbar=1, L=8, 300 steps, lr 1e-3)")
# run_experiment(Config(..., pretrained=1)) step by step, pretraining only once: with B = 0 the LoRA branch adds
# exactly zero, so the pretrained base weights do not depend on the rank (same draws, same batches, seed 123).
cfg = ex.Config(width=16, target_depth=1, frozen_depth=8, rank=1, n_test=2000, n_epochs=300, lr=1e-3,
                weight_decay=0.0, pretrained=1)
torch.manual_seed(cfg.seed)
target8, frozen8 = ex.make_fnn_pair(16, 1, 8, 1, seed=cfg.seed)
Xe = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))


def hidden_std(model):
    with torch.no_grad():
        h = Xe
        for layer in model.layers[:5]:
            h = torch.relu(layer(h))
    return h.std(0).mean().item()


before = hidden_std(frozen8)
stop = ex.pretrain(frozen8, target8, width=16, epochs=cfg.pretrained_epochs, lr=cfg.pretrained_lr,
                   level=cfg.pretrained_level, batch_size=cfg.batch_size,
                   generator=torch.Generator().manual_seed(cfg.seed + 1), progress=False)
pretrained = {k: v.clone() for k, v in frozen8.state_dict().items() if ".A" not in k and ".B" not in k}
X_test = ex.sample_inputs(frozen8, cfg.n_test, 16, torch.Generator().manual_seed(cfg.seed + 4))
print(f"  pretraining stopped at step {stop} (cap {cfg.pretrained_epochs}); frozen MSE before adapting "
      f"{ex.mse(frozen8, target8, X_test):.4g}; std over inputs of the hidden state entering layer 6: "
      f"{before:.3g} before pretraining, {hidden_std(frozen8):.3g} after")


def adapted_mse(method, k):
    torch.manual_seed(cfg.seed)
    t, f = ex.make_fnn_pair(16, 1, 8, k if method == "sgd" else 1, seed=cfg.seed)
    f.load_state_dict(pretrained, strict=False)
    params = ex.trainable_parameters(f, method, tune_bias=False, last_layers=k)
    ex.train_adapter(f, t, params, width=16, n_epochs=cfg.n_epochs, lr=cfg.lr, weight_decay=0.0,
                     batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed + 2), progress=False)
    return ex.mse(f, t, X_test)


for k in (1, 2, 3):
    print(f"  budget {256 * k}: LoRA R={k} MSE {adapted_mse('sgd', k):.4g} | last {k} layers MSE {adapted_mse('flt', k):.4g}")
print("  chapter, random frozen model: LoRA 0.1397 0.133 0.1197 | final layers 0.1567 0.1567 0.1567; target variance 0.1194")
print(f"(checks took {time.time() - T0:.0f} s)")
