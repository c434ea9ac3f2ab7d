"""ReLoRA (Lialin et al., 2023): high-rank training through a sequence of low-rank updates (Chapter 11).

Every ``reset_every`` optimizer steps, each LoRA layer's update is merged into the
frozen base weight, ``A`` is redrawn and ``B`` set to 0, and the optimizer state of
``A`` and ``B`` is (magnitude-)pruned; the learning rate then warms up again (a
"jagged" schedule). Each cycle adds at most rank ``r``, so after ``k`` cycles the
total update ``W_T − W_0`` can reach rank ``k·r`` — while only ``r(in+out)``
numbers per layer ever train at once.
"""

from __future__ import annotations

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
            back to ``lr`` over this many steps (0: no ramp).
        prune_ratio: fraction of the optimizer-state entries of ``A``/``B`` zeroed at a restart,
            in ``[0, 1]`` (the paper uses 0.99; 1 = full reset). The entries with the smallest
            first moment are dropped, in every moment alike.
        seed: if given, every restart redraws ``A`` from a private generator seeded with it, so a
            run is reproducible on its own and torch's global random state is left alone; if
            ``None``, from torch's global generator.

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
        self.optimizer, self.reset_every = optimizer, reset_every
        self.warmup_steps, self.prune_ratio = warmup_steps, prune_ratio
        self.peak_lrs = [group["lr"] for group in optimizer.param_groups]
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.steps = 0
        self.restarts = 0
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

    def _after_step(self) -> None:
        self.steps += 1
        if self.steps % self.reset_every == 0:
            self.restart()
        since = self.steps % self.reset_every
        factor = 1.0
        if self.restarts and self.warmup_steps:
            factor = min(1.0, (since + 1) / (self.warmup_steps + 1))
        for group, lr in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = lr * factor
