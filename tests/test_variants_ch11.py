"""Chapter 11's variant checks: DoRA against peft's ``use_dora``, ReLoRA's jagged cosine schedule,
and the tuned comparison's recipes (``lorakit.book.family_exp``)."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lorakit as lk
from lorakit.book.family_exp import FAMILY, prepare_family
from lorakit.variants import DoRALinear, GaLoreAdamW, ReLoRA


# --- DoRA == peft's DoRA (detached norm), numerically ---------------------------------------------


def _peft_dora(base: nn.Linear, r: int, alpha: float):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import Linear as PeftLoraLinear

    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, use_dora=True)
    return PeftLoraLinear(base, "default", config=config, r=r, lora_alpha=alpha, use_dora=True)


@pytest.mark.parametrize("r, alpha", [(2, 2.0), (4, 8.0)])
def test_dora_matches_peft_outputs_and_gradients(r, alpha):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    ours = DoRALinear(copy.deepcopy(base), r=r, alpha=alpha)
    theirs = _peft_dora(copy.deepcopy(base), r=r, alpha=alpha)
    magnitude = theirs.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(ours.m.detach(), magnitude.detach())  # both ‖W‖ per output row at init
    g = torch.Generator().manual_seed(1)
    A, B = 0.3 * torch.randn(r, 16, generator=g), 0.3 * torch.randn(12, r, generator=g)
    with torch.no_grad():
        ours.A.copy_(A)
        ours.B.copy_(B)
        theirs.lora_A["default"].weight.copy_(A)
        theirs.lora_B["default"].weight.copy_(B)
    x = torch.randn(7, 16, generator=g)
    gy = torch.randn(7, 12, generator=g)
    y1, y2 = ours(x), theirs(x)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(ours.A.grad, theirs.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.B.grad, theirs.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.m.grad, magnitude.grad, atol=1e-5, rtol=1e-4)


def test_undetached_dora_has_the_same_forward_but_other_gradients():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    det, full = DoRALinear(copy.deepcopy(base), r=2), DoRALinear(copy.deepcopy(base), r=2, detach_norm=False)
    with torch.no_grad():
        full.A.copy_(det.A)
        for layer in (det, full):
            layer.B.copy_(torch.ones(6, 2))
    x = torch.randn(5, 10)
    y1, y2 = det(x), full(x)
    torch.testing.assert_close(y1, y2)
    y1.pow(2).sum().backward()
    y2.pow(2).sum().backward()
    assert not torch.allclose(det.B.grad, full.B.grad, atol=1e-4)
    torch.testing.assert_close(det.m.grad, full.m.grad)  # m's gradient does not go through the norm


# --- ReLoRA: the paper's jagged cosine schedule ---------------------------------------------------


def _relora(**kwargs):
    model = nn.Sequential(nn.Linear(4, 3))
    lk.inject_lora(model, "0", r=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    return model, opt, ReLoRA(model, opt, **kwargs)


def test_jagged_cosine_follows_the_papers_formula():
    total, first, every, warm, floor = 100, 10, 25, 5, 0.1
    _, _, relora = _relora(reset_every=every, warmup_steps=warm, schedule="jagged_cosine", total_steps=total,
                           first_warmup_steps=first, min_lr_ratio=floor)

    def cosine(t):
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (t - first) / (total - first)))

    assert relora.lr_factor(0, restarted=False) == pytest.approx(1 / (first + 1) * cosine(first))
    assert relora.lr_factor(20, restarted=False) == pytest.approx(cosine(20))
    assert relora.lr_factor(99, restarted=True) == pytest.approx(cosine(99))
    # right after the restart at step 50 the rate ramps towards the cosine at the end of the ramp
    assert relora.lr_factor(50, restarted=True) == pytest.approx(1 / (warm + 1) * cosine(55))
    assert relora.lr_factor(54, restarted=True) == pytest.approx(5 / (warm + 1) * cosine(55))
    assert relora.lr_factor(55, restarted=True) == pytest.approx(cosine(55))


def test_jagged_cosine_drives_the_optimizer_and_restarts():
    model, opt, relora = _relora(reset_every=4, warmup_steps=1, schedule="jagged_cosine", total_steps=12,
                                 first_warmup_steps=2)
    seen = [opt.param_groups[0]["lr"]]
    X = torch.randn(8, 4)
    for _ in range(11):
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
    expected = [relora.lr_factor(t, restarted=t >= 4) for t in range(12)]
    assert seen == pytest.approx(expected)
    assert relora.restarts == 2


def test_linear_schedule_is_unchanged_by_default():
    _, opt, relora = _relora(reset_every=4, warmup_steps=3)
    assert opt.param_groups[0]["lr"] == 1.0
    assert [relora.lr_factor(t, restarted=t >= 4) for t in range(8)] == [1, 1, 1, 1, 0.25, 0.5, 0.75, 1]


def test_first_warmup_with_the_linear_schedule():
    _, opt, relora = _relora(reset_every=10, first_warmup_steps=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    assert [relora.lr_factor(t, restarted=False) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])


def test_jagged_cosine_bad_input():
    model = nn.Sequential(nn.Linear(4, 3))
    lk.inject_lora(model, "0", r=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        ReLoRA(model, opt, reset_every=4, schedule="jagged_cosine")
    with pytest.raises(ValueError, match="schedule"):
        ReLoRA(model, opt, reset_every=4, schedule="cosine")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        ReLoRA(model, opt, reset_every=4, schedule="jagged_cosine", total_steps=10, min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="first_warmup_steps"):
        ReLoRA(model, opt, reset_every=4, first_warmup_steps=-1)
    assert opt.param_groups[0]["lr"] == 1.0  # refused: nothing changed


# --- the recipes of the tuned comparison ----------------------------------------------------------


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))


def test_galore_recipe_steps_projected_weights_at_scale_times_lr():
    model = _mlp()
    opt, _, _ = prepare_family("galore", model, r=2, lr=0.1, total_steps=40)
    assert isinstance(opt, GaLoreAdamW)
    projected, rest = opt.param_groups
    assert projected["lr"] == rest["lr"] == 0.1  # no lr / 0.25: the scale is exercised
    assert projected["scale"] == 0.25 and projected["rank"] == 2


def test_adalora_recipe_uses_the_given_rate_and_relora_the_jagged_schedule():
    opt, _, notes = prepare_family("adalora", _mlp(), r=2, lr=0.01, total_steps=40)
    assert {g["lr"] for g in opt.param_groups} == {0.01}
    assert "rank 3/layer" in notes
    model = _mlp()
    opt, _, notes = prepare_family("relora", model, r=2, lr=0.01, total_steps=40)
    assert "jagged cosine" in notes
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 11)  # first warm-up: 1/(10+1) of the peak


def test_every_family_method_builds_and_takes_a_step():
    X, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
    for method in FAMILY:
        model = _mlp()
        opt, loss_fn, _ = prepare_family(method, model, r=2, lr=1e-3, total_steps=20)
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    with pytest.raises(ValueError, match="unknown"):
        prepare_family("qlora", _mlp())
