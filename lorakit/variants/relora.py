"""ReLoRA (Lialin et al., 2023): high-rank training through a sequence of low-rank updates (Chapter 11).

Every ``reset_every`` optimizer steps, each LoRA layer's update is merged into the
frozen base weight, ``A`` is redrawn and ``B`` set to 0, and the optimizer state of
``A`` and ``B`` is (magnitude-)pruned; the learning rate then warms up again (a
"jagged" schedule). Each cycle adds at most rank ``r``, so after ``k`` cycles the
total update ``W_T − W_0`` can reach rank ``k·r`` — while only ``r(in+out)``
numbers per layer ever train at once.

Two learning-rate schedules (``schedule=``):

* ``"linear"`` (the default): the peak rate throughout,
  with a linear re-warm-up after each restart (and an optional one at the start);
* ``"jagged_cosine"``: the paper's schedule (its code's ``cosine_restarts``): a linear warm-up over
  the first ``first_warmup_steps``, then a cosine decay from the peak to ``min_lr_ratio`` × peak over
  the whole run, and after each restart a linear re-warm-up towards the cosine's value at the end
  of the re-warm-up.

Where this module departs from the paper, on purpose: at a restart both Adam moments are pruned
with one mask, chosen by ``|first moment|`` (the paper's code prunes each moment by its own
magnitude, which can keep a first moment whose second moment was zeroed and divide it by ``eps``);
a ramp starts at ``lr/(w+1)`` rather than at 0; and there is no full-rank warm start — the paper
trains the full model for its first thousands of steps, a fine-tuning run starts from a pretrained one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..layer import LoRALinear

__all__ = ["ReLoRA"]


class ReLoRA:
    """Merge-and-restart schedule for the LoRA layers of a model, driven by its optimizer's steps (Chapter 11).

    Args:
        model: holds :class:`lorakit.LoRALinear` layers (plain LoRA or DoRA).
        optimizer: trains the LoRA factors; its learning rates at construction are the peak rates.
        reset_every: optimizer steps between two restarts, >= 1.
        warmup_steps: after each restart the learning rate ramps linearly from ``lr/(warmup+1)``
            back to ``lr`` (``"jagged_cosine"``: to the cosine's value) over this many steps (0: no ramp).
        prune_ratio: fraction of the optimizer-state entries of ``A``/``B`` zeroed at a restart,
            in ``[0, 1]`` (the paper uses 0.99; 1 = full reset). The entries with the smallest
            first moment are dropped, in every moment alike.
        seed: if given, every restart redraws ``A`` from a private generator seeded with it, so a
            run is reproducible on its own and torch's global random state is left alone; if
            ``None``, from torch's global generator.
        schedule: ``"linear"`` (peak rate, re-warm-ups) or ``"jagged_cosine"`` (the paper's, see the
            module docstring).
        total_steps: the run's length in optimizer steps; needed by ``"jagged_cosine"``.
        first_warmup_steps: a linear warm-up from ``lr/(w+1)`` over the run's first steps (the paper's
            first-cycle warm-up); 0 = none.
        min_lr_ratio: the floor of the cosine, as a fraction of the peak (the paper's code: 0.1).

    Attributes:
        restarts: restarts done so far.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=1)
        >>> opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
        >>> relora = ReLoRA(model, opt, reset_every=2)
        >>> for _ in range(4):
        ...     opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
        >>> relora.restarts
        2

        The paper's jagged cosine schedule, as factors of the peak rate (``lr_factor``):

        >>> opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
        >>> jagged = ReLoRA(model, opt, reset_every=4, warmup_steps=1, schedule="jagged_cosine",
        ...                 total_steps=12, first_warmup_steps=2)
        >>> [round(jagged.lr_factor(t, restarted=t >= 4), 3) for t in range(12)]
        [0.333, 0.667, 1.0, 0.978, 0.407, 0.815, 0.689, 0.55, 0.143, 0.285, 0.186, 0.122]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        reset_every: int,
        *,
        warmup_steps: int = 0,
        prune_ratio: float = 0.99,
        seed: int | None = None,
        schedule: Literal["linear", "jagged_cosine"] = "linear",
        total_steps: int | None = None,
        first_warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
    ) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
        if not self.layers:
            raise ValueError("the model has no LoRA layer: call lorakit.inject_lora first")
        if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 1:
            raise ValueError(f"reset_every={reset_every!r} must be an int >= 1 (optimizer steps between restarts)")
        if not 0 <= warmup_steps < reset_every:
            raise ValueError(f"warmup_steps={warmup_steps} must be in [0, reset_every={reset_every})")
        if not 0.0 <= prune_ratio <= 1.0:
            raise ValueError(f"prune_ratio={prune_ratio} must be in [0, 1]; 1 resets the optimizer state fully")
        if schedule not in ("linear", "jagged_cosine"):
            raise ValueError(f"schedule={schedule!r} must be 'linear' or 'jagged_cosine' (the paper's)")
        if schedule == "jagged_cosine" and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                            or total_steps <= first_warmup_steps):
            raise ValueError(f"schedule='jagged_cosine' needs total_steps (an int > first_warmup_steps="
                             f"{first_warmup_steps}), the run's length in optimizer steps; got {total_steps!r}")
        if isinstance(first_warmup_steps, bool) or not isinstance(first_warmup_steps, int) or first_warmup_steps < 0:
            raise ValueError(f"first_warmup_steps={first_warmup_steps!r} must be an int >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1] (the paper's code uses 0.1)")
        self.schedule, self.total_steps = schedule, total_steps
        self.first_warmup_steps, self.min_lr_ratio = first_warmup_steps, float(min_lr_ratio)
        self.optimizer, self.reset_every = optimizer, reset_every
        self.warmup_steps, self.prune_ratio = warmup_steps, prune_ratio
        self.peak_lrs = [group["lr"] for group in optimizer.param_groups]
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.steps = 0
        self.restarts = 0
        self._set_lr(self.lr_factor(0, restarted=False))
        optimizer.register_step_post_hook(lambda *_: self._after_step())

    @torch.no_grad()
    def restart(self) -> None:
        """Merge every adapter into its base, redraw ``A``, zero ``B``, prune their optimizer state."""
        for layer in self.layers:
            if layer.merged:
                raise ValueError("a LoRA layer is merged (inference mode); unmerge it before training with ReLoRA")
            weight = layer.base.weight
            plain = (type(layer).merged_weight is LoRALinear.merged_weight
                     and type(layer).delta_weight is LoRALinear.delta_weight)
            if not plain:  # e.g. DoRA: its own merged weight
                merged = layer.merged_weight()
            else:  # plain LoRA: sum in float64, so the merge rounds once, to the weight's dtype
                delta = (layer.B.to(torch.float64) @ layer.A.to(torch.float64)) * layer.scaling
                merged = (weight.to(torch.float64) + delta).to(weight.dtype)
            if not torch.isfinite(merged).all():
                raise ValueError("merging the adapter would put NaN/Inf into the base weight; lower the learning rate")
            weight.copy_(merged)
            if self.generator is None:
                layer.reset_lora_parameters()
            else:  # draw from our own stream, leaving the global one as it was
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**62, (), generator=self.generator)))
                    layer.reset_lora_parameters()
            for p in (layer.A, layer.B):
                self._prune_state(p)
        self.restarts += 1

    def _prune_state(self, p: torch.Tensor) -> None:
        # One mask for all moments of a parameter (chosen by |first moment|): zeroing Adam's second
        # moment where the first survives would divide by ~eps and blow the next step up.
        moments = [v for k, v in self.optimizer.state.get(p, {}).items()
                   if k != "step" and torch.is_tensor(v) and v.shape == p.shape]
        if not moments or self.prune_ratio == 0:
            return
        if self.prune_ratio >= 1.0:
            drop = torch.ones_like(moments[0], dtype=torch.bool)
        else:
            k = int(self.prune_ratio * moments[0].numel())
            if k == 0:
                return
            score = moments[0].abs()
            drop = score <= score.flatten().kthvalue(k).values
        for value in moments:
            value.masked_fill_(drop, 0.0)

    def _cosine(self, step: int) -> float:
        assert self.total_steps is not None
        w = self.first_warmup_steps
        progress = min(1.0, max(0.0, (step - w) / max(1, self.total_steps - w)))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_factor(self, step: int, *, restarted: bool) -> float:
        """The multiple of the peak learning rate used for optimizer step ``step`` (0-based).

        ``restarted``: whether a restart has happened before ``step`` (the re-warm-ups follow one).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 3))
            >>> from lorakit import inject_lora
            >>> _ = inject_lora(model, "0", r=1)
            >>> opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
            >>> relora = ReLoRA(model, opt, reset_every=4, warmup_steps=3)
            >>> [relora.lr_factor(t, restarted=t >= 4) for t in range(8)]
            [1.0, 1.0, 1.0, 1.0, 0.25, 0.5, 0.75, 1.0]
        """
        if step < self.first_warmup_steps:
            ramp = (step + 1) / (self.first_warmup_steps + 1)
            return ramp * (self._cosine(self.first_warmup_steps) if self.schedule == "jagged_cosine" else 1.0)
        since = step % self.reset_every
        warming = restarted and self.warmup_steps and since < self.warmup_steps
        if self.schedule == "linear":
            return (since + 1) / (self.warmup_steps + 1) if warming else 1.0
        if warming:  # towards the cosine's value at the end of this re-warm-up (the paper's code)
            return (since + 1) / (self.warmup_steps + 1) * self._cosine(step - since + self.warmup_steps)
        return self._cosine(step)

    def _set_lr(self, factor: float) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = lr * factor

    def _after_step(self) -> None:
        self.steps += 1
        if self.steps % self.reset_every == 0:
            self.restart()
        self._set_lr(self.lr_factor(self.steps, restarted=self.restarts > 0))
