"""How much faster K replicas in one computation are than K runs one at a time (Chapter 4).

``python -m lorakit.book.replicas_bench`` trains the book's small models both ways and writes a JSON
report to ``bench-results/replicas.json`` (atomically, :func:`lorakit.io.atomic_write`):

* ``fnn`` — Part III's width-16 ReLU FNN, ``L̄ = 2``, ``L = 4``, LoRA rank 8 on every layer and
  tunable biases (the paper's ``sgd`` method: Adam), fresh Gaussian batches of 256 labelled by the target
  (labels computed once per data stream, vmapped over the targets);
* ``tfn`` — Part III's transformer (depth 1, two heads, ``N = 10`` tokens, ``D = 16``), LoRA rank 8, Adam,
  batches of 256 sequences;
* ``mlp`` — the FashionMNIST quickstart MLP (784–512–512–10) with rank-8 LoRA on its three layers,
  AdamW, batches of 64 from an in-memory set of 784-pixel images;
* ``vit`` — the tiny ViT of Part IV with rank-8 LoRA on the attention projections, AdamW, batches of 64.

Both engines of :class:`~lorakit.replicas.ReplicaTrainer` run where they apply: ``bmm`` for the FNN and
the MLP (sequential stacks), ``vmap`` for the TFN and the ViT; ``--design`` times the two on the FNN. Part
III's inputs are drawn ``BLOCK`` steps at a time per data seed (:func:`lorakit.replicas.blocked`; the
stream is the same as one draw per step) and labelled for the whole block at once.

Layouts: ``independent`` — every replica its own seed (its own model draw and batch stream) and its
own learning rate and weight decay; ``grid`` (Part III only) — as in issue 17's grid, the 3 × 4
learning-rate × weight-decay replicas of one seed share that seed's model draw and batches. Both
sides use ``torch.set_num_threads(1)`` (``--threads``) and the same loss, data and model code: the
sequential side is :func:`lorakit.replicas.train_one`'s loop with ``torch.optim``. K sequential runs
cost K times one run (the runs are independent and equal in size), so the sequential time per step
is measured on one run and multiplied by K. The two sides are measured alternately in one process
(``--repeats`` rounds) and the report gives medians: on a shared machine only such interleaved
ratios mean something.

Runs per second are for a run of ``run_steps`` steps (5000 for Part III's models as in the paper,
1000 for the MLP and the ViT); the ratio does not depend on it.

Measured on the book's 2-core Intel Xeon machine (AVX-512 hardware, pinned to AVX2; one thread each
side, medians of 3 interleaved rounds, ``--repeats 3 --design --bound``, load average below 1, 6
December 2026). At K = 128: FNN 14.3× in the grid layout (13.1× before the grouped engine kept its
views and gathered shared batches per chunk) and 7.4–9.0× with independent seeds, whose step is half
data (4–9 ms of fresh normals, stacking and labels per step); TFN 1.18× and 1.59×; ViT 0.87×. At K = 8:
MLP with LoRA on a shared frozen base 1.45× (1.43–1.54× over three runs); full MLP training 0.78×
(0.71× before the optimizer kept its scratch tensors); ViT 0.93×. Earlier, on a 2-core AMD EPYC machine
(1 December 2026): FNN 11.6× and 15.4×, TFN 1.4× and 2.75×, MLP 1.29×. Neither issue-15 target is met.
Why (``--bound``, and the FLOP counts of ``torch.utils.flop_counter``):

* TFN: a step is 57 MFLOP of products plus 35 for the labels. One run takes 11 ms here (6.5 ms on the
  AMD machine), and a large ``mm`` runs at 90–94 GFLOP/s on either. So even at that peak, K replicas
  gain at most ~11× here with independent seeds, ~17× in the grid layout (the labels shared by 12
  replicas), and ~6.5× on the AMD machine: 20× is out of reach on these CPUs. The ``vmap`` engine
  stays far below that ceiling (about 8 GFLOP/s at K = 32). The attention's batched 10 × 10
  products gain only ~10 % stacked: 1.20 ms for 8192 matrices against 1.33 ms as 32 calls of 256
  (a microbenchmark). Where the rest of the step goes was not pinned down: ``torch.profiler``
  inflates these ``vmap`` steps about 4×.
* FNN: the products of a 128-replica step alone take 3.0–3.5 ms (63–65 GFLOP/s) and the independent
  seeds' fresh normals 1.6 ms. The ceiling is 36× in the grid layout and 21× with independent seeds,
  so 20× is not excluded. The engine's grid step (7.3–7.7 ms) spends what the products leave on
  elementwise passes over ``128 × 256 × 16`` activations (bias, ReLU, loss and their gradients), the
  bias copies of ``baddbmm`` and the optimizer. Fusing those would change the arithmetic, and so the
  stored results of Chapters 4–5 (two hours to regenerate); every change here kept them bit for bit.
* MLP: its ``W`` products run barely faster at 512 rows than at 64. The rank-8 LoRA products
  (0.2 ms per run) run no faster stacked than alone. So stacking saves only the rest of the step: at
  most 1.79× with LoRA (measured: 1.45×), 2.4× for full training (0.78×, where the optimizer's passes
  over 8 × 670k parameters leave the cache). The 2× target is above the LoRA MLP's ceiling.

``--design`` (vmap against bmm engine on the FNN, 128 independent replicas, unchunked, data included):
16.3/12.2 ms per step here (19.3/16.1, 17.3/11.0 and 16.6/16.4 in three runs on the AMD machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from ..io import atomic_write
from ..replicas import ReplicaTrainer, blocked, mse_loss, shuffled, train_one

DEFAULT_OUT = Path("bench-results") / "replicas.json"
LRS = (1e-2, 1e-3, 1e-4)  # the expressive-power grid's learning rates and weight decays (issue 17)
WDS = (0.0, 1e-4, 1e-3, 1e-2)


def _class_loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _part3_pair(kind: str, seed: int) -> tuple[nn.Module, nn.Module]:
    from .expressive.methods import trainable_parameters
    from .expressive.models import make_fnn_pair, make_tfn_pair

    if kind == "fnn":
        target, frozen = make_fnn_pair(16, 2, 4, 8, seed=seed)
    else:
        target, frozen = make_tfn_pair(16, 1, 8, seed=seed)
    trainable_parameters(frozen, "sgd")  # LoRA factors (and the FNN's biases), as the paper's 'sgd'
    return target, frozen


def _labelled(kind: str, shape: tuple[int, ...], block: int) -> Callable[[Sequence[int]], Callable]:
    """Fresh Gaussian inputs labelled by the target of each data seed.

    Inputs are drawn ``block`` steps at a time per data seed (:func:`lorakit.replicas.blocked`) and the
    whole block is labelled in one call: the FNN targets by one ``baddbmm`` + ReLU per layer for all
    seeds, the TFN targets by ``vmap`` over ``functional_call``. The sequential side uses the same function.
    """

    def factory(seeds: Sequence[int]) -> Callable:
        targets = [_part3_pair(kind, s)[0] for s in seeds]
        if kind == "fnn":
            Wt = [torch.stack([t.layers[i].weight.detach() for t in targets]).transpose(1, 2)
                  for i in range(len(targets[0].layers))]
            b = [torch.stack([t.layers[i].bias.detach() for t in targets]).unsqueeze(1)
                 for i in range(len(targets[0].layers))]

            def label(X: torch.Tensor) -> torch.Tensor:  # (G, rows, D)
                for W_i, b_i in zip(Wt, b):
                    X = torch.baddbmm(b_i, X, W_i).relu_()
                return X
        else:
            params, buffers = stack_module_state(targets)
            label = vmap(lambda p, b, x: functional_call(targets[0], (p, b), (x,)), in_dims=(0, 0, 0))
            label = (lambda f: lambda X: f(params, buffers, X))(label)

        def then(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            (X,) = tensors  # (G, block, *shape)
            with torch.no_grad():
                return X, label(X.flatten(1, 2)).view_as(X)

        return blocked(lambda g, n: torch.randn((n, *shape), generator=g), block, then=then)

    return factory


def _mlp(seed: int) -> nn.Module:
    from ..inject import inject_lora
    from .lowrank import quickstart_mlp

    torch.manual_seed(0)  # one pretrained-like base for all replicas (shared, not stacked)
    model = quickstart_mlp()
    torch.manual_seed(seed)
    inject_lora(model, ["0", "2", "4"], r=8, alpha=16, match="exact")
    return model


def _mlp_full(seed: int) -> nn.Module:
    from .lowrank import quickstart_mlp

    torch.manual_seed(seed)  # full training: every weight trainable, one draw per seed
    return quickstart_mlp()


def _vit(seed: int) -> nn.Module:
    from ..inject import inject_lora
    from .tinyformer import TinyViT

    torch.manual_seed(0)
    model = TinyViT()
    torch.manual_seed(seed)
    inject_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=8, alpha=16)
    return model


def _images(n_classes: int) -> Callable[[Sequence[int]], Callable]:
    def factory(seeds: Sequence[int]) -> Callable:
        g = torch.Generator().manual_seed(0)
        X = torch.rand(2048, 784, generator=g)
        y = torch.randint(0, n_classes, (2048,), generator=g)
        return shuffled(X, y, batch_size=64)

    return factory


#: name → (model_fn, loss_fn, data factory (data seeds → data function), optimizer, run_steps)
MODELS: dict[str, tuple] = {
    "fnn": (lambda s: _part3_pair("fnn", s)[1], mse_loss, _labelled("fnn", (256, 16), 8), "adam", 5000),
    "tfn": (lambda s: _part3_pair("tfn", s)[1], mse_loss, _labelled("tfn", (256, 10, 16), 2), "adam", 5000),
    "mlp": (_mlp, _class_loss, _images(10), "adamw", 1000),
    "mlp_full": (_mlp_full, _class_loss, _images(10), "adamw", 1000),
    "vit": (_vit, _class_loss, _images(5), "adamw", 1000),
}


#: Replicas per vectorised pass: 128 replicas' activations do not fit the cache
#: (FNN: chunks of 32 measured ~12–25 % faster than 128).
CHUNK = {"fnn": 32, "tfn": 32, "mlp": 32, "mlp_full": 32, "vit": 32}
#: Steps per block of drawn data (Part III): replicated timings cover whole blocks.
BLOCK = {"fnn": 8, "tfn": 2}
#: Full training of the MLP keeps K copies of 670k parameters and their Adam states: K <= 32.
MAX_K = {"mlp_full": 32}


def _layout(K: int, layout: str) -> tuple[list[int], list[float], list[float]]:
    """Seeds, learning rates and weight decays of ``K`` replicas.

    ``"independent"``: every replica its own seed (model draw and batches). ``"grid"``: as issue 17's
    grid, the 3 × 4 learning-rate × weight-decay replicas of one seed share its model draw and batches.
    """
    n = len(LRS) * len(WDS)
    seeds = list(range(K)) if layout == "independent" else [k // n for k in range(K)]
    return seeds, [LRS[k % len(LRS)] for k in range(K)], [WDS[(k // len(LRS)) % len(WDS)] for k in range(K)]


def _time_sequential(name: str, steps: int) -> float:
    """Seconds per step of one run with torch.optim (after one warm-up run; model building excluded)."""
    model_fn, loss_fn, data_fn, optimizer, _ = MODELS[name]
    data = data_fn([1])
    train_one(model_fn, 1, loss_fn, data, 1, lr=1e-3, weight_decay=1e-3, optimizer=optimizer)  # warm-up
    start = time.perf_counter()
    train_one(model_fn, 1, loss_fn, data, steps, lr=1e-3, weight_decay=1e-3, optimizer=optimizer)
    total = time.perf_counter() - start
    build = time.perf_counter()
    model_fn(1)
    return (total - (time.perf_counter() - build)) / steps


def _time_replicas(trainer: ReplicaTrainer, data: Callable, name: str, steps: int) -> float:
    loss_fn = MODELS[name][1]
    block = BLOCK.get(name, 1)
    trainer.fit(loss_fn, data, block - trainer.step_count % block or block, progress=False)  # warm-up, to a block start
    steps = -(-steps // block) * block  # whole blocks of drawn data
    start = time.perf_counter()
    trainer.fit(loss_fn, data, steps, progress=False)
    return (time.perf_counter() - start) / steps


def _trainer(name: str, K: int, layout: str, **kwargs) -> tuple[ReplicaTrainer, Callable]:
    model_fn, _, data_fn, optimizer, _ = MODELS[name]
    seeds, lr, wd = _layout(K, layout)
    trainer = ReplicaTrainer(model_fn, K, seeds=seeds, lr=lr, weight_decay=wd, optimizer=optimizer, **kwargs)
    return trainer, data_fn(trainer.generator_seeds)


def bench_model(
    name: str, Ks: Sequence[int], *, layout: str, repeats: int, seq_steps: int, rep_steps: Callable[[int], int]
) -> list[dict]:
    """One row per ``K``: medians over ``repeats`` alternating rounds of sequential and replicated steps (Chapter 4).

    Example (seconds):
        >>> rows = bench_model("fnn", [8], layout="grid", repeats=1, seq_steps=5,
        ...                    rep_steps=lambda K: 8)  # doctest: +SKIP
        fnn      grid        bmm  K=   8: one run ...
    """
    optimizer, run_steps = MODELS[name][3], MODELS[name][4]
    rows = []
    for K in Ks:
        if K > MAX_K.get(name, K):
            continue
        trainer, data = _trainer(name, K, layout, chunk=CHUNK.get(name))
        seq, rep, draw = [], [], []
        block = BLOCK.get(name, 1)
        for r in range(repeats):
            seq.append(_time_sequential(name, seq_steps))
            rep.append(_time_replicas(trainer, data, name, rep_steps(K)))
            gens = [torch.Generator().manual_seed(s) for s in trainer.generator_seeds]
            start = time.perf_counter()
            for step in range(block * 2):  # the data function alone (drawing, labelling, serving)
                batch = data(step, gens)
                if trainer._data_index.tolist() != list(range(K)):
                    batch = tuple(t.index_select(0, trainer._data_index) for t in batch)
            draw.append((time.perf_counter() - start) / (block * 2))
        ratios = [K * s / r for s, r in zip(seq, rep)]
        t_seq, t_rep = statistics.median(seq), statistics.median(rep)
        row = {
            "model": name, "layout": layout, "K": K, "chunk": trainer.chunk, "optimizer": optimizer,
            "run_steps": run_steps,
            "engine": trainer.engine, "data_block": BLOCK.get(name, 1),
            "sequential_step_ms": 1e3 * t_seq, "replicated_step_ms": 1e3 * t_rep,
            "replicated_data_ms": 1e3 * statistics.median(draw),
            "sequential_runs_per_s": 1 / (t_seq * run_steps), "replicated_runs_per_s": K / (t_rep * run_steps),
            "ratio": statistics.median(ratios), "ratios": ratios,
        }
        rows.append(row)
        print(f"{name:8s} {layout:11s} {trainer.engine:4s} K={K:4d}: one run {1e3 * t_seq:7.3f} ms/step, "
              f"{K} replicas {1e3 * t_rep:8.3f} "
              f"ms/step → {row['ratio']:5.3g}× (runs/s {row['sequential_runs_per_s']:.3g} → "
              f"{row['replicated_runs_per_s']:.3g}); data {row['replicated_data_ms']:.3g} ms/step)", flush=True)
    return rows


def design_comparison(K: int = 128, repeats: int = 5, steps: int = 16) -> dict:
    """Interleaved ms/step of the ``vmap`` and ``bmm`` engines on the FNN benchmark, data included (Chapter 4).

    Example (a minute):
        >>> design_comparison(K=128, repeats=3)["bmm_step_ms"] > 0  # doctest: +SKIP
        design, fnn K=128: vmap engine ...
    """
    engines = {e: _trainer("fnn", K, "independent", engine=e) for e in ("vmap", "bmm")}
    times: dict[str, list[float]] = {e: [] for e in engines}
    for _ in range(repeats):
        for e, (trainer, data) in engines.items():
            times[e].append(_time_replicas(trainer, data, "fnn", steps))
    result = {"K": K, **{f"{e}_step_ms": 1e3 * statistics.median(t) for e, t in times.items()}}
    print(f"design, fnn K={K}: vmap engine {result['vmap_step_ms']:.3f} ms/step, "
          f"bmm engine {result['bmm_step_ms']:.3f} ms/step")
    return result


def _timed(fn: Callable[[], None], n: int = 10) -> float:
    """Seconds per call of ``fn``, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def mlp_bound(K: int = 8, repeats: int = 5) -> dict:
    """The most that stacking ``K`` MLP runs can gain: the products they must do, timed alone (Chapter 4).

    One step of the MLP benchmark (batch 64, 784–512–512–10) needs, per run, these matrix products:

    * ``mlp`` (LoRA on a frozen base every replica shares): the three forward products with ``W`` and
      the two input gradients through it, and the six rank-8 LoRA products per layer (``u = x Aᵀ``,
      ``u Bᵀ``, ``dB = gᵀ u``, ``du = g B``, ``dA = duᵀ x``, ``du A``). Stacking ``K`` runs makes the
      ``W`` products ``K·64`` rows tall (one shared ``W``); the LoRA products stay per replica;
    * ``mlp_full`` (every weight trained): the same five products plus the three weight gradients, all
      with each replica's own ``W``: stacking cannot make them taller, so they are timed at 64 rows.

    Replicas cannot do fewer of these multiply-adds, so the speed-up is at most ``t_seq / t_products``
    (products per replica, stacked as the engine stacks them): every other cost of a step (Python,
    dispatch, the optimizer, the elementwise ops, the loss) is what replicas can save. Interleaved
    rounds, medians.

    Example (seconds):
        >>> mlp_bound(K=8, repeats=1)["mlp"]["max_ratio"] > 0  # doctest: +SKIP
        bound, mlp K=8: one step ...
    """
    sizes = [(784, 512), (512, 512), (512, 10)]
    r, rows = 8, 64

    def base_products(k: int, shared: bool, full: bool) -> Callable[[], None]:
        """The W products of k replicas: one (k·64)-row GEMM on a shared W, or k 64-row ones."""
        n = k * rows if shared else rows
        Ws = [torch.randn(o, i) for i, o in sizes]
        xs, gs = [torch.randn(n, i) for i, _ in sizes], [torch.randn(n, o) for _, o in sizes]

        def run() -> None:
            for _ in range(1 if shared else k):
                for x, W in zip(xs, Ws):
                    torch.mm(x, W.t())  # forward
                for g, W in zip(gs[1:], Ws[1:]):
                    torch.mm(g, W)  # input gradients of layers 2 and 3
                if full:
                    for g, x in zip(gs, xs):
                        torch.mm(g.t(), x)  # weight gradients
        return run

    def lora_products(k: int) -> Callable[[], None]:
        """The six rank-r LoRA products per layer of k replicas, as bmm (the engine's unmerged path)."""
        xs, gs = [torch.randn(k, rows, i) for i, _ in sizes], [torch.randn(k, rows, o) for _, o in sizes]
        As, Bs = [torch.randn(k, r, i) for i, _ in sizes], [torch.randn(k, o, r) for _, o in sizes]

        def run() -> None:
            for x, g, A, B in zip(xs, gs, As, Bs):
                u = torch.bmm(x, A.transpose(1, 2))
                torch.bmm(u, B.transpose(1, 2))
                torch.bmm(g.transpose(1, 2), u)
                du = torch.bmm(g, B)
                torch.bmm(du.transpose(1, 2), x)
                torch.bmm(du, A)
        return run

    out: dict = {"K": K}
    for full, name in ((False, "mlp"), (True, "mlp_full")):
        seq, one, stacked = [], [], []
        for _ in range(repeats):
            seq.append(_time_sequential(name, 20))
            if full:
                one.append(_timed(base_products(1, False, True)))
                stacked.append(_timed(base_products(K, False, True)) / K)
            else:
                one.append(_timed(base_products(1, True, False)) + _timed(lora_products(1)))
                stacked.append((_timed(base_products(K, True, False)) + _timed(lora_products(K))) / K)
        t_seq, t1, tK = (statistics.median(v) for v in (seq, one, stacked))
        out[name] = {
            "sequential_step_ms": 1e3 * t_seq, "products_ms_one_run": 1e3 * t1,
            "products_ms_per_replica_stacked": 1e3 * tK, "max_ratio": t_seq / tK,
        }
        o = out[name]
        print(f"bound, {name} K={K}: one step {o['sequential_step_ms']:.3f} ms; its products alone "
              f"{o['products_ms_one_run']:.3f} ms, {o['products_ms_per_replica_stacked']:.3f} ms per replica "
              f"stacked → speed-up at most {o['max_ratio']:.3g}×", flush=True)
    return out


def fnn_bound(K: int = 128, repeats: int = 5) -> dict:
    """The most that stacking ``K`` FNN runs can gain: their batched products (and draws), timed alone (Chapter 4).

    A step of ``K`` replicas of the FNN benchmark (batch 256, width 16, 4 layers, 2-layer target) needs at
    least its eleven ``(K, 16, 16) × (K, 16, 256)`` products (4 forward, 4 weight gradients, 3 input
    gradients, in the engine's feature-major layout) and the target's two for the labels; with independent
    seeds also ``K × 256 × 16`` fresh normal numbers. ``K`` one-at-a-time runs take ``K·t_seq``; so the
    speed-up is at most ``K·t_seq / t_products`` (grid: labels for the 11 seeds only; independent: for all ``K``,
    plus the draws). Interleaved rounds, medians.

    Example (seconds):
        >>> fnn_bound(K=128, repeats=1)["grid_max_ratio"] > 0  # doctest: +SKIP
        bound, fnn K=128: ...
    """
    D, B = 16, 256
    W, h = torch.randn(K, D, D), torch.randn(K, D, B)
    seeds = len(set(_layout(K, "grid")[0]))
    gens = [torch.Generator().manual_seed(s) for s in range(K)]

    def products(count: int, rows: int = K) -> None:
        for _ in range(count):
            torch.bmm(W[:rows], h[:rows])

    seq, prod, lab_grid, draw = [], [], [], []
    for _ in range(repeats):
        seq.append(_time_sequential("fnn", 200))
        prod.append(_timed(lambda: products(11 + 2)))  # the model's 11 and the labels' 2 (independent)
        lab_grid.append(_timed(lambda: products(11)) + _timed(lambda: products(2, seeds)))
        draw.append(_timed(lambda: [torch.randn(B, D, generator=g) for g in gens]))
    t_seq, t_prod, t_grid, t_draw = (statistics.median(v) for v in (seq, prod, lab_grid, draw))
    flops = 2 * D * D * B * K * 13
    out = {
        "K": K, "sequential_step_ms": 1e3 * t_seq, "products_ms": 1e3 * t_prod, "products_gflops": flops / t_prod / 1e9,
        "grid_products_ms": 1e3 * t_grid, "draws_ms": 1e3 * t_draw,
        "grid_max_ratio": K * t_seq / t_grid, "independent_max_ratio": K * t_seq / (t_prod + t_draw),
    }
    print(f"bound, fnn K={K}: one run {out['sequential_step_ms']:.3f} ms/step; the batched products alone "
          f"{out['products_ms']:.3f} ms ({out['products_gflops']:.3g} GFLOP/s), grid {out['grid_products_ms']:.3f} ms; "
          f"{K} draws {out['draws_ms']:.3f} ms → speed-up at most {out['grid_max_ratio']:.3g}× (grid), "
          f"{out['independent_max_ratio']:.3g}× (independent)", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and write its JSON report; returns the report (Chapter 4).

    Example (a few seconds; ``tests/test_replicas.py`` runs it):
        >>> report = main(["--quick"])  # doctest: +SKIP
        fnn  independent K=   1: one run ...
    """
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.replicas_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fnn,tfn,mlp,mlp_full,vit",
                        help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--K", default="1,8,32,128", help="replica counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per K (medians are reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--design", action="store_true", help="also compare the vmap and bmm engines on the FNN")
    parser.add_argument("--bound", action="store_true",
                        help="also time the MLP's GEMMs and the FNN's products alone (speed-up bounds)")
    parser.add_argument("--quick", action="store_true", help="seconds: fnn only, K in {1, 8}, one round")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON report")
    args = parser.parse_args(argv)
    models = ["fnn"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}: choose from {sorted(MODELS)}")
    Ks = [1, 8] if args.quick else [int(k) for k in args.K.split(",")]
    repeats = 1 if args.quick else args.repeats
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = []
        for name in models:
            big = name in ("mlp", "mlp_full", "vit")
            seq_steps = 5 if args.quick else (20 if big else 200)
            rep_steps = (lambda K: 3) if args.quick else (
                lambda K, big=big: max(8 if big else 16, (40 if big else 400) // K))
            layouts = ["independent", "grid"] if name in ("fnn", "tfn") and not args.quick else ["independent"]
            for layout in layouts:
                rows += bench_model(name, Ks, layout=layout, repeats=repeats, seq_steps=seq_steps, rep_steps=rep_steps)
        report = {
            "rows": rows,
            "design": design_comparison(repeats=args.repeats) if args.design and not args.quick else None,
            "bound": {"mlp": mlp_bound(repeats=args.repeats), "fnn": fnn_bound(repeats=args.repeats)}
            if args.bound and not args.quick else None,
            "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()), "quick": args.quick,
        }
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


if __name__ == "__main__":
    main()
