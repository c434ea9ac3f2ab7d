"""NF4 / QLoRA: the quantile table, packing, the round-trip error bound, memory, LoRA on top."""

import pytest
import torch
from torch import nn

from lorakit.variants import NF4Linear, QLoRALinear, dequantize_nf4, nf4_table, quantize_nf4

# The NF4 values as published in QLoRA's code (bitsandbytes), for an independent check.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def test_table_matches_published_values():
    table = nf4_table()
    assert table.shape == (16,) and table.dtype == torch.float32
    torch.testing.assert_close(table, torch.tensor(PUBLISHED_NF4), atol=1e-6, rtol=0)
    assert torch.all(table[1:] > table[:-1])


def test_nf4_beats_a_uniform_4bit_grid_on_normal_weights():
    torch.manual_seed(0)
    W = torch.randn(256, 256)
    q = quantize_nf4(W)
    idx = torch.stack([q.codes >> 4, q.codes & 15], 1).flatten()
    p = torch.bincount(idx.long(), minlength=16).float() / idx.numel()
    entropy = -(p * p.log2()).sum()
    assert entropy > 3.85  # of at most 4 bits: the codes are used nearly equally often
    nf4_mse = (dequantize_nf4(q) - W).pow(2).mean()
    # the same block-wise absmax scheme with 16 evenly spaced levels in [-1, 1] (int4-like)
    blocks = W.view(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    grid = torch.linspace(-1, 1, 16)
    nearest = grid[(blocks / absmax).unsqueeze(-1).sub(grid).abs().argmin(-1)]
    uniform_mse = (nearest * absmax - blocks).pow(2).mean()
    assert nf4_mse < 0.9 * uniform_mse  # measured: 0.0084 vs 0.0101


@pytest.mark.parametrize("double_quant", [False, True])
def test_round_trip_error_bound(double_quant):
    torch.manual_seed(0)
    W = torch.randn(33, 70)  # 2310 numbers: the last block is padded
    q = quantize_nf4(W, block_size=64, double_quant=double_quant)
    W_hat = dequantize_nf4(q)
    assert W_hat.shape == W.shape
    table = nf4_table()
    half_gap = ((table[1:] - table[:-1]) / 2).max()
    flat = torch.nn.functional.pad(W.flatten(), (0, (-W.numel()) % 64)).view(-1, 64)
    absmax = flat.abs().amax(1)
    scale_err = (q.block_absmax() - absmax).abs()
    bound = (absmax * half_gap + scale_err + 1e-6).repeat_interleave(64)[: W.numel()].view(W.shape)
    assert torch.all((W_hat - W).abs() <= bound)
    if not double_quant:
        assert scale_err.max() == 0
    # the block maximum is stored exactly up to the scale error
    assert (W_hat.abs().max() - W.abs().max()).abs() <= scale_err.max() + 1e-6


def test_memory_accounting():
    W = torch.randn(512, 1024)
    plain = quantize_nf4(W)
    dq = quantize_nf4(W, double_quant=True)
    n = W.numel()
    assert plain.nbytes == n // 2 + 4 * n // 64
    assert plain.bits_per_parameter == 4.5
    n_blocks = n // 64
    assert dq.nbytes == n // 2 + n_blocks + 4 * (n_blocks // 256) + 4
    assert 4.12 < dq.bits_per_parameter < 4.13


def test_qlora_layer_trains_only_lora_and_refuses_merge():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    layer = QLoRALinear(lin, r=4, alpha=4)
    assert isinstance(layer.base, NF4Linear)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A", "B"]
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), x @ dequantize_nf4(layer.base.quantized).T + lin.bias)
    layer(x).sum().backward()
    assert layer.B.grad is not None
    with torch.no_grad():
        layer.B.normal_()
    merged = layer.to_linear()
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="to_linear"):
        layer.merge()


def test_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.arange(10))
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(torch.randn(10), block_size=3)
    with pytest.raises(ValueError, match="finite"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="NF4Tensor"):
        dequantize_nf4(torch.randn(3))
    with pytest.raises(TypeError, match="nn.Linear"):
        NF4Linear(nn.Conv1d(1, 1, 1))
