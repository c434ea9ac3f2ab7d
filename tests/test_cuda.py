"""lorakit on a GPU, as a Colab reader with a GPU runtime would use it. Skipped where CUDA is absent.

The book itself runs on CPU; these tests check that nothing in lorakit assumes it: parameters are
created on the base layer's device, the fused layer matches plain autograd on CUDA, bf16 autocast
takes the general path, and merging, adapter files and the LoRA variants work on GPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.variants import DoRALinear, QLoRALinear, wrap_linears

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).to(CUDA)


def test_fused_layer_on_cuda_matches_plain_autograd(monkeypatch) -> None:
    monkeypatch.setattr(lk.layer, "FUSE_MIN_OUTPUT_ELEMENTS", 0)  # fuse this small layer too
    torch.manual_seed(0)
    layer = lk.LoRALinear(nn.Linear(64, 48).to(CUDA).double(), r=4, alpha=8)
    with torch.no_grad():
        layer.B.normal_()
    assert layer.A.device.type == "cuda" and layer._fusable(torch.zeros(1, 64, device=CUDA, dtype=torch.float64))
    x = torch.randn(3, 5, 64, device=CUDA, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    A = layer.A.detach().clone().requires_grad_(True)
    B = layer.B.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    (layer.base(xr) + layer.scaling * (xr @ A.t()) @ B.t()).square().sum().backward()
    for ours, theirs in ((x.grad, xr.grad), (layer.A.grad, A.grad), (layer.B.grad, B.grad)):
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_bf16_autocast_takes_the_general_path_and_trains() -> None:
    model = mlp()
    lk.inject_lora(model, ["0", "2"], r=4, alpha=8, match="exact")
    x = torch.randn(32, 64, device=CUDA)
    assert not model[0]._fusable(x) or not torch.is_autocast_enabled("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not model[0]._fusable(x)
        loss = model(x).float().square().mean()
    loss.backward()
    assert model[0].B.grad is not None and model[0].B.grad.dtype == torch.float32


def test_train_merge_and_adapter_round_trip_on_cuda(tmp_path) -> None:
    model = mlp()
    lk.inject_lora(model, ["0", "2"], r=4, alpha=8, match="exact")
    X, y = torch.randn(256, 64, device=CUDA), torch.randint(0, 10, (256,), device=CUDA)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    history = lk.fit(model, X, y, loss_fn=nn.functional.cross_entropy, optimizer=opt, epochs=3, batch_size=32,
                     generator=torch.Generator().manual_seed(0), progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    model.eval()
    with torch.no_grad():
        before = model(X)
        path = lk.save_adapter(model, tmp_path / "adapter.safetensors")
        other = mlp()
        lk.inject_lora(other, ["0", "2"], r=4, alpha=8, match="exact")
        lk.load_adapter(other, path)
        assert torch.allclose(other.eval()(X), before, atol=1e-5)
        lk.merge_lora(model)
        assert torch.allclose(model(X), before, atol=1e-4)


def test_variants_build_on_the_gpu() -> None:
    for factory in (lambda lin: DoRALinear(lin, r=4), lambda lin: QLoRALinear(lin, r=4)):
        model = mlp()
        wrap_linears(model, ["0"], factory, match="exact")
        out = model(torch.randn(8, 64, device=CUDA))
        out.sum().backward()
        assert out.device.type == "cuda" and model[0].A.grad is not None
