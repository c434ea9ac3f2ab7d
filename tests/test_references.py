"""lorakit's variants checked numerically against the reference implementations that install here.

peft (DoRA forward and gradients, PiSSA's initialisation, LoRA+ groups, DoRA and modules_to_save
adapter files; rsLoRA is checked layer by layer in test_peft_compat.py), galore-torch (one GaLore
optimizer step) and bitsandbytes (the NF4 code book, 4-bit quantise/dequantise on CPU). These are
test dependencies (the ``test`` extra); each test skips when its reference is not installed.
Where lorakit deliberately differs, the test pins the difference.
"""

import copy
import sys
from pathlib import Path

import pytest

# scripts/setup.sh installs galore-torch and bitsandbytes here, outside the venv's site-packages, so
# that the notebooks' peft never imports bitsandbytes (requirements/references.txt says why).
REFERENCE_PACKAGES = Path(__file__).resolve().parents[1] / ".venv" / "reference-packages"
if REFERENCE_PACKAGES.is_dir():
    sys.path.append(str(REFERENCE_PACKAGES))

import torch
from torch import nn

import lorakit as lk
import lorakit.inject
import lorakit.peft_compat
from lorakit.variants import GaLoreAdamW, dequantize_nf4, loraplus_param_groups, nf4_table, quantize_nf4


@pytest.mark.skipif(not REFERENCE_PACKAGES.is_dir(), reason="no .venv/reference-packages: run make setup")
@pytest.mark.parametrize("name", ["galore_torch", "bitsandbytes"])
def test_reference_packages_are_installed(name):
    """Where setup ran, every reference is there: its checks must run, not skip."""
    import importlib.util

    assert importlib.util.find_spec(name) is not None, f"{name} missing from {REFERENCE_PACKAGES}: run make setup"


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 3))


X = torch.randn(16, 12, generator=torch.Generator().manual_seed(5))


# --- DoRA: forward and gradients against peft's use_dora -------------------------------------------------------


def dora_pair(detach_norm=True, rslora=False):
    """A lorakit DoRA model and peft's, same base, same (trained-looking) A, B, m."""
    peft = pytest.importorskip("peft")
    ours = mlp()
    theirs = peft.get_peft_model(mlp(), peft.LoraConfig(r=3, lora_alpha=5, target_modules=["0", "2"],
                                                        use_dora=True, use_rslora=rslora))
    lk.inject_adapter(ours, lk.LoraConfig(r=3, alpha=5, target_modules=("0", "2"), match="exact", rslora=rslora,
                                          variant="dora", variant_options={"detach_norm": detach_norm}))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name in ("0", "2"):
            layer, peft_layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
            layer.A.copy_(torch.randn(layer.A.shape, generator=g) * 0.3)
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.3)
            layer.m.mul_(1 + 0.2 * torch.rand(layer.m.shape, generator=g))
            peft_layer.lora_A["default"].weight.copy_(layer.A)
            peft_layer.lora_B["default"].weight.copy_(layer.B)
            peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.m)
    return ours, theirs


def grads(model, names):
    model.zero_grad()
    model(X).square().sum().backward()
    params = dict(model.named_parameters())
    return [params[n].grad.clone() for n in names]


OUR_NAMES = ["0.A", "0.B", "0.m", "2.A", "2.B", "2.m"]
PEFT_NAMES = [f"base_model.model.{layer}.{kind}.default.weight" for layer in ("0", "2")
              for kind in ("lora_A", "lora_B", "lora_magnitude_vector")]


@pytest.mark.parametrize("rslora", [False, True])
def test_dora_forward_and_gradients_match_peft(rslora):
    ours, theirs = dora_pair(rslora=rslora)
    assert torch.allclose(ours(X), theirs(X), atol=1e-6, rtol=1e-5)
    for a, b in zip(grads(ours, OUR_NAMES), grads(theirs, PEFT_NAMES)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_undetached_dora_has_the_same_forward_but_other_gradients_than_peft():
    # Pinned difference: detach_norm=False differentiates through ‖W + ΔW‖; peft (and DoRA §4.3) do not.
    ours, theirs = dora_pair(detach_norm=False)
    assert torch.allclose(ours(X), theirs(X), atol=1e-6, rtol=1e-5)
    ours_g, peft_g = grads(ours, OUR_NAMES), grads(theirs, PEFT_NAMES)
    assert torch.allclose(ours_g[2], peft_g[2], atol=1e-5, rtol=1e-4)  # m's gradient is the same either way
    assert not torch.allclose(ours_g[1], peft_g[1], atol=1e-4, rtol=1e-3)  # B's is not


def test_dora_adapter_files_cross_between_lorakit_and_peft(tmp_path):
    peft = pytest.importorskip("peft")
    ours, theirs = dora_pair()
    expected = ours(X)
    directory = lk.peft_compat.save_peft_adapter(ours, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(mlp(), str(directory))
    assert torch.allclose(loaded(X), expected, atol=1e-6, rtol=1e-5)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = mlp()
    lk.peft_compat.load_peft_adapter(back, tmp_path / "theirs")
    assert type(back[0]).__name__ == "DoRALinear"
    assert torch.allclose(back(X), theirs(X), atol=1e-6, rtol=1e-5)


def test_modules_to_save_cross_between_lorakit_and_peft(tmp_path):
    peft = pytest.importorskip("peft")
    ours = mlp()
    lk.inject_adapter(ours, lk.LoraConfig(r=2, target_modules=("0",), match="exact", modules_to_save=("4",)))
    with torch.no_grad():
        ours[0].B.normal_()
        ours[4].weight.add_(1.0)  # the head trained in full
    directory = lk.peft_compat.save_peft_adapter(ours, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(mlp(), str(directory))
    assert torch.allclose(loaded(X), ours(X), atol=1e-6)
    loaded.save_pretrained(str(tmp_path / "theirs"))
    back = mlp()
    lk.peft_compat.load_peft_adapter(back, tmp_path / "theirs")
    assert torch.allclose(back(X), ours(X), atol=1e-6)
    assert back[4].weight.requires_grad and list(lk.inject.modules_to_save(back)) == ["4"]


@pytest.mark.parametrize("variant", ["pissa", "adalora", "qlora"])
def test_variants_peft_lora_files_cannot_hold_are_refused(tmp_path, variant):
    model = mlp()
    lk.inject_adapter(model, lk.LoraConfig(r=2, target_modules=("0",), match="exact", variant=variant))
    with pytest.raises(ValueError, match=f"variant '{variant}'.*lorakit.save_adapter"):
        lk.peft_compat.save_peft_adapter(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- PiSSA's initialisation against peft's init_lora_weights="pissa" --------------------------------------------


@pytest.mark.parametrize("r, alpha", [(2, 2.0), (4, 8.0)])
def test_pissa_initialisation_matches_peft(r, alpha):
    peft = pytest.importorskip("peft")
    ours = mlp()
    W = ours[0].weight.detach().clone()
    lk.inject_adapter(ours, lk.LoraConfig(r=r, alpha=alpha, target_modules=("0",), match="exact", variant="pissa"))
    theirs = peft.get_peft_model(mlp(), peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"],
                                                        init_lora_weights="pissa"))
    layer = theirs.base_model.model[0]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    # Singular vectors are defined up to sign: compare the sign-free quantities.
    assert torch.allclose(ours[0].B @ ours[0].A, B @ A, atol=1e-5)
    assert torch.allclose(ours[0].A.abs(), A.abs(), atol=1e-5) and torch.allclose(ours[0].B.abs(), B.abs(), atol=1e-5)
    assert torch.allclose(ours[0].base.weight, layer.base_layer.weight, atol=1e-5)  # the residual
    assert torch.allclose(ours[0].merged_weight(), W, atol=1e-6)
    assert torch.allclose(ours(X), theirs(X), atol=1e-5)


# --- LoRA+ against peft's create_loraplus_optimizer -------------------------------------------------------------


def test_loraplus_groups_and_learning_rates_match_peft():
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer

    theirs = peft.get_peft_model(mlp(), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]))
    ours = mlp()
    lk.inject_lora(ours, ["0", "2"], r=2, match="exact")
    peft_opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0)
    names = {id(p): n for n, p in theirs.named_parameters()}
    peft_groups = {g["lr"]: sorted(names[id(p)].split(".")[2] + "." + names[id(p)].split(".")[3] for p in g["params"])
                   for g in peft_opt.param_groups if g["params"]}
    our_names = {id(p): n for n, p in ours.named_parameters()}
    our_groups = {g["lr"]: sorted(our_names[id(p)] for p in g["params"]) for g in loraplus_param_groups(ours, 1e-3, 16.0)}
    translated = {lr: sorted(n.replace("lora_A", "A").replace("lora_B", "B") for n in group)
                  for lr, group in peft_groups.items()}
    assert translated == our_groups == {1e-3: ["0.A", "2.A"], 16e-3: ["0.B", "2.B"]}


def test_loraplus_differs_from_peft_only_on_1d_tensors():
    # Pinned difference: peft puts every 1-D trainable tensor (here DoRA's m) in B's fast group; lorakit only B.
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer

    ours, theirs = dora_pair()
    peft_opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0)
    fast = {n for n, p in theirs.named_parameters() for g in peft_opt.param_groups if g["lr"] == 16e-3
            for q in g["params"] if q is p}
    assert "base_model.model.0.lora_magnitude_vector.default.weight" in fast
    slow_ours = {id(p) for p in loraplus_param_groups(ours, 1e-3, 16.0)[0]["params"]}
    assert id(ours[0].m) in slow_ours


# --- GaLore against galore-torch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_galore_steps_match_galore_torch(shape):
    galore_torch = pytest.importorskip("galore_torch")
    torch.manual_seed(0)
    W0 = torch.randn(shape)
    ours_p, ref_p = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ours = GaLoreAdamW([{"params": [ours_p], "rank": 2}], update_proj_gap=2, scale=0.25, **kw)
    ref = galore_torch.GaLoreAdamW([{"params": [ref_p], "rank": 2, "update_proj_gap": 2, "scale": 0.25,
                                     "proj_type": "std"}], no_deprecation_warning=True, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # crosses two projector refreshes
        grad = torch.randn(shape, generator=g)
        ours_p.grad, ref_p.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
        # eps: galore-torch adds it before the bias correction (HF AdamW), lorakit after (torch AdamW).
        assert torch.allclose(ours_p, ref_p, atol=1e-6, rtol=1e-5)


def test_galore_square_weight_is_projected_on_the_other_side_than_galore_torch():
    # Pinned difference: for out == in lorakit projects on the left (P from U), galore-torch on the right.
    galore_torch = pytest.importorskip("galore_torch")
    W = nn.Parameter(torch.randn(6, 6))
    ours = GaLoreAdamW([{"params": [W], "rank": 2}])
    W.grad = torch.randn(6, 6)
    ours.step()
    assert ours.state[W]["exp_avg"].shape == (2, 6)
    ref_W = nn.Parameter(W.detach().clone())
    ref = galore_torch.GaLoreAdamW([{"params": [ref_W], "rank": 2, "update_proj_gap": 200, "scale": 0.25,
                                     "proj_type": "std"}], no_deprecation_warning=True)
    ref_W.grad = W.grad.clone()
    ref.step()
    assert ref.state[ref_W]["exp_avg"].shape == (6, 2)


# --- NF4 against bitsandbytes ---------------------------------------------------------------------------------------


def bnb_functional():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    return F


def test_nf4_code_book_matches_bitsandbytes():
    F = bnb_functional()
    theirs = F.get_4bit_type("nf4", device="cpu").float()
    assert torch.allclose(nf4_table(), theirs, atol=1e-6)


@pytest.mark.parametrize("block_size", [64, 128])
def test_nf4_quantise_dequantise_matches_bitsandbytes_on_cpu(block_size):
    F = bnb_functional()
    torch.manual_seed(0)
    # Rows a whole number of blocks long: bitsandbytes 0.50.2's CPU path mis-dequantises a (16, 96) tensor
    # with 64-blocks (max error 2.0 against lorakit's 0.39: blocks that straddle rows come back wrong).
    W = torch.randn(16, 128)
    try:
        packed, state = F.quantize_4bit(W, blocksize=block_size, quant_type="nf4")
        theirs = F.dequantize_4bit(packed, state, quant_type="nf4")
    except (RuntimeError, NotImplementedError) as error:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"bitsandbytes has no CPU 4-bit path in this build ({error}); the code book is compared above")
    ours = dequantize_nf4(quantize_nf4(W, block_size=block_size))
    assert torch.allclose(state.absmax.float(), quantize_nf4(W, block_size=block_size).absmax, atol=0)
    # The same code for every entry: the dequantised values agree to the code book's float rounding
    # (bnb's table is stored constants, lorakit's computed from normal quantiles: they differ by ≤ 1e-6).
    assert (ours - theirs).abs().max().item() < 1e-5


# --- QLoRA through the whole pipeline ------------------------------------------------------------------------------


def test_merge_is_all_or_nothing_across_lora_and_qlora():
    model = mlp()
    lk.inject_adapter(model, lk.LoraConfig(r=2, target_modules=("0",), match="exact"))
    lk.inject_adapter(model, lk.LoraConfig(r=2, target_modules=("2",), match="exact", variant="qlora"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="'2' \\(QLoRALinear\\) cannot merge.*no layer of the model was merged"):
        lk.merge_lora(model)
    assert not model[0].merged
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no layer of the model was merged"):
        lk.merge_and_unload(model)
    assert type(model[0]).__name__ == "LoRALinear"
