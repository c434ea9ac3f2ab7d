"""Checks for the solutions of Chapter 1 (01_minimal_lora): every number quoted in 01.md.

Run: .venv/bin/python scripts/solution_checks/01_check.py          (about 50 s, one thread)
"""
import time

import torch
from torch import nn

import lorakit as lk
from lorakit.book import toy

T0 = time.time()
g = lk.seed_everything(0)

# ---------------------------------------------------------------- Exercise 1 (reduced size)
print("== Exercise 1: rank-1 LoRA on a u v^T shift and on a full-rank 0.01*noise shift")
print("   (reduced: n = 1000, d_in = 101, d_out = 100, W = theta^T exactly, 600 full-batch Adam steps, lr 1e-2)")
d_in, d_out, n = 101, 100, 1000
small = toy.make_linear_task(n, d_in, d_out, generator=g)
u, v = torch.randn(d_in, 1, generator=g), torch.randn(d_out, 1, generator=g)
shifts = {"u v^T": u @ v.T, "0.01*noise": 0.01 * torch.randn(d_in, d_out, generator=g)}
for name, shift in shifts.items():
    task2 = toy.shifted_task(small, shift, generator=g)
    test2 = toy.shifted_task(small, shift, generator=g)  # fresh inputs, same theta_2: a test set
    base = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        base.weight.copy_(small.theta.T)
    lora = lk.LoRALinear(base, r=1, alpha=1)
    before = toy.full_data_mse(base, test2)
    toy.fit_full_batch(lora, task2, steps=600, lr=1e-2)
    after = toy.full_data_mse(lora, test2)
    sigma = torch.linalg.svdvals(shift)
    floor = (sigma[1:] ** 2).sum().item() / d_out  # expected MSE of the best rank-1 update (Eckart-Young)
    rel = ((lora.delta_weight().detach() - shift.T).norm() / shift.norm()).item()
    print(f"  {name:>10}: rank {torch.linalg.matrix_rank(shift).item()}, test MSE before {before:.4g}, after {after:.4g}, "
          f"rank-1 floor {floor:.4g}; ||dW - shift^T||_F / ||shift||_F = {rel:.4g}; "
          f"sigma_1^2 / sum sigma^2 = {(sigma[0] ** 2 / (sigma ** 2).sum()).item():.4g}")

# ---------------------------------------------------------------- Exercise 2 (the chapter's setup)
print("== Exercise 2: the chapter's task (d_out = 100, blog's Adam pre-training); Kaiming, 10x Kaiming")
print("   and gaussian A, 10 epochs each, from the chapter's A draw and batch stream")
g = lk.seed_everything(0)
task = toy.make_linear_task(10_000, 1001, 100, generator=g)
model = nn.Linear(1001, 100, bias=False)
pretrain = toy.train_blog_protocol(model, task, generator=g, desc="pre-training", epochs=100)
task2 = toy.shifted_task(task, generator=g)
print(f"  pre-training as in the chapter: epoch 100 MSE {pretrain[-1]:.4g}")
# The chapter draws its from-scratch N(0, 1) A first (lorakit's gaussian run copies it), then a second
# A for lorakit's gaussian layer, then the Kaiming A; every run replays the same batch stream.
states = {"gaussian": torch.get_rng_state()}
torch.randn(1, 1001), torch.randn(1, 1001)
states["kaiming"] = torch.get_rng_state()
g_state = g.get_state()


def run(init_A, scale, epochs=10):
    torch.set_rng_state(states[init_A])
    g.set_state(g_state)
    lora = lk.LoRALinear(model, r=1, alpha=1, init_A=init_A)  # base is frozen, so it can be shared
    with torch.no_grad():
        lora.A.mul_(scale)
    a_std = lora.A.std().item()
    # toy.train_blog_protocol, called through lk.fit to keep the per-epoch training loss too
    h = lk.fit(lora, task2.X, task2.y, loss_fn=nn.functional.mse_loss,
               optimizer=torch.optim.Adam([lora.A, lora.B], lr=1e-3), epochs=epochs, batch_size=128,
               sampling="random_subsets", generator=g, evaluate=lambda m: {"mse": toy.full_data_mse(m, task2)},
               eval_every=10, progress=False)
    return a_std, h


kaiming_std = 1 / (3 * 1001) ** 0.5
print(f"  Kaiming A: entries U(+-1/sqrt(1001)), std 1/sqrt(3*1001) = {kaiming_std:.4g}")
for label, init_A, scale in [("Kaiming", "kaiming", 1.0), ("gaussian", "gaussian", 1.0), ("10 x Kaiming", "kaiming", 10.0)]:
    a_std, h = run(init_A, scale)
    print(f"  {label:>12}: std(A) = {a_std:.4g} ({a_std / kaiming_std:.3g} x Kaiming); full-data MSE after epoch 10: "
          f"{h.metric('mse')[0]:.4g}")
    print(f"  {'':>12}  mean training loss of epochs 1..10: " + " ".join(f"{x:.4g}" for x in h.train_loss))
print(f"  blog (N(0,1) A): epoch 10: {toy.BLOG_LORA_MSE[0]:.4g}")

# ---------------------------------------------------------------- Exercise 3
print("== Exercise 3: hand gradients vs autograd on a 3x2 weight (d_out = 3, d_in = 2), r = 1, n = 4, float64")
torch.manual_seed(0)
base = nn.Linear(2, 3, bias=False, dtype=torch.float64)
layer = lk.LoRALinear(base, r=1, alpha=2)  # s = alpha / r = 2
with torch.no_grad():
    layer.B.normal_()  # B != 0, otherwise grad_A is trivially zero
X, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
loss = nn.functional.mse_loss(layer(X), y)
loss.backward()
s, A, B = layer.scaling, layer.A.detach(), layer.B.detach()
G = 2 * (layer(X).detach() - y) / y.numel()
H = X @ A.T
grad_B, grad_A = s * G.T @ H, s * (G @ B).T @ X
print(f"  max |grad_B - autograd| = {(grad_B - layer.B.grad).abs().max().item():.3g}, "
      f"max |grad_A - autograd| = {(grad_A - layer.A.grad).abs().max().item():.3g}")
fresh = lk.LoRALinear(nn.Linear(2, 3, bias=False, dtype=torch.float64), r=1)
nn.functional.mse_loss(fresh(X), y).backward()
print(f"  at init (B = 0): grad_A all zero: {bool((fresh.A.grad == 0).all())}, grad_B nonzero: {bool(fresh.B.grad.abs().sum() > 0)}")

# ---------------------------------------------------------------- Exercise 4
print("== Exercise 4: merging twice")
layer = lk.LoRALinear(nn.Linear(4, 3), r=2, alpha=2)
with torch.no_grad():
    layer.B.normal_()
layer.merge()
w_once = layer.base.weight.clone()
try:
    layer.merge()
except ValueError as err:
    print(f"  ValueError: {err}")
print(f"  weight unchanged by the refused call: {torch.equal(layer.base.weight, w_once)}")
x = torch.randn(5, 4)
with torch.no_grad():
    double = x @ (w_once + layer.delta_weight()).T + layer.base.bias  # what a silent second add would compute
    print(f"  a silent second merge would change the outputs by up to {(double - layer(x)).abs().max().item():.3g}")

# ---------------------------------------------------------------- Exercise 5 (reduced)
print("== Exercise 5: the blog's pre-training protocol with 50 of the 1000 output columns, 30 epochs, two seeds")
print("   (the loss is a sum over output columns that train independently, so the per-column MSE curve is the same)")
for seed in (0, 1):
    g = lk.seed_everything(seed)
    task = toy.make_linear_task(10_000, 1001, 50, generator=g)
    model = nn.Linear(1001, 50, bias=False)
    start = toy.full_data_mse(model, task)
    mse = toy.train_blog_protocol(model, task, generator=g, desc="pre-training", epochs=30)
    print(f"  seed {seed}: MSE at init {start:.4g}; epochs 10, 20, 30: " + ", ".join(f"{m:.4g}" for m in mse))
print(f"  blog (R torch, all 1000 columns): epochs 10, 20, 30: " + ", ".join(f"{m:.4g}" for m in toy.BLOG_PRETRAIN_MSE[:3]))
print(f"(checks took {time.time() - T0:.0f} s)")
