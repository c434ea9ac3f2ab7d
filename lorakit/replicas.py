"""Many training runs as one computation: K replicas of one model, trained side by side (Chapter 4).

A study that compares methods needs several seeds and a learning-rate grid per method, and the
smallest models of the book (Part III's width-16 nets) are too small to keep a CPU busy one run at a
time: most of their step is Python and dispatch overhead. :class:`ReplicaTrainer` stacks the
trainable parameters of ``K`` independent replicas along a leading replica dimension and runs one
vectorised step for all of them (:func:`torch.func.vmap` over :func:`torch.func.functional_call`,
one autograd backward, one vectorised optimizer update). Each replica has its own seed
(initialisation and batch order), its own learning rate and weight decay; the result is the same as
``K`` separate runs with ``torch.optim`` (to float32 rounding per step, see ``tests/test_replicas.py``;
over thousands of steps of a chaotic training those differences can grow to a few percent).

How it is computed:

* trainable parameters (``requires_grad=True`` after ``model_fn``) of all replicas live in one
  ``(K, P)`` float tensor; the optimizer (:class:`ReplicaOptimizer`) updates it with ``(K, 1)``
  learning rates and weight decays — the update rules of ``torch.optim.SGD``, ``Adam`` and ``AdamW``;
* frozen tensors (parameters with ``requires_grad=False`` and buffers) are *shared* when they are
  equal in every replica (e.g. a pretrained base weight) and stacked otherwise; buffers are not
  updated (no BatchNorm running statistics);
* every :class:`~lorakit.LoRALinear` is computed by a functional twin with the same parameter names:
  ``F.linear(x, W + s·B A, b)`` ("merged", one GEMM, cheaper when ``r`` is comparable to the layer
  size, as in Part III's width-16 nets) or ``W x + s·B(A x)`` ("plain", cheaper for wide layers).
  ``merge_lora="auto"`` picks per layer by a FLOP count.

Two engines compute a step (``engine=``):

* ``"bmm"`` (the default where it applies): for a sequential stack of ``nn.Linear`` /
  :class:`~lorakit.LoRALinear` layers and ReLU/Tanh/Identity — an ``nn.Sequential``, or a model with a
  ``replica_sequence()`` method such as Part III's FNN — a grouped-``bmm`` forward and a hand-written
  backward: one ``bmm`` per layer for per-replica weights (merged ``W + s·B A``, trainable or stacked),
  one ``(K·B × in)`` GEMM for a frozen weight that all replicas share (LoRA fine-tuning on one base),
  in-place activations, no gradient for the input or frozen tensors, no autograd graph and no ``vmap``
  except for the user's loss on the ``(K, B, out)`` output — and not even that for :data:`mse_loss`,
  whose one-pass form gives every loss and its gradient in two elementwise passes and one ``bmm``;
* ``"vmap"``: :func:`torch.func.vmap` over :func:`torch.func.functional_call` and one autograd
  backward, for any ``nn.Module`` (the TFN, the ViT).

Measured on Part III's width-16, 4-layer ReLU FNN with rank-8 LoRA, 128 replicas with independent seeds,
one thread, interleaved in one process on the book's 2-core machine (``python -m
lorakit.book.replicas_bench --design``; its docstring has the full table): a step of the ``bmm`` engine
took 11.0–16.4 ms against 16.6–19.3 ms for ``vmap`` with the data drawn (1.0–1.6× over three runs).
At 128 replicas the step (9–14 ms) is 3–4× what its batched products take alone (~3 ms): the rest is
elementwise memory traffic over ``128 × 256 × 16`` activations and, with independent seeds, drawing
``K × 256 × 16`` fresh Gaussian numbers a step (2–5 ms: ``torch.randn``'s CPU generator),
which one run pays only for itself. :func:`blocked` removes the per-generator call overhead but not the
numbers; replicas that share a data seed (issue 17's grid: the learning-rate × weight-decay replicas of
one seed) draw it once.

Different ranks: replicas must share shapes; give the model the largest rank and pass ``masks``
(see :func:`lora_rank_masks`) so that the extra rows of ``A`` and columns of ``B`` stay zero — with
``alpha = r`` (scaling 1, as in Part III) such a replica is exactly a lower-rank model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from .layer import LoRALinear
from .optim import adam_moments

__all__ = [
    "ReplicaTrainer",
    "ReplicaOptimizer",
    "ReplicaHistory",
    "stacked",
    "shuffled",
    "blocked",
    "lora_rank_masks",
    "mse_loss",
    "train_one",
]

OptimizerName = Literal["sgd", "adam", "adamw"]
MergeMode = Literal["auto", True, False]
EngineName = Literal["auto", "bmm", "vmap"]
#: ``data(step, generators)`` → a tuple of tensors whose first dimension is ``len(generators)``.
DataFn = Callable[[int, Sequence[torch.Generator]], Sequence[torch.Tensor]]
#: ``loss_fn(model, batch)`` → a scalar tensor; ``model(*inputs)`` runs one replica.
LossFn = Callable[..., torch.Tensor]


def _per_replica(name: str, value: float | Sequence[float], K: int, *, positive: bool) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    values = [float(value)] * K if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != K:
        raise ValueError(f"{name} has {len(values)} values for K={K} replicas: pass one number or exactly K")
    for v in values:
        if not math.isfinite(v) or (v <= 0 if positive else v < 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{name}={v!r} is invalid: every value must be finite and {bound}")
    return torch.tensor(values, dtype=torch.float64)


def _check_K(K: int) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K={K!r} must be an int >= 1 (the number of replicas)")


class ReplicaOptimizer:
    """SGD, Adam or AdamW over stacked parameters, with one learning rate and weight decay per replica (Chapter 4).

    The update rules are those of ``torch.optim`` (single-tensor code path, default options):

    * ``"sgd"``: ``g += wd·p``; with momentum ``μ``, ``buf = g`` at the first step, then
      ``buf = μ·buf + g``, ``g = buf``; ``p -= lr·g``;
    * ``"adam"``: ``g += wd·p`` (L2, coupled), ``m = lerp(m, g, 1−β₁)``, ``v = β₂ v + (1−β₂) g²``,
      ``p -= lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)``;
    * ``"adamw"``: ``p *= 1 − lr·wd`` (decoupled), then Adam's step without the L2 term.

    Args:
        params: ``(K, P)`` tensor updated in place (one row per replica).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: ``K`` learning rates ``> 0``, shape ``(K,)``.
        weight_decay: ``K`` weight decays ``>= 0``, shape ``(K,)``.
        momentum: SGD's momentum (no dampening, no Nesterov).
        betas, eps: Adam's and AdamW's constants.

    Example:
        >>> p = torch.ones(2, 3)
        >>> opt = ReplicaOptimizer(p, "sgd", lr=torch.tensor([0.1, 0.5]), weight_decay=torch.zeros(2))
        >>> opt.step(torch.ones(2, 3)); [round(v, 6) for v in p[:, 0].tolist()]
        [0.9, 0.5]
    """

    def __init__(
        self,
        params: torch.Tensor,
        optimizer: OptimizerName,
        *,
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={optimizer!r} is unknown: use 'sgd', 'adam' or 'adamw'")
        if params.dim() != 2 or lr.shape != (params.shape[0],) or weight_decay.shape != (params.shape[0],):
            raise ValueError("params must be (K, P) and lr, weight_decay (K,)")
        if not 0.0 <= momentum < 1.0 or not all(0.0 <= b < 1.0 for b in betas) or eps <= 0:
            raise ValueError(f"need 0 <= momentum < 1, 0 <= betas < 1 and eps > 0; got {momentum}, {betas}, {eps}")
        self.params, self.optimizer = params, optimizer
        self.momentum, self.betas, self.eps = float(momentum), (float(betas[0]), float(betas[1])), float(eps)
        dtype = params.dtype
        self.lr = lr.to(dtype).unsqueeze(1)  # (K, 1): broadcast over each replica's row
        self.weight_decay = weight_decay.to(dtype).unsqueeze(1)
        self.decay = bool((weight_decay != 0).any())
        self.decoupled = (1 - lr * weight_decay).to(dtype).unsqueeze(1)  # AdamW: p *= 1 - lr·wd, rounded like torch
        self.buf: torch.Tensor | None = None
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        # Adam's moments, advanced by lorakit.optim.adam_moments (the library's one Adam update)
        self.moments: dict[str, Any] = {"step": 0}

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One update of every replica from its gradient ``grad`` (shape ``(K, P)``)."""
        p = self.params
        if self.optimizer == "sgd":
            if self.decay:
                grad = grad + self.weight_decay * p
            if self.momentum:
                if self.buf is None:
                    self.buf = grad.clone()
                else:
                    self.buf.mul_(self.momentum).add_(grad)
                grad = self.buf
            p.sub_(self.lr * grad)
            return
        # Scratch tensors kept across steps: a fresh (K, P) temporary per operation costs page faults
        # that dominated full training of K MLPs (45 of 55 ms per step at K = 8, P = 670k); same numbers.
        if self._scratch is None or self._scratch[0].shape != p.shape:
            self._scratch = (torch.empty_like(p), torch.empty_like(p))
        update, decay = self._scratch
        if self.optimizer == "adamw":
            if self.decay:
                p.mul_(self.decoupled)
        elif self.decay:
            grad = torch.mul(p, self.weight_decay, out=decay).add_(grad)  # g + wd·p
        exp_avg, denom, bias1 = adam_moments(self.moments, grad, self.betas, self.eps, out=update)
        step_size = (self.lr.double() / bias1).to(p.dtype)  # lr / bias_correction1, as torch
        p.sub_(torch.div(exp_avg, denom, out=update).mul_(step_size))


class _ReplicaLoRA(nn.Module):
    """A :class:`~lorakit.LoRALinear` computed without its fused autograd path, same parameter names."""

    def __init__(self, lora: LoRALinear, merge: bool) -> None:
        super().__init__()
        self.base, self.A, self.B, self.dropout = lora.base, lora.A, lora.B, lora.dropout
        self.scaling = lora.scaling
        self.merge = merge and isinstance(lora.dropout, nn.Identity) and type(lora.base) is nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge:
            return F.linear(x, self.base.weight + self.scaling * (self.B @ self.A), self.base.bias)
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.A) * self.scaling, self.B)


def _merge_pays(lora: LoRALinear) -> bool:
    # Per input row, merged costs ~3·in·out multiply-adds (forward, input and weight gradients); plain
    # costs ~2·in·out + 3·r·(in+out) (the frozen W needs no weight gradient).
    i, o = lora.in_features, lora.out_features
    return i * o < 3 * lora.r * (i + o)


def _functional_twin(model: nn.Module, merge: MergeMode) -> nn.Module:
    twin = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, LoRALinear):
                if child.merged:
                    raise ValueError("a LoRA layer is merged: call unmerge_lora(model) before training replicas")
                setattr(parent, name, _ReplicaLoRA(child, _merge_pays(child) if merge == "auto" else bool(merge)))
            else:
                swap(child)

    if isinstance(twin, LoRALinear):
        return _ReplicaLoRA(twin, _merge_pays(twin) if merge == "auto" else bool(merge))
    swap(twin)
    return twin


# ---------------------------------------------------------------------- the grouped-bmm path
@dataclass
class _Dense:
    """One layer of a :class:`_GroupedStack`, by parameter name (LoRA factors ``A``, ``B`` if any)."""

    W: str
    b: str | None
    A: str | None = None
    B: str | None = None
    scaling: float = 1.0
    merge: bool = False


_ACTIVATION_NAMES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "identity"}


def _activation_backward(act: str, out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` through the activation whose output was ``out``; ReLU's in place (``g`` is the step's own buffer)."""
    if act == "relu":
        return torch.ops.aten.threshold_backward.grad_input(g, out, 0, grad_input=g)
    return g * (1 - out * out) if act == "tanh" else g


def _flatten(module: nn.Module) -> list[nn.Module]:
    """The layers a stack applies in order: nested ``nn.Sequential`` and ``replica_sequence()`` expanded."""
    if hasattr(module, "replica_sequence"):
        children = list(module.replica_sequence())
    elif isinstance(module, nn.Sequential):
        children = list(module)
    else:
        return [module]
    return [leaf for child in children for leaf in (_flatten(child) if child is not module else [child])]


class _GroupedStack:
    """Linear/LoRALinear layers and elementwise activations of K replicas, with a hand-written backward.

    Per-replica weights (trainable, stacked frozen, or merged ``W + s·B A``) are one ``bmm`` per layer;
    a frozen weight that every replica shares is one ``(k·B × in)`` GEMM. There is no autograd graph and
    no ``vmap`` in the forward and backward: the activations are saved, the ReLU/tanh are applied in
    place, no gradient is computed for the input or for frozen tensors. Only the loss (the user's
    ``loss_fn``) goes through autograd, on the ``(k, B, out)`` output.
    """

    #: Widths up to which activations are kept feature-major, ``(k, features, B)``: for Part III's
    #: width-16 layers ``bmm(W, h)`` with ``B = 256`` columns ran at 34 GFLOP/s against 24 for ``bmm(h, Wᵀ)``
    #: (one thread, 128 replicas, this machine).
    COLUMNS_MAX_WIDTH = 64

    def __init__(self, ops: list[_Dense | str], widths: Sequence[int]) -> None:
        self.ops = ops
        self.first = next(i for i, op in enumerate(ops) if isinstance(op, _Dense))
        # Feature-major needs a per-replica (or broadcast) weight in every layer: no unmerged LoRA.
        self.columns = max(widths) <= self.COLUMNS_MAX_WIDTH and not any(
            isinstance(op, _Dense) and op.A is not None and not op.merge for op in ops)

    @staticmethod
    def build(template: nn.Module, trainable: Sequence[str], merge: MergeMode) -> "_GroupedStack | None":
        """The stack for ``template``, or None if it is not one (an ``nn.Sequential`` of such layers, or a
        model whose ``replica_sequence()`` lists them in the order its ``forward`` applies them)."""
        if not hasattr(template, "replica_sequence") and not isinstance(template, nn.Sequential):
            return None
        prefix = {id(m): n for n, m in template.named_modules()}
        train, used = set(trainable), set()
        ops: list[_Dense | str] = []
        widths: list[int] = []
        for m in _flatten(template):
            if type(m) in _ACTIVATION_NAMES:
                ops.append(_ACTIVATION_NAMES[type(m)])
                continue
            if id(m) not in prefix:
                return None
            p = prefix[id(m)] + "." if prefix[id(m)] else ""
            if hasattr(m, "replica_dense"):  # a factored layer: successive products, no activation between
                params = dict(m.named_parameters())
                factors = list(m.replica_dense())
                for w, b in factors:
                    if w not in params or (b is not None and b not in params):
                        return None
                    ops.append(_Dense(p + w, None if b is None else p + b))
                    used.update(n for n in (p + w, None if b is None else p + b) if n in train)
                    widths += [params[w].shape[1], params[w].shape[0]]
                continue
            if type(m) is nn.Linear:
                op = _Dense(p + "weight", None if m.bias is None else p + "bias")
            elif (type(m) is LoRALinear and type(m.base) is nn.Linear and isinstance(m.dropout, nn.Identity)
                  and not m.merged and {p + "A", p + "B"} <= train and p + "base.weight" not in train):
                mg = _merge_pays(m) if merge == "auto" else bool(merge)
                op = _Dense(p + "base.weight", None if m.base.bias is None else p + "base.bias",
                            p + "A", p + "B", m.scaling, mg)
            else:
                return None  # another module type (or a LoRA layer with dropout, frozen factors, …): use vmap
            used.update(n for n in (op.W, op.b, op.A, op.B) if n in train)
            ops.append(op)
            widths += [m.in_features, m.out_features]
        if used != train or not any(isinstance(op, _Dense) for op in ops):
            return None  # a trainable tensor the stack does not use: the model is more than this stack
        return _GroupedStack(ops, widths)

    def step(self, env: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], X: torch.Tensor,
             grad_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Forward of ``X`` ``(k, B, in)``; ``grad_of(out)`` → dloss/dout; writes ``grads`` (trainable names).

        ``env`` maps every parameter name to its tensor: ``(k, *shape)`` for trainable and stacked frozen
        tensors, ``shape`` for shared frozen ones.
        """
        if self.columns:
            return self._step_columns(env, grads, X, grad_of)
        k = X.shape[0]
        saved: list[tuple] = []
        h = X
        for op in self.ops:
            if isinstance(op, str):
                if op != "identity":
                    fn = torch.relu if op == "relu" else torch.tanh
                    h = fn(h) if h is X else (h.relu_() if op == "relu" else h.tanh_())
                saved.append((op, h))
                continue
            W, b = env[op.W], None if op.b is None else env[op.b]
            if op.A is not None and op.merge:  # W + s·B A, one (k, out, in) weight per replica
                W = torch.baddbmm(W.expand(k, *W.shape[-2:]), env[op.B], env[op.A], alpha=op.scaling)
            if W.dim() == 3:
                Wt = W.transpose(1, 2)
                if b is None:
                    z = torch.bmm(h, Wt)
                else:
                    z = torch.baddbmm(b.unsqueeze(-2) if b.dim() == 2 else b, h, Wt)
            else:  # a weight every replica shares: one GEMM over all k·B rows
                h2 = h.reshape(-1, h.shape[-1])
                shared_bias = b is not None and b.dim() == 1
                z = (torch.addmm(b, h2, W.t()) if shared_bias else torch.mm(h2, W.t())).view(k, -1, W.shape[0])
                if b is not None and not shared_bias:
                    z.add_(b.unsqueeze(1))
            u = None
            if op.A is not None and not op.merge:  # plain LoRA: z += (s·x Aᵀ) Bᵀ
                u = torch.bmm(h, env[op.A].transpose(1, 2)).mul_(op.scaling)
                z.baddbmm_(u, env[op.B].transpose(1, 2))
            saved.append((op, h, W, u))
            h = z
        g = grad_of(h)
        for i in range(len(saved) - 1, self.first - 1, -1):
            if isinstance(saved[i][0], str):
                g = _activation_backward(*saved[i], g)
                continue
            op, h_in, W, u = saved[i]
            if op.b in grads:
                grads[op.b].copy_(g.sum(1))
            if op.W in grads or (op.A is not None and op.merge):
                dW = torch.bmm(g.transpose(1, 2), h_in)  # (k, out, in)
                if op.W in grads:
                    grads[op.W].copy_(dW)
                else:  # d(s·B A): dB = s·dW Aᵀ, dA = s·Bᵀ dW
                    grads[op.B].copy_(torch.bmm(dW, env[op.A].transpose(1, 2)).mul_(op.scaling))
                    grads[op.A].copy_(torch.bmm(env[op.B].transpose(1, 2), dW).mul_(op.scaling))
            du = None
            if u is not None:
                grads[op.B].copy_(torch.bmm(g.transpose(1, 2), u))
                du = torch.bmm(g, env[op.B]).mul_(op.scaling)  # (k, B, r)
                grads[op.A].copy_(torch.bmm(du.transpose(1, 2), h_in))
            if i == self.first:
                break  # no gradient for the input
            g = torch.bmm(g, W) if W.dim() == 3 else torch.mm(g.reshape(-1, g.shape[-1]), W).view(k, -1, W.shape[1])
            if du is not None:
                g.baddbmm_(du, env[op.A])

    def _step_columns(self, env: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], X: torch.Tensor,
                      grad_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """:meth:`step` with feature-major activations ``(k, features, B)``: ``z = W h + b`` per replica."""
        k = X.shape[0]
        saved: list[tuple] = []
        h = X.transpose(1, 2).contiguous()
        first = True
        for op in self.ops:
            if isinstance(op, str):
                if op != "identity":
                    h = (torch.relu(h) if op == "relu" else torch.tanh(h)) if first else (
                        h.relu_() if op == "relu" else h.tanh_())
                saved.append((op, h))
                continue
            W, b = env[op.W], None if op.b is None else env[op.b]
            if op.A is not None:  # merged: W + s·B A
                W = torch.baddbmm(W.expand(k, *W.shape[-2:]), env[op.B], env[op.A], alpha=op.scaling)
            elif W.dim() == 2:
                W = W.expand(k, *W.shape)
            z = torch.bmm(W, h) if b is None else torch.baddbmm(b.unsqueeze(-1), W, h)
            saved.append((op, h, W))
            h, first = z, False
        g = grad_of(h.transpose(1, 2)).transpose(1, 2)
        for i in range(len(saved) - 1, self.first - 1, -1):
            if isinstance(saved[i][0], str):
                g = _activation_backward(*saved[i], g)
                continue
            op, h_in, W = saved[i]
            if op.b in grads:
                grads[op.b].copy_(g.sum(2))
            if op.W in grads or op.A is not None:
                dW = torch.bmm(g, h_in.transpose(1, 2))  # (k, out, in)
                if op.W in grads:
                    grads[op.W].copy_(dW)
                else:
                    grads[op.B].copy_(torch.bmm(dW, env[op.A].transpose(1, 2)).mul_(op.scaling))
                    grads[op.A].copy_(torch.bmm(env[op.B].transpose(1, 2), dW).mul_(op.scaling))
            if i == self.first:
                break
            # Wᵀ made contiguous first: the same numbers, and the product ran ~2× faster than with the
            # transposed view (59 + 8 against 110 µs at 32 replicas of 16 × 16, this machine, pinned).
            g = torch.bmm(W.transpose(1, 2).contiguous(), g)


@dataclass
class ReplicaHistory:
    """What :meth:`ReplicaTrainer.fit` records (Chapter 4).

    Attributes:
        loss: ``(n_records, K)`` training losses, one row every ``record_every`` steps.
        steps: the step (from 0) of each row of ``loss``.
        evals: ``(step, value)`` for every call of the evaluation hook.

    Example:
        >>> h = ReplicaHistory(loss=torch.tensor([[1.0, 2.0], [0.5, 1.5]]), steps=[0, 1])
        >>> h.final().tolist()
        [0.5, 1.5]
    """

    loss: torch.Tensor
    steps: list[int]
    evals: list[tuple[int, Any]] = field(default_factory=list)

    def final(self) -> torch.Tensor:
        """The last recorded loss of every replica, shape ``(K,)``."""
        return self.loss[-1]


class ReplicaTrainer:
    """Train ``K`` independent replicas of one model as one vectorised computation (Chapter 4).

    Replica ``k`` is the model ``model_fn(seeds[k])`` trained with learning rate ``lr[k]`` and weight
    decay ``weight_decay[k]`` on its own batch stream, drawn from a ``torch.Generator`` seeded with
    ``data_seeds[k]``. Replicas that share a data seed share their batches (the data are drawn once).
    The results equal ``K`` runs of :func:`train_one` (``torch.optim``) to float32 rounding.

    Args:
        model_fn: ``model_fn(seed)`` builds one replica (all replicas must have the same parameter
            names and shapes); its parameters with ``requires_grad=True`` are trained.
        K: the number of replicas, ``>= 1``.
        seeds: ``K`` seeds for ``model_fn`` (default ``0..K-1``).
        lr: one learning rate for all, or ``K`` of them.
        weight_decay: one or ``K`` weight decays (L2 for ``"sgd"``/``"adam"``, decoupled for ``"adamw"``).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``; ``momentum``, ``betas``, ``eps`` as ``torch.optim``.
        data_seeds: ``K`` seeds of the batch streams (default ``seeds``).
        masks: optional ``{parameter name: (K, *shape) 0/1 tensor}``; masked entries start at zero and
            get zero gradient (different LoRA ranks, see :func:`lora_rank_masks`).
        merge_lora: how :class:`~lorakit.LoRALinear` layers are computed (``"auto"``, ``True``, ``False``;
            see the module docstring).
        chunk: compute at most this many replicas per vectorised pass (default: all ``K``). Smaller
            chunks keep activations in the CPU cache when ``K × batch`` is large; the result is the same.
        engine: how a training step is computed. ``"bmm"``: the grouped-``bmm`` path for sequential
            stacks of ``nn.Linear``/:class:`~lorakit.LoRALinear` layers and ReLU/Tanh/Identity (an
            ``nn.Sequential``, nested ones included, or a model whose ``replica_sequence()`` returns its
            layers in order; a factored layer joins by listing its products in ``replica_dense()``,
            ``[(weight name, bias name or None), …]`` in the order applied), with a hand-written backward; ``loss_fn`` must call ``model`` once, on ``batch[0]``. ``"vmap"``: any
            model. ``"auto"`` (default): ``"bmm"`` when the model is such a stack, else ``"vmap"``.

    Attributes:
        params: the ``(K, P)`` trainable parameters of all replicas (row ``k`` = replica ``k``).
        names: the trainable parameter names, in the order of ``params``' columns.

    Example:
        >>> def model_fn(seed):
        ...     torch.manual_seed(seed)
        ...     return nn.Linear(3, 1)
        >>> X = torch.randn(64, 3); y = X @ torch.tensor([1.0, -2.0, 0.5])
        >>> trainer = ReplicaTrainer(model_fn, K=4, lr=[0.3, 0.1, 0.03, 0.01], optimizer="sgd")
        >>> history = trainer.fit(lambda model, b: F.mse_loss(model(b[0]).squeeze(-1), b[1]),
        ...                       shuffled(X, y, batch_size=16), steps=200, progress=False)
        >>> history.loss.shape, history.final().argmin().item()
        (torch.Size([200, 4]), 0)
        >>> round(trainer.module_of(0).weight[0, 1].item(), 2)
        -2.0
    """

    def __init__(
        self,
        model_fn: Callable[[int], nn.Module],
        K: int,
        *,
        seeds: Sequence[int] | None = None,
        lr: float | Sequence[float] = 1e-3,
        weight_decay: float | Sequence[float] = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        data_seeds: Sequence[int] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        merge_lora: MergeMode = "auto",
        chunk: int | None = None,
        engine: EngineName = "auto",
    ) -> None:
        _check_K(K)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk={chunk!r} must be None or an int >= 1 (replicas per vectorised pass)")
        self.chunk = K if chunk is None else min(chunk, K)
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={optimizer!r} is unknown: use 'sgd', 'adam' or 'adamw'")
        if merge_lora not in ("auto", True, False):
            raise ValueError(f"merge_lora={merge_lora!r} must be 'auto', True or False")
        if engine not in ("auto", "bmm", "vmap"):
            raise ValueError(f"engine={engine!r} must be 'auto', 'bmm' or 'vmap'")
        self.seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
        self.data_seeds = list(self.seeds) if data_seeds is None else [int(s) for s in data_seeds]
        for name, values in (("seeds", self.seeds), ("data_seeds", self.data_seeds)):
            if len(values) != K:
                raise ValueError(f"{name} has {len(values)} values for K={K} replicas: pass exactly K")
        lr_t = _per_replica("lr", lr, K, positive=True)
        wd_t = _per_replica("weight_decay", weight_decay, K, positive=False)
        self.K = K
        self.lr, self.weight_decay = lr_t.tolist(), wd_t.tolist()

        models = [model_fn(seed) for seed in self.seeds]
        template = models[0]
        shapes = {n: p.shape for n, p in template.named_parameters()}
        for m in models[1:]:
            if {n: p.shape for n, p in m.named_parameters()} != shapes:
                raise ValueError("model_fn returned models with different parameter names or shapes: "
                                 "replicas must share one architecture (group different ranks with masks)")
        self.names = [n for n, p in template.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
        self._shapes = [shapes[n] for n in self.names]
        self._sizes = sizes = [math.prod(s) for s in self._shapes]
        self._slices = [slice(a, a + n) for a, n in zip([0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]], sizes)]
        per = [dict(m.named_parameters()) for m in models]
        dtype = per[0][self.names[0]].dtype
        with torch.no_grad():
            self.params = torch.cat(
                [torch.stack([p[n].detach().reshape(-1) for p in per]) for n in self.names], dim=1
            ).to(dtype)
        self._mask: torch.Tensor | None = None
        if masks:
            unknown = set(masks) - set(self.names)
            if unknown:
                raise ValueError(f"masks names {sorted(unknown)} are not trainable parameters; use names from .names")
            mask = torch.ones_like(self.params)
            for n, sl, shape in zip(self.names, self._slices, self._shapes):
                if n in masks:
                    if tuple(masks[n].shape) != (K, *shape):
                        raise ValueError(f"mask of {n} has shape {tuple(masks[n].shape)}, expected {(K, *shape)}")
                    mask[:, sl] = masks[n].reshape(K, -1).to(dtype)
            self._mask = mask
            self.params.mul_(mask)

        # Frozen tensors: shared if equal in every replica, stacked otherwise.
        self._shared: dict[str, torch.Tensor] = {}
        self._stacked: dict[str, torch.Tensor] = {}
        frozen = [(n, t) for n, t in template.named_parameters() if not t.requires_grad]
        frozen += list(template.named_buffers())
        all_tensors = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in models]
        for n, t in frozen:
            others = [d[n].detach() for d in all_tensors]
            if all(torch.equal(others[0], o) for o in others[1:]):
                self._shared[n] = others[0]
            else:
                self._stacked[n] = torch.stack(others)
        self.module = _functional_twin(template, merge_lora)
        self._stack = None if engine == "vmap" else _GroupedStack.build(template, self.names, merge_lora)
        if engine == "bmm" and self._stack is None:
            raise ValueError("engine='bmm' needs a sequential stack of nn.Linear/LoRALinear (no dropout, trainable "
                             "factors) and ReLU/Tanh/Identity layers: use engine='vmap' for this model")
        self.engine = "vmap" if self._stack is None else "bmm"
        self._template = template
        self.optimizer = ReplicaOptimizer(
            self.params, optimizer, lr=lr_t, weight_decay=wd_t, momentum=momentum, betas=betas, eps=eps
        )
        self._generators: list[torch.Generator] | None = None
        uniq = sorted(set(self.data_seeds))
        self._unique_data_seeds = uniq
        self._data_index = torch.tensor([uniq.index(s) for s in self.data_seeds])
        self._bmm_cache: tuple | None = None  # (params, chunk), gradient buffer, per-chunk views
        self.step_count = 0

    # ------------------------------------------------------------------ views
    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        # One split (its backward is one concatenation) rather than a slice per parameter (whose backward
        # zero-fills a (K, P) gradient for each of them).
        parts = flat.split(self._sizes, dim=1)
        return {n: t.unflatten(1, shape) for n, t, shape in zip(self.names, parts, self._shapes)}

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Replica ``k``'s trainable parameters, ``{name: tensor}`` (copies)."""
        if not 0 <= k < self.K:
            raise ValueError(f"replica k={k} is out of range 0..{self.K - 1}")
        return {n: v[k].clone() for n, v in self._views(self.params).items()}

    def module_of(self, k: int) -> nn.Module:
        """A stand-alone ``nn.Module`` of replica ``k`` (a copy of its model with its trained parameters)."""
        model = copy.deepcopy(self._template)
        state = self.state_dict(k)
        stacked = {n: v[k] for n, v in self._stacked.items()}
        with torch.no_grad():
            for n, t in list(model.named_parameters()) + list(model.named_buffers()):
                if n in state:
                    t.copy_(state[n])
                elif n in stacked:
                    t.copy_(stacked[n])
        return model

    # ------------------------------------------------------------------ compute
    def _vmapped(
        self, fn: Callable, flat: torch.Tensor, batch: Sequence[Any], batch_dims: Any, randomness: str,
        rows: slice = slice(None),
    ):
        """``fn`` of the replicas ``rows`` (``flat`` holds just those rows; ``batch`` too if ``batch_dims == 0``)."""

        def one(trained: dict, stacked: dict, b: Sequence[Any]) -> torch.Tensor:
            return fn(lambda *a, **kw: functional_call(self.module, (trained, stacked, self._shared), a, kw), b)

        stacked = {n: t[rows] for n, t in self._stacked.items()}
        return vmap(one, in_dims=(0, 0, batch_dims), randomness=randomness)(self._views(flat), stacked, batch)

    def _chunks(self) -> list[slice]:
        return [slice(a, min(a + self.chunk, self.K)) for a in range(0, self.K, self.chunk)]

    def losses(self, loss_fn: LossFn, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Every replica's loss on its own batch (``batch`` tensors have a leading ``K`` dimension), ``(K,)``."""
        return torch.cat([
            self._vmapped(loss_fn, self.params[rows], tuple(t[rows] for t in batch), 0, "different", rows)
            for rows in self._chunks()
        ])

    @torch.no_grad()
    def evaluate(self, metric: Callable[..., torch.Tensor], *inputs: Any) -> torch.Tensor:
        """``metric(model, *inputs)`` for every replica on the same ``inputs``, shape ``(K,)`` (eval mode).

        Example:
            >>> t = ReplicaTrainer(lambda s: nn.Linear(2, 1), K=3, lr=0.1, optimizer="sgd")
            >>> t.evaluate(lambda model, x: model(x).sum(), torch.zeros(5, 2)).shape
            torch.Size([3])
        """
        self.module.eval()
        try:
            return torch.cat([
                self._vmapped(lambda model, b: metric(model, *b), self.params[rows], inputs, None, "same", rows)
                for rows in self._chunks()
            ])
        finally:
            self.module.train()

    @property
    def generator_seeds(self) -> list[int]:
        """The distinct data seeds, in the order of :meth:`generators` (and of the batches ``data`` returns)."""
        return list(self._unique_data_seeds)

    def generators(self) -> list[torch.Generator]:
        """The batch generators, one per distinct data seed (created at the first :meth:`fit`)."""
        if self._generators is None:
            self._generators = [torch.Generator().manual_seed(s) for s in self._unique_data_seeds]
        return self._generators

    def _bmm_step(
        self, loss_fn: LossFn, batch: Sequence[torch.Tensor], index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients and losses by the grouped-bmm path; autograd only through ``loss_fn`` on the output.

        With ``index`` (replicas sharing data seeds), each chunk gathers its replicas' batches itself; a
        feature-major stack gathers its input already transposed, saving a gather and a transposing copy
        of the ``(K, B, in)`` input per step (~0.6 ms of 8 at 128 FNN replicas in issue 17's grid).
        """
        grad, envs = self._bmm_buffers()
        losses = torch.empty(self.K, dtype=self.params.dtype)  # returned to the caller: fresh every step
        fast = getattr(loss_fn, "stacked", None)  # a loss with a one-pass form for k replicas (mse_loss)

        def one(out: torch.Tensor, b: Sequence[torch.Tensor]) -> torch.Tensor:
            def model(*args: Any, **kwargs: Any) -> torch.Tensor:
                if len(args) != 1 or kwargs or args[0] is not b[0]:
                    raise ValueError("engine='bmm' computes model(batch[0]) once per step: this loss_fn calls the "
                                     "model differently, use engine='vmap'")
                return out

            return loss_fn(model, b)

        if index is not None and self._stack.columns:
            Xt = batch[0].transpose(1, 2).contiguous()  # one per data seed: (seeds, in, B)
        for rows, (env, grads) in zip(self._chunks(), envs):
            if index is None:
                part = tuple(t[rows] for t in batch)
            elif self._stack.columns:  # X as a batch-major view of the gathered feature-major input
                part = (Xt.index_select(0, index[rows]).transpose(1, 2),
                        *(t.index_select(0, index[rows]) for t in batch[1:]))
            else:
                part = tuple(t.index_select(0, index[rows]) for t in batch)

            def grad_of(out: torch.Tensor, part=part, rows=rows) -> torch.Tensor:
                if fast is not None:
                    values, g = fast(out, part)
                    losses[rows] = values
                    return g
                out = out.detach().requires_grad_(True)
                values = vmap(one, randomness="different")(out, part)
                (g,) = torch.autograd.grad(values.sum(), out)
                losses[rows] = values.detach()
                return g.clone()  # the backward writes into it: never into a tensor autograd may share

            self._stack.step(env, grads, part[0], grad_of)
        return grad, losses

    def _bmm_buffers(self) -> tuple[torch.Tensor, list[tuple[dict, dict]]]:
        """The bmm engine's gradient buffer and, per chunk, its tensors and gradient views.

        Made once: the optimizer updates ``params`` in place, so the views stay valid; building them
        every step cost ~0.3 ms of a 128-replica FNN step (split, unflatten, dicts per chunk).
        """
        key = (self.params, self.chunk)
        if self._bmm_cache is None or self._bmm_cache[0] != key:
            grad = torch.empty_like(self.params)
            envs = [({**self._shared, **{n: t[rows] for n, t in self._stacked.items()},
                      **self._views(self.params[rows])}, self._views(grad[rows])) for rows in self._chunks()]
            self._bmm_cache = (key, grad, envs)
        return self._bmm_cache[1:]

    def step(self, loss_fn: LossFn, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """One optimizer step of every replica on its batch (leading ``K`` dimension); returns the ``(K,)`` losses."""
        return self._step(loss_fn, batch)

    def _step(self, loss_fn: LossFn, batch: Sequence[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`step`; with ``index``, ``batch`` holds one batch per data seed and replica ``k`` takes ``index[k]``."""
        if self._stack is not None:
            grad, losses = self._bmm_step(loss_fn, batch, index)
        elif index is not None:
            return self._step(loss_fn, tuple(t.index_select(0, index) for t in batch))
        elif self.chunk >= self.K:
            flat = self.params.detach().requires_grad_(True)
            losses = self._vmapped(loss_fn, flat, tuple(batch), 0, "different")
            (grad,) = torch.autograd.grad(losses.sum(), flat)
        else:  # a chunk of replicas at a time: their activations stay in the CPU's cache
            grad = torch.empty_like(self.params)
            losses = torch.empty(self.K, dtype=self.params.dtype)
            for rows in self._chunks():
                flat = self.params[rows].detach().requires_grad_(True)
                part = self._vmapped(loss_fn, flat, tuple(t[rows] for t in batch), 0, "different", rows)
                (grad[rows],) = torch.autograd.grad(part.sum(), flat)
                losses[rows] = part.detach()
        if self._mask is not None:
            grad = grad.mul_(self._mask)  # every engine's gradient is this step's own tensor
        self.optimizer.step(grad)
        self.step_count += 1
        return losses.detach()

    def fit(
        self,
        loss_fn: LossFn,
        data: DataFn,
        steps: int,
        *,
        eval_fn: Callable[["ReplicaTrainer", int], Any] | None = None,
        eval_every: int = 0,
        record_every: int = 1,
        progress: bool = True,
        desc: str = "replicas",
    ) -> ReplicaHistory:
        """Train all replicas for ``steps`` steps; a progress bar counts steps (not replicas).

        Args:
            loss_fn: ``loss_fn(model, batch)`` → scalar loss of one replica; ``model(*inputs)`` runs it and
                ``batch`` is that replica's tuple of tensors (without the replica dimension).
            data: ``data(step, generators)`` → tuple of tensors with first dimension ``len(generators)``:
                one batch per distinct data seed (:func:`stacked`, :func:`shuffled` build such functions).
            steps: number of steps ``>= 1``.
            eval_fn: ``eval_fn(trainer, step)`` called after every ``eval_every`` steps and after the
                last one; its value is stored in :attr:`ReplicaHistory.evals` (use :meth:`evaluate`).
            eval_every: evaluation period in steps (0: only at the end, if ``eval_fn`` is given).
            record_every: keep the training loss every ``record_every`` steps.
            progress: show a ``tqdm`` bar with the best and median replica loss.

        Returns:
            The :class:`ReplicaHistory`.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} must be an int >= 1")
        if record_every < 1 or eval_every < 0:
            raise ValueError(f"need record_every >= 1 and eval_every >= 0; got {record_every}, {eval_every}")
        gens = self.generators()
        n_rec = (steps + record_every - 1) // record_every
        loss = torch.empty(n_rec, self.K)
        recorded: list[int] = []
        history = ReplicaHistory(loss=loss, steps=recorded)
        # replica k gets the batch of its data seed: gather unless batches already come in replica order
        share = self._data_index.tolist() != list(range(self.K))
        bar = tqdm(range(steps), desc=desc, disable=not progress)
        for i in bar:
            batch = tuple(data(self.step_count, gens))
            if len(batch) and batch[0].shape[0] != len(gens):
                raise ValueError(
                    f"data returned a batch with leading dimension {batch[0].shape[0]}, expected one batch "
                    f"per distinct data seed ({len(gens)}); build data with stacked() or shuffled()"
                )
            step = self.step_count
            losses = self._step(loss_fn, batch, self._data_index if share else None)
            if i % record_every == 0:
                loss[len(recorded)] = losses
                recorded.append(step)
            if progress and i % 50 == 0:
                best, median = losses.min().item(), losses.median().item()
                bar.set_postfix(best=f"{best:.4g}", median=f"{median:.4g}", refresh=False)
            if eval_fn is not None and ((eval_every and (i + 1) % eval_every == 0) or i == steps - 1):
                history.evals.append((step + 1, eval_fn(self, step + 1)))
        bar.close()
        return history


def stacked(batch_fn: Callable[[torch.Generator], Sequence[torch.Tensor] | torch.Tensor]) -> DataFn:
    """Turn a per-generator batch function into a :class:`ReplicaTrainer` data function (Chapter 4).

    ``batch_fn(generator)`` draws one replica's batch; the result stacks one batch per generator.

    Example:
        >>> data = stacked(lambda g: torch.randn(8, 3, generator=g))
        >>> [t.shape for t in data(0, [torch.Generator().manual_seed(s) for s in (0, 1)])]
        [torch.Size([2, 8, 3])]
    """

    def data(step: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
        parts = [batch_fn(g) for g in generators]
        parts = [(p,) if isinstance(p, torch.Tensor) else tuple(p) for p in parts]
        return tuple(torch.stack(column) for column in zip(*parts))

    return data


def shuffled(*tensors: torch.Tensor, batch_size: int) -> DataFn:
    """Mini-batches of in-memory tensors, each generator with its own shuffled order (Chapter 4).

    Each replica walks through its own permutation of the examples (drawn from its generator at the
    start of every epoch, like :func:`lorakit.train.batch_indices` with ``sampling="shuffle"``) and
    the last incomplete batch of an epoch is dropped.

    Example:
        >>> X = torch.arange(6.0).unsqueeze(1)
        >>> data = shuffled(X, batch_size=3)
        >>> data(0, [torch.Generator().manual_seed(0)])[0].shape
        torch.Size([1, 3, 1])
    """
    if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
        raise ValueError("shuffled needs at least one tensor, all with the same first dimension")
    n = len(tensors[0])
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in 1..{n} (the number of examples)")
    per_epoch = n // batch_size
    orders: dict[int, torch.Tensor] = {}  # the current epoch's permutation, by generator

    def data(step: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
        j = step % per_epoch
        for g in generators:
            if j == 0 or id(g) not in orders:
                orders[id(g)] = torch.randperm(n, generator=g)
        idx = torch.stack([orders[id(g)][j * batch_size : (j + 1) * batch_size] for g in generators])
        return tuple(t[idx] for t in tensors)

    return data


def blocked(
    batch_fn: Callable[[torch.Generator, int], Sequence[torch.Tensor] | torch.Tensor],
    block: int,
    *,
    then: Callable[[tuple[torch.Tensor, ...]], Sequence[torch.Tensor]] | None = None,
) -> DataFn:
    """Draw ``block`` steps' batches per generator at once, then serve them a step at a time (Chapter 4).

    ``batch_fn(generator, n)`` draws ``n`` consecutive batches (tensors with leading dimension ``n``); the
    data function calls it once per generator every ``block`` steps, so at ``K`` replicas a step costs
    ``K / block`` generator calls instead of ``K``. Each replica's stream depends only on its seed and
    ``block`` (not on ``K`` nor on the other replicas), so a sequential :func:`train_one` run with the
    same data function sees the same batches. ``then`` maps the stacked block, tensors of shape
    ``(len(generators), block, …)``, to the tensors served (e.g. labels computed for the whole block in
    one call). Steps must be requested in order from 0 (as :meth:`ReplicaTrainer.fit` does).

    Example:
        >>> data = blocked(lambda g, n: torch.randn(n, 8, 3, generator=g), block=4)
        >>> gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        >>> [data(step, gens)[0].shape for step in range(2)][1]
        torch.Size([2, 8, 3])
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} must be an int >= 1 (steps drawn per generator call)")
    # The current block of each generator list (the list is kept, so that its ids are not reused); a few at most.
    cache: dict[tuple[int, ...], tuple[tuple[torch.Generator, ...], int, tuple[torch.Tensor, ...]]] = {}

    def data(step: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
        key = tuple(id(g) for g in generators)
        start = step - step % block
        if key not in cache or cache[key][1] != start:
            if step % block and key not in cache:
                raise ValueError(f"blocked data asked for step {step} first: request steps in order from 0")
            parts = [batch_fn(g, block) for g in generators]
            parts = [(p,) if isinstance(p, torch.Tensor) else tuple(p) for p in parts]
            tensors = tuple(torch.stack(column) for column in zip(*parts))
            cache.pop(key, None)
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = (tuple(generators), start, tuple(then(tensors)) if then is not None else tensors)
        return tuple(t[:, step - start] for t in cache[key][2])

    return data


class _MSELoss:
    """``F.mse_loss(model(batch[0]), batch[1])``, with a one-pass form for the grouped-bmm engine (Chapter 4).

    Called as ``mse_loss(model, batch)`` it is an ordinary loss function (for :func:`train_one`, the ``vmap``
    engine, or any loop). The ``bmm`` engine instead calls :meth:`stacked` on the ``(k, …)`` outputs of ``k``
    replicas: every loss and ``dloss/dout = 2 (out − y) / n`` in two elementwise passes and a ``bmm``,
    where autograd through ``vmap(F.mse_loss)`` takes ~10 passes, some over broadcast (stride-0) tensors
    (a microbenchmark of 128 × 256 × 16 outputs at load 4.5: 7.8 ms against 0.8 ms for the one-pass form).

    Example:
        >>> out, y = torch.zeros(2, 4, 1), torch.ones(2, 4, 1)
        >>> mse_loss(lambda x: x, (out[0], y[0])).item(), mse_loss.stacked(out, (out, y))[0].tolist()
        (1.0, [1.0, 1.0])
    """

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(model(batch[0]), batch[1])

    def stacked(self, out: torch.Tensor, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``(k,)`` and the gradient with respect to ``out`` ``(k, …)`` of the ``k`` replicas' outputs."""
        d = out - batch[1]
        n = d[0].numel()
        flat = d.reshape(d.shape[0], 1, n)  # the squared norm of each replica's row, one pass, no temporary
        return torch.bmm(flat, flat.transpose(1, 2)).view(-1).div_(n), d.mul_(2.0 / n)

    def __repr__(self) -> str:
        return "mse_loss"


#: ``F.mse_loss(model(batch[0]), batch[1])`` as a replica loss (one callable; for the bmm engine it also has a one-pass form) (Chapter 4).
mse_loss = _MSELoss()


def lora_rank_masks(model: nn.Module, ranks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Masks that give replica ``k`` rank ``ranks[k]`` in a model built with the largest rank (Chapter 4).

    For every :class:`~lorakit.LoRALinear` of rank ``r``, rows ``ranks[k]..r-1`` of ``A`` and columns of
    ``B`` are masked for replica ``k``. The layer's scaling stays ``alpha / r``: use ``alpha = r`` (scaling 1,
    as Part III does) for a replica to equal a model of the smaller rank.

    Example:
        >>> net = nn.Sequential(LoRALinear(nn.Linear(4, 4), r=4, alpha=4))
        >>> masks = lora_rank_masks(net, [1, 4])
        >>> masks["0.A"].shape, masks["0.A"][0].sum().item(), masks["0.B"][1].sum().item()
        (torch.Size([2, 4, 4]), 4.0, 16.0)
    """
    masks: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            for k in ranks:
                if not 1 <= k <= m.r:
                    raise ValueError(f"rank {k} is not in 1..{m.r} (the rank of layer {name!r})")
            keep = (torch.arange(m.r).unsqueeze(0) < torch.tensor(list(ranks)).unsqueeze(1)).float()  # (K, r)
            prefix = f"{name}." if name else ""
            masks[prefix + "A"] = keep.unsqueeze(2).expand(-1, -1, m.in_features).clone()
            masks[prefix + "B"] = keep.unsqueeze(1).expand(-1, m.out_features, -1).clone()
    return masks


def train_one(
    model_fn: Callable[[int], nn.Module],
    seed: int,
    loss_fn: LossFn,
    data: DataFn,
    steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: OptimizerName = "adam",
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    data_seed: int | None = None,
) -> tuple[nn.Module, list[float]]:
    """One run with ``torch.optim``: the sequential reference :class:`ReplicaTrainer` equals (Chapter 4).

    Takes the same ``model_fn``, ``loss_fn`` and ``data`` as :meth:`ReplicaTrainer.fit` (``data`` is called
    with one generator, seeded with ``data_seed``, default ``seed``).

    Returns:
        The trained model and its loss at every step.

    Example:
        >>> model, losses = train_one(lambda s: nn.Linear(2, 1), 0, lambda m, b: m(b[0]).pow(2).mean(),
        ...                           stacked(lambda g: torch.randn(4, 2, generator=g)), 3, optimizer="sgd")
        >>> len(losses)
        3
    """
    model = model_fn(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer={optimizer!r} is unknown: use 'sgd', 'adam' or 'adamw'")
    gen = [torch.Generator().manual_seed(seed if data_seed is None else data_seed)]
    losses = []
    for step in range(steps):
        batch = tuple(t[0] for t in data(step, gen))
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses
