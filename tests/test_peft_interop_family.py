"""lorakit ↔ 🤗 peft for the LoRA family (Chapter 13): adapters *trained* by either library.

For plain LoRA, rsLoRA, DoRA and LoRA+: peft makes the starting adapter (``get_peft_model`` →
``save_pretrained``), lorakit loads that start, both libraries take the same optimizer steps on the
same batches, and the losses agree step by step; then each library's trained file is loaded by the
other and gives the same outputs. A non-power-of-two ``alpha / r`` is included: lorakit scales the
``r``-dimensional intermediate and peft the output, so outputs agree to float32 rounding only.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.peft_compat import load_peft_adapter, save_peft_adapter
from lorakit.variants.lora_plus import loraplus_param_groups

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

#: relative tolerance of every comparison (float32 keeps about 7 significant digits).
RTOL = 1e-5
STEPS = 6


class Tiny(nn.Module):
    """Two blocks with transformer-like layer names (query/value/dense) and a frozen head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"query": nn.Linear(16, 16), "value": nn.Linear(16, 16), "dense": nn.Linear(16, 16)})
            for _ in range(2)
        )
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block["query"](x) * block["value"](x) + block["dense"](x))
        return self.head(x)


def base_model() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


_g = torch.Generator().manual_seed(3)
X, Y = torch.randn(STEPS, 8, 16, generator=_g), torch.randint(0, 3, (STEPS, 8), generator=_g)
X_TEST = torch.randn(10, 16, generator=torch.Generator().manual_seed(7))


def adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def plus_peft(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=16)


def plus_lorakit(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(loraplus_param_groups(model, lr, 16))


def train(model: nn.Module, make_optimizer, lr: float = 1e-2) -> list[float]:
    opt = make_optimizer(model, lr)
    losses = []
    for xb, yb in zip(X, Y):
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def rel_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


FAMILY = {
    "lora": ({}, adamw, adamw),
    "lora alpha/r=1.5": ({"lora_alpha": 12}, adamw, adamw),
    "rslora": ({"use_rslora": True}, adamw, adamw),
    "dora": ({"use_dora": True}, adamw, adamw),
    "lora+": ({}, plus_peft, plus_lorakit),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_same_start_same_losses_and_files_load_across(tmp_path, name):
    options, opt_peft, opt_lorakit = FAMILY[name]
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], **options}
    torch.manual_seed(1)
    theirs = get_peft_model(base_model(), LoraConfig(**config))
    with torch.no_grad():  # a non-zero B, so that the scaling matters from the first step
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    theirs.save_pretrained(str(tmp_path / "start"))
    ours = base_model()
    load_peft_adapter(ours, tmp_path / "start")
    with torch.no_grad():
        assert rel_gap(theirs(X_TEST), ours(X_TEST)) < RTOL
        before = ours(X_TEST)

    l_peft, l_ours = train(theirs, opt_peft), train(ours, opt_lorakit)
    assert all(abs(a - b) <= RTOL * abs(a) for a, b in zip(l_peft, l_ours)), (l_peft, l_ours)
    with torch.no_grad():
        assert rel_gap(before, ours(X_TEST)) > 1e-3  # it did train

    theirs.save_pretrained(str(tmp_path / "by_peft"))
    save_peft_adapter(ours, tmp_path / "by_lorakit")
    into_ours = base_model()
    load_peft_adapter(into_ours, tmp_path / "by_peft")
    into_peft = PeftModel.from_pretrained(base_model(), str(tmp_path / "by_lorakit")).eval()
    with torch.no_grad():
        assert rel_gap(theirs(X_TEST), into_ours(X_TEST)) < RTOL
        assert rel_gap(ours(X_TEST), into_peft(X_TEST)) < RTOL


def test_peft_trained_from_scratch_loads_exactly(tmp_path):
    """Plain LoRA with alpha/r = 2 (a power of two): the two libraries give the same bits."""
    torch.manual_seed(2)
    theirs = get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    train(theirs, adamw)
    theirs.save_pretrained(str(tmp_path / "p"))
    ours = base_model()
    assert len(load_peft_adapter(ours, tmp_path / "p")) == 4
    with torch.no_grad():
        assert torch.equal(theirs(X_TEST), ours(X_TEST))


def test_lorakit_trained_from_scratch_loads_exactly_in_peft(tmp_path):
    torch.manual_seed(2)
    ours = base_model()
    lk.inject_lora(ours, ["query", "value"], r=4, alpha=8)
    train(ours, adamw)
    save_peft_adapter(ours, tmp_path / "l")
    theirs = PeftModel.from_pretrained(base_model(), str(tmp_path / "l")).eval()
    with torch.no_grad():
        assert torch.equal(theirs(X_TEST), ours(X_TEST))


def test_non_power_of_two_scaling_is_not_bit_identical_but_within_tolerance(tmp_path):
    """alpha/r = 1.5: lorakit's (s·(A x)) B and peft's s·(B (A x)) round differently."""
    gaps = []
    for seed in range(5):
        ours = base_model()
        lk.inject_lora(ours, ["query", "value"], r=4, alpha=6)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, layer in lk.lora_layers(ours):
                layer.B.copy_(torch.randn(layer.B.shape, generator=g))
        save_peft_adapter(ours, tmp_path / str(seed))
        theirs = PeftModel.from_pretrained(base_model(), str(tmp_path / str(seed))).eval()
        with torch.no_grad():
            gaps.append(rel_gap(ours(X_TEST), theirs(X_TEST)))
    assert max(gaps) < RTOL
