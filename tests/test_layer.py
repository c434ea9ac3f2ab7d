"""LoRALinear: the invariants that define it, and its answers to bad input."""

import math

import pytest
import torch
from torch import nn

from lorakit import LoRALinear
from lorakit import layer as layer_module

# merged == unmerged: one float32 rounding of W + ΔW per entry, accumulated over `in` terms.
MERGE_ATOL = 1e-5


def make_layer(r=4, alpha=8.0, in_features=16, out_features=12, **kwargs):
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(in_features, out_features), r=r, alpha=alpha, **kwargs)


def trained(layer):
    """The layer with a non-zero B, as after some training."""
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_b_is_zero_so_output_equals_base():
    layer = make_layer()
    x = torch.randn(5, 16)
    assert torch.count_nonzero(layer.B) == 0
    assert torch.equal(layer(x), layer.base(x))


def test_shapes_and_scaling():
    layer = make_layer(r=4, alpha=8.0)
    assert layer.A.shape == (4, 16) and layer.B.shape == (12, 4)
    assert layer.scaling == 2.0
    assert make_layer(r=4, alpha=8.0, rslora=True).scaling == 4.0
    assert layer(torch.randn(2, 3, 16)).shape == (2, 3, 12)


def test_only_A_and_B_train_and_count_is_r_times_in_plus_out():
    layer = make_layer(r=3, in_features=10, out_features=7)
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"A", "B"}
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 3 * (10 + 7)


def test_forward_matches_formula():
    layer = trained(make_layer())
    x = torch.randn(5, 16)
    expected = x @ (layer.base.weight + layer.scaling * layer.B @ layer.A).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_A_and_B():
    layer = trained(make_layer())
    layer(torch.randn(5, 16)).sum().backward()
    assert layer.A.grad is not None and layer.B.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_init_modes():
    kaiming = make_layer(r=4, in_features=100)
    bound = 1 / math.sqrt(100)
    assert kaiming.A.abs().max() <= bound
    gaussian = make_layer(r=4, in_features=100, out_features=100, init_A="gaussian")
    assert abs(gaussian.A.std().item() - 1 / 4) < 0.03


def test_merged_equals_unmerged_and_unmerge_restores():
    layer = trained(make_layer())
    x = torch.randn(7, 16)
    W0 = layer.base.weight.clone()
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, atol=MERGE_ATOL, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=MERGE_ATOL, rtol=0)


def test_merge_in_bfloat16_sums_in_float32():
    layer = trained(make_layer()).to(torch.bfloat16)
    expected = (layer.base.weight.float() + layer.scaling * layer.B.float() @ layer.A.float()).to(torch.bfloat16)
    layer.merge()
    assert torch.equal(layer.base.weight, expected)


def test_eval_and_train_do_not_merge():
    layer = trained(make_layer())
    W0 = layer.base.weight.clone()
    layer.eval()
    layer.train()
    assert not layer.merged and torch.equal(layer.base.weight, W0)


def test_merge_twice_raises_and_changes_nothing():
    layer = trained(make_layer())
    layer.merge()
    W1 = layer.base.weight.clone()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, W1) and layer.merged


def test_unmerge_unmerged_raises():
    layer = trained(make_layer())
    W0 = layer.base.weight.clone()
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, W0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_merge_refuses_non_finite(bad):
    layer = trained(make_layer())
    with torch.no_grad():
        layer.B[0, 0] = bad
    W0 = layer.base.weight.clone()
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.merge()
    assert torch.equal(layer.base.weight, W0) and not layer.merged


def test_merge_refuses_overflow_in_half_precision():
    layer = trained(make_layer()).to(torch.float16)
    with torch.no_grad():
        layer.A.fill_(200.0)
        layer.B.fill_(200.0)
    W0 = layer.base.weight.clone()
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.merge()
    assert torch.equal(layer.base.weight, W0)


@pytest.mark.parametrize("r", [0, -1, 13])
def test_bad_rank(r):
    with pytest.raises(ValueError, match="rank r="):
        make_layer(r=r)


def test_rank_must_be_int():
    with pytest.raises(TypeError, match="must be an int"):
        make_layer(r=2.0)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha="):
        make_layer(alpha=alpha)


def test_bad_dropout_and_init():
    with pytest.raises(ValueError, match="dropout="):
        make_layer(dropout=1.0)
    with pytest.raises(ValueError, match="init_A="):
        make_layer(init_A="xavier")


def test_wrapping_a_non_linear_is_a_type_error():
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), r=1)


def test_failed_construction_leaves_base_trainable():
    base = nn.Linear(4, 4)
    with pytest.raises(ValueError):
        LoRALinear(base, r=9)
    assert all(p.requires_grad for p in base.parameters())


def test_dropout_only_on_lora_branch():
    layer = trained(make_layer(dropout=0.5))
    x = torch.randn(64, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + layer.delta_weight()).T + layer.base.bias,
                               atol=1e-5, rtol=1e-5)
    layer.train()
    torch.manual_seed(1)
    assert not torch.allclose(layer(x), layer(x))  # two dropout masks
    # The base path never sees dropout: with B = 0, training mode output equals base exactly.
    layer.reset_lora_parameters()
    assert torch.equal(layer(x), layer.base(x))


# --- the fused forward/backward (lorakit.layer._FusedLoRALinear) ---------------------------------

def reference_step(layer, x, grad_out):
    """Output and gradients of the textbook expression, by plain autograd on copies of the tensors."""
    W, b = layer.base.weight.detach(), layer.base.bias
    A = layer.A.detach().clone().requires_grad_(True)
    B = layer.B.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y = nn.functional.linear(xr, W, None if b is None else b.detach()) + layer.scaling * (xr @ A.t()) @ B.t()
    y.backward(grad_out)
    return y.detach(), xr.grad, A.grad, B.grad


@pytest.fixture
def always_fuse(monkeypatch):
    """Fuse even the tiny layers of these tests (the real threshold skips small inputs)."""
    monkeypatch.setattr(layer_module, "FUSE_MIN_OUTPUT_ELEMENTS", 0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (16,)])
def test_fused_path_matches_plain_autograd(always_fuse, bias, shape):
    torch.manual_seed(1)
    layer = trained(LoRALinear(nn.Linear(16, 12, bias=bias).double(), r=3, alpha=5.0))
    assert layer._fusable(torch.zeros(2, 16, dtype=torch.float64))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(*shape[:-1], 12, dtype=torch.float64)
    y = layer(x)
    y.backward(grad_out)
    y_ref, dx, dA, dB = reference_step(layer, x, grad_out)
    assert y.shape == y_ref.shape
    for ours, theirs in ((y, y_ref), (x.grad, dx), (layer.A.grad, dA), (layer.B.grad, dB)):
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert layer.B.grad.stride() == layer.B.stride()  # the optimizer sees grads laid out like B
    assert layer.base.weight.grad is None


def test_fused_path_computes_only_the_gradients_asked_for(always_fuse):
    layer = trained(make_layer())
    layer.A.requires_grad_(False)  # e.g. LoRA-FA: A frozen
    x = torch.randn(4, 16)  # an input that needs no gradient (the first layer)
    layer(x).sum().backward()
    assert layer.A.grad is None and layer.B.grad is not None
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.base(x) + layer.scaling * x @ layer.A.t() @ layer.B.t(), atol=1e-6)


def test_general_path_where_fusing_does_not_apply(always_fuse):
    layer = trained(make_layer(dropout=0.5))
    x = torch.randn(4, 16)
    assert not layer._fusable(x)  # dropout in training: the branch sees a dropped-out x
    layer.eval()
    assert layer._fusable(x)  # dropout is off in eval
    layer.base.weight.requires_grad_(True)
    assert not layer._fusable(x)  # a trainable base needs its own gradient
    layer(x).sum().backward()
    assert layer.base.weight.grad is not None
    assert not layer._fusable(torch.randn(4, 16, dtype=torch.float64))  # mixed dtypes: let torch promote or refuse


def test_fusing_only_pays_for_large_inputs_with_gradients():
    layer = LoRALinear(nn.Linear(64, 64), r=4)
    small, large = torch.randn(8, 64), torch.randn(layer_module.FUSE_MIN_OUTPUT_ELEMENTS // 64, 64)
    assert not layer._fusable(small) and layer._fusable(large)
    with torch.no_grad():
        assert not layer._fusable(large)  # inference: no custom-function overhead
