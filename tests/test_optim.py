"""Tests for lorakit.optim: scaled GD and scaled AdamW on LoRA factors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorakit import LoRALinear, fit, inject_lora, lora_layers
from lorakit.optim import ScaledAdamW, ScaledGD, lora_param_groups, preconditioned_gradients


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest and keeps results independent of the machine's load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def factor_layer(out: int = 6, inp: int = 5, r: int = 2, *, seed: int = 0, dtype=torch.float64) -> LoRALinear:
    """A LoRA layer on a zero base weight with scaling 1, so ΔW = B A exactly; B random (not 0)."""
    g = torch.Generator().manual_seed(seed)
    layer = LoRALinear(nn.Linear(inp, out, bias=False).to(dtype), r=r, alpha=r)
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.A.copy_(torch.randn(r, inp, generator=g, dtype=dtype))
        layer.B.copy_(torch.randn(out, r, generator=g, dtype=dtype))
    return layer


def target(out: int = 6, inp: int = 5, *, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, 2, generator=g, dtype=dtype) @ torch.randn(2, inp, generator=g, dtype=dtype)


def backward_factorisation(layer: LoRALinear, M: torch.Tensor) -> None:
    for p in (layer.A, layer.B):
        p.grad = None
    (0.5 * (layer.delta_weight() - M).pow(2).sum()).backward()


def two_layer_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_lora(model, ["0", "2"], r=2, match="exact")
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.B.normal_(std=0.3)  # leave the B = 0 start, so both factors move
    return model


# --- the update equals the formula --------------------------------------------------------------

@pytest.mark.parametrize("damping", [0.0, 1e-6, 0.5])
def test_scaled_gd_step_equals_formula(damping: float) -> None:
    layer, M, lr = factor_layer(), target(), 0.3
    backward_factorisation(layer, M)
    A, B = layer.A.detach().clone(), layer.B.detach().clone()
    gA, gB = layer.A.grad.clone(), layer.B.grad.clone()
    eye = torch.eye(2, dtype=A.dtype)
    expected_A = A - lr * torch.linalg.inv(B.T @ B + damping * eye) @ gA
    expected_B = B - lr * gB @ torch.linalg.inv(A @ A.T + damping * eye)
    ScaledGD(layer, lr=lr, damping=damping).step()
    torch.testing.assert_close(layer.A.detach(), expected_A)
    torch.testing.assert_close(layer.B.detach(), expected_B)
    # and the closed-form gradients of ½‖BA − M‖² are what autograd gave
    torch.testing.assert_close(gA, B.T @ (B @ A - M))
    torch.testing.assert_close(gB, (B @ A - M) @ A.T)


def test_scaled_gd_is_not_plain_gd() -> None:
    a, b = factor_layer(), factor_layer()
    M = target()
    for layer, opt in ((a, ScaledGD(a, lr=0.1)), (b, torch.optim.SGD([b.A, b.B], lr=0.1))):
        backward_factorisation(layer, M)
        opt.step()
    assert not torch.allclose(a.A, b.A, atol=1e-3)


def reference_scaled_adamw(layer, M, steps, lr, betas, eps, wd, damping):
    """A plain re-statement of the documented scaled-AdamW update, for comparison."""
    A, B = layer.A.detach().clone(), layer.B.detach().clone()
    m = {"A": torch.zeros_like(A), "B": torch.zeros_like(B)}
    v = {"A": torch.zeros_like(A), "B": torch.zeros_like(B)}
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    for t in range(1, steps + 1):
        D = B @ A - M
        gA = torch.linalg.inv(B.T @ B + damping * eye) @ (B.T @ D)
        gB = (D @ A.T) @ torch.linalg.inv(A @ A.T + damping * eye)
        new = {}
        for key, p, g in (("A", A, gA), ("B", B, gB)):
            m[key] = betas[0] * m[key] + (1 - betas[0]) * g
            v[key] = betas[1] * v[key] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[key] / (1 - betas[0] ** t), v[key] / (1 - betas[1] ** t)
            new[key] = p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        A, B = new["A"], new["B"]
    return A, B


def test_scaled_adamw_matches_the_documented_update() -> None:
    layer, M = factor_layer(), target()
    hyper = dict(lr=0.05, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1, damping=0.01)
    expected_A, expected_B = reference_scaled_adamw(
        layer, M, 4, hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["damping"])
    opt = ScaledAdamW(layer, **hyper)
    for _ in range(4):
        backward_factorisation(layer, M)
        opt.step()
    torch.testing.assert_close(layer.A.detach(), expected_A)
    torch.testing.assert_close(layer.B.detach(), expected_B)


def test_scaled_adamw_with_identity_gram_matches_torch_adamw() -> None:
    # Orthonormal rows of A and columns of B make both Gram matrices I: the step must be AdamW's.
    a = factor_layer(6, 5, 2)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
        a.B.copy_(q)
        q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
        a.A.copy_(q.T)
    b, M = copy.deepcopy(a), target()
    ours = ScaledAdamW(a, lr=0.01, damping=0.0, weight_decay=0.1)
    theirs = torch.optim.AdamW([b.A, b.B], lr=0.01, weight_decay=0.1)
    for layer, opt in ((a, ours), (b, theirs)):
        backward_factorisation(layer, M)
        opt.step()
    torch.testing.assert_close(a.A, b.A)
    torch.testing.assert_close(a.B, b.B)


# --- invariance to rescaling the factors --------------------------------------------------------

def trajectory(layer: LoRALinear, M: torch.Tensor, opt: torch.optim.Optimizer, steps: int) -> list[torch.Tensor]:
    products = []
    for _ in range(steps):
        backward_factorisation(layer, M)
        opt.step()
        products.append(layer.delta_weight().detach().clone())
    return products


def rescaled(layer: LoRALinear, S: torch.Tensor) -> LoRALinear:
    other = copy.deepcopy(layer)
    with torch.no_grad():
        other.A.copy_(S @ layer.A)
        other.B.copy_(layer.B @ torch.linalg.inv(S))
    return other


def test_scaled_gd_trajectory_of_BA_is_invariant_to_rescaling() -> None:
    layer, M = factor_layer(8, 7, 2), target(8, 7)
    S = torch.tensor([[3.0, 1.0], [0.5, 0.2]], dtype=torch.float64)  # invertible, far from orthogonal
    other = rescaled(layer, S)
    torch.testing.assert_close(other.delta_weight(), layer.delta_weight())
    first = trajectory(layer, M, ScaledGD(layer, lr=0.2, damping=0.0), 15)
    second = trajectory(other, M, ScaledGD(other, lr=0.2, damping=0.0), 15)
    for p, q in zip(first, second):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)
    # The same rescaling changes plain gradient descent's trajectory (so the check above can fail).
    layer2, other2 = copy.deepcopy(layer), rescaled(layer, S)
    with torch.no_grad():
        layer2.A.copy_(factor_layer(8, 7, 2).A)
        layer2.B.copy_(factor_layer(8, 7, 2).B)
    other2 = rescaled(layer2, S)
    plain1 = trajectory(layer2, M, torch.optim.SGD([layer2.A, layer2.B], lr=0.01), 5)
    plain2 = trajectory(other2, M, torch.optim.SGD([other2.A, other2.B], lr=0.01), 5)
    assert (plain1[-1] - plain2[-1]).abs().max() > 1e-3


def test_scaled_gd_converges_fast_on_an_ill_conditioned_factorisation() -> None:
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(15, 3, generator=g, dtype=torch.float64))
    M = (U * torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)) @ V.T  # condition number 100
    errors = {}
    for name in ("scaled", "plain"):
        torch.manual_seed(0)
        layer = LoRALinear(nn.Linear(15, 20, bias=False).double(), r=3, alpha=3)  # LoRA start: B = 0
        with torch.no_grad():
            layer.base.weight.zero_()
        opt = ScaledGD(layer, lr=0.5) if name == "scaled" else torch.optim.SGD([layer.A, layer.B], lr=0.5)
        trajectory(layer, M, opt, 100)
        errors[name] = ((layer.delta_weight() - M).norm() / M.norm()).item()
    assert errors["scaled"] < 1e-8
    assert errors["plain"] > 1e-4


# --- the B = 0 start and singular Gram matrices -------------------------------------------------

def zero_B_layer() -> LoRALinear:
    layer = factor_layer()
    with torch.no_grad():
        layer.B.zero_()
    return layer


def test_b_zero_start_with_default_damping() -> None:
    layer, M = zero_B_layer(), target()
    A0 = layer.A.detach().clone()
    backward_factorisation(layer, M)
    gB = layer.B.grad.clone()
    assert torch.count_nonzero(layer.A.grad) == 0  # ∇_A = Bᵀ(...) = 0 at B = 0
    ScaledGD(layer, lr=0.5).step()
    assert torch.equal(layer.A.detach(), A0)
    expected_B = -0.5 * gB @ torch.linalg.inv(A0 @ A0.T + 1e-6 * torch.eye(2, dtype=A0.dtype))
    torch.testing.assert_close(layer.B.detach(), expected_B)


def test_singular_gram_with_zero_damping_falls_back_to_the_gradient() -> None:
    layer, M = zero_B_layer(), target()
    backward_factorisation(layer, M)
    dA, dB = preconditioned_gradients(layer.A, layer.B, layer.A.grad, layer.B.grad, 0.0)
    assert torch.equal(dA, layer.A.grad)  # BᵀB = 0 is singular: identity fallback
    assert torch.isfinite(dB).all()
    ScaledGD(layer, lr=0.5, damping=0.0).step()
    assert torch.isfinite(layer.A).all() and torch.isfinite(layer.B).all()


def test_singular_gram_raise_changes_nothing() -> None:
    model = two_layer_model()
    second = model[2]
    with torch.no_grad():
        second.B.zero_()
    model(torch.randn(4, 8)).pow(2).mean().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = ScaledGD(model, lr=0.1, damping=0.0, on_singular="raise")
    with pytest.raises(ValueError, match=r"layer '2'.*singular.*damping > 0"):
        opt.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although the step raised"


# --- pairing from the model, and bad input --------------------------------------------------------

def test_pairs_come_from_the_layers() -> None:
    model = two_layer_model()
    layers = dict(lora_layers(model))
    for source in (model, lora_layers(model), list(reversed(list(lora_layers(model)))), [model[0], model[2]]):
        opt = ScaledGD(source, lr=0.1)
        for group in opt.param_groups:
            A, B = group["params"]
            if group["layer"] in layers:
                layer = layers[group["layer"]]
            else:  # bare layers are named by position
                layer = [model[0], model[2]][int(group["layer"])]
            assert A is layer.A and B is layer.B


def test_a_layer_listed_twice_is_paired_once() -> None:
    model = two_layer_model()
    opt = ScaledGD([model[0], model[0], model[2]], lr=0.1)
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("make_source", [
    lambda m: m.parameters(),
    lambda m: [m[0].A, m[0].B],
    lambda m: m[0].A,
    lambda m: 3,
])
def test_plain_parameters_are_refused(make_source) -> None:
    model = two_layer_model()
    with pytest.raises(TypeError, match="lora_layers"):
        ScaledGD(make_source(model), lr=0.1)


def test_model_without_lora_is_refused() -> None:
    with pytest.raises(ValueError, match="inject_lora"):
        ScaledAdamW(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no LoRA layers"):
        ScaledGD([], lr=0.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(damping=-1e-3), "damping"),
    (dict(damping=float("nan")), "damping"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1.0), "lr"),
    (dict(on_singular="pinv"), "on_singular"),
])
def test_bad_hyperparameters_scaled_gd(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ScaledGD(two_layer_model(), **{"lr": 0.1, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(0.9,)), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(damping=-1.0), "damping"),
])
def test_bad_hyperparameters_scaled_adamw(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ScaledAdamW(two_layer_model(), **kwargs)


def test_bad_param_groups() -> None:
    model = two_layer_model()
    opt = ScaledGD(model[0], lr=0.1)
    with pytest.raises(ValueError, match="exactly one LoRA layer"):
        opt.add_param_group({"params": [model[2].A, model[2].B, model[2].base.weight]})
    with pytest.raises(ValueError, match="not a LoRA pair"):
        opt.add_param_group({"params": [model[2].B, model[2].A]})  # swapped: (3, 2) and (2, 6)
    with pytest.raises(ValueError, match="damping"):
        opt.add_param_group({"params": [model[2].A, model[2].B], "damping": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group(lora_param_groups(model[2])[0])
    assert len(opt.param_groups) == 2


# --- state_dict, closures, training with fit -------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs", [(ScaledGD, dict(lr=0.05)), (ScaledAdamW, dict(lr=0.01))])
def test_state_dict_round_trip(cls, kwargs) -> None:
    X = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
    model = two_layer_model()
    opt = cls(model, **kwargs)
    opt.param_groups[1]["lr"] = 0.02  # a per-layer setting must survive too

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            m(X).pow(2).mean().backward()
            o.step()

    train(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, 3)

    restored = two_layer_model(seed=1)  # different weights, overwritten by the load
    restored.load_state_dict(saved_model)
    new_opt = cls(restored, **kwargs)
    new_opt.load_state_dict(saved_opt)
    assert new_opt.param_groups[1]["lr"] == 0.02
    assert new_opt.param_groups[1]["layer"] == "2"
    train(restored, new_opt, 3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0)


def test_step_with_closure_returns_the_loss() -> None:
    model = two_layer_model()
    X = torch.randn(4, 8)
    opt = ScaledAdamW(model, lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = model(X).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and loss.ndim == 0


@pytest.mark.parametrize("cls, lr", [(ScaledGD, 0.05), (ScaledAdamW, 0.01)])
def test_training_with_fit_lowers_the_loss(cls, lr) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 8, generator=g)
    teacher = nn.Linear(8, 3)
    y = teacher(X).detach()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    inject_lora(model, "0", r=2, match="exact")
    history = fit(model, X, y, loss_fn=nn.functional.mse_loss, optimizer=cls(model, lr=lr),
                  epochs=20, batch_size=32, generator=g, progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


def test_low_precision_factors_keep_their_dtype() -> None:
    layer = factor_layer(dtype=torch.bfloat16)
    (layer.delta_weight().pow(2).sum()).backward()
    ScaledGD(layer, lr=0.01).step()
    assert layer.A.dtype == torch.bfloat16 and torch.isfinite(layer.A.float()).all()


# --- every trainable adapter tensor of every variant is trained -------------------------------------------------


@pytest.mark.parametrize("variant", ["dora", "adalora"])
@pytest.mark.parametrize("optimizer", [ScaledGD, ScaledAdamW])
def test_scaled_optimizers_train_every_adapter_tensor(variant, optimizer) -> None:
    from lorakit import LoraConfig, inject_adapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    inject_adapter(model, LoraConfig(r=2, target_modules=("0", "2"), match="exact", variant=variant))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.B.normal_(0, 0.1)
            if variant == "adalora":
                layer.E.fill_(0.5)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grouped = {id(p) for g in lora_param_groups(model) for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    opt = optimizer(model, lr=0.05)
    model(torch.randn(16, 6)).square().mean().backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])}
    assert moved == set(trainable), set(trainable) - moved  # m (DoRA) / E (AdaLoRA) included


def test_extras_take_the_plain_step() -> None:
    from lorakit import LoraConfig, inject_adapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    inject_adapter(model, LoraConfig(r=2, target_modules="0", variant="dora"))
    m0 = model[0].m.detach().clone()
    opt = ScaledGD(model, lr=0.1)
    model(torch.randn(8, 6)).square().mean().backward()
    grad = model[0].m.grad.clone()
    opt.step()
    assert torch.allclose(model[0].m, m0 - 0.1 * grad)


def test_scaled_adamw_matches_torch_adamw_on_extras() -> None:
    # adam_direction is torch.optim.AdamW's arithmetic: on an unpreconditioned tensor the steps agree.
    from lorakit import LoraConfig, inject_adapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    inject_adapter(model, LoraConfig(r=2, target_modules="0", variant="dora"))
    m = model[0].m
    twin = nn.Parameter(m.detach().clone())
    ours, ref = ScaledAdamW(model, lr=0.01, weight_decay=0.1), torch.optim.AdamW([twin], lr=0.01, weight_decay=0.1)
    X = torch.randn(8, 6)
    for _ in range(3):
        ours.zero_grad()
        model(X).square().mean().backward()
        twin.grad = m.grad.clone()
        ours.step()
        ref.step()
        assert torch.allclose(m, twin, atol=1e-7, rtol=0)
