"""lorakit ↔ 🤗 peft: the same layer math, and adapter files that each side can load."""

import copy
import json

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.peft_compat import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_peft_adapter,
    peft_target_names,
    read_peft_config,
    save_peft_adapter,
)

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import Linear as PeftLoraLinear  # noqa: E402


class Tiny(nn.Module):
    """A two-block model with names like a transformer's (query/value/dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 8), "dense": nn.Linear(8, 6)})
            for _ in range(2)
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block["query"](x) + block["value"](x))
            x = torch.relu(block["dense"](x))
            x = nn.functional.pad(x, (0, 2))
        return self.head(x[..., :6])


def base_model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def randomise_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every A and B non-zero values, as after training (B = 0 would hide orientation bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [p for n, p in model.named_parameters() if "lora" in n or n.endswith((".A", ".B"))]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def train_lorakit(model: nn.Module, steps: int = 20) -> None:
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()


X_TEST = torch.randn(5, 8, generator=torch.Generator().manual_seed(7))


# --- layer-level equivalence -------------------------------------------------------------------


def peft_layer(base: nn.Linear, r: int, alpha: float, rslora: bool = False) -> PeftLoraLinear:
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, use_rslora=rslora)
    return PeftLoraLinear(base, "default", config=config, r=r, lora_alpha=alpha)


@pytest.mark.parametrize("r, alpha, rslora", [(1, 1.0, False), (4, 8.0, False), (4, 8.0, True), (8, 3.0, True)])
def test_layer_matches_peft_forward_and_gradients(r, alpha, rslora):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    ours = lk.LoRALinear(copy.deepcopy(base), r=r, alpha=alpha, rslora=rslora)
    theirs = peft_layer(copy.deepcopy(base), r=r, alpha=alpha, rslora=rslora)
    assert theirs.scaling["default"] == pytest.approx(ours.scaling)
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(r, 16, generator=g), torch.randn(12, r, generator=g)
    with torch.no_grad():
        ours.A.copy_(A)
        ours.B.copy_(B)
        theirs.lora_A["default"].weight.copy_(A)
        theirs.lora_B["default"].weight.copy_(B)
    x1 = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    gy = torch.randn(3, 5, 12, generator=g)
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(ours.A.grad, theirs.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.B.grad, theirs.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_default_inits_agree_in_distribution():
    # peft's init_lora_weights=True is kaiming-uniform(a=√5) for A and zeros for B, like lorakit's default.
    torch.manual_seed(0)
    ours = lk.LoRALinear(nn.Linear(400, 300), r=16)
    theirs = peft_layer(nn.Linear(400, 300), r=16, alpha=16)
    a1, a2 = ours.A.detach(), theirs.lora_A["default"].weight.detach()
    assert torch.count_nonzero(ours.B) == 0 and torch.count_nonzero(theirs.lora_B["default"].weight) == 0
    assert a1.abs().max() <= 1 / 400**0.5 and a2.abs().max() <= 1 / 400**0.5
    assert abs(a1.std().item() - a2.std().item()) < 0.002


# --- files: lorakit → peft ---------------------------------------------------------------------


@pytest.mark.parametrize("rslora", [False, True])
def test_lorakit_adapter_loads_in_peft_with_same_outputs(tmp_path, rslora):
    model = base_model()
    lk.inject_lora(model, ["query", "value"], r=4, alpha=8, rslora=rslora)
    train_lorakit(model)
    assert torch.count_nonzero(model.blocks[0]["value"].B) > 0
    save_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["use_rslora"] is rslora

    peft_model = PeftModel.from_pretrained(base_model(), str(tmp_path / "adapter"))
    layer = peft_model.base_model.model.blocks[1]["query"]
    torch.testing.assert_close(layer.lora_A["default"].weight, model.blocks[1]["query"].A)
    torch.testing.assert_close(layer.lora_B["default"].weight, model.blocks[1]["query"].B)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(X_TEST), model(X_TEST), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(base_model()(X_TEST), model(X_TEST), atol=1e-3)  # the adapter matters


def test_saved_keys_are_peft_names_and_orientation(tmp_path):
    from safetensors.torch import load_file

    model = base_model()
    lk.inject_lora(model, "dense", r=2)
    save_peft_adapter(model, tmp_path)
    shapes = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / WEIGHTS_NAME)).items()}
    assert shapes == {
        "base_model.model.blocks.0.dense.lora_A.weight": (2, 8),
        "base_model.model.blocks.0.dense.lora_B.weight": (6, 2),
        "base_model.model.blocks.1.dense.lora_A.weight": (2, 8),
        "base_model.model.blocks.1.dense.lora_B.weight": (6, 2),
    }


# --- files: peft → lorakit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets, rslora, dropout",
    [(["query", "value"], False, 0.0), (["dense", "head"], True, 0.1), (r"blocks\.\d\.(query|dense)", False, 0.0)],
)
def test_peft_adapter_loads_in_lorakit_with_same_outputs(tmp_path, targets, rslora, dropout):
    peft_model = get_peft_model(
        base_model(), LoraConfig(r=3, lora_alpha=6, target_modules=targets, use_rslora=rslora, lora_dropout=dropout)
    )
    randomise_lora(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    peft_model.eval()

    ours = base_model()
    names = load_peft_adapter(ours, tmp_path)
    assert names == [n for n, m in peft_model.base_model.model.named_modules() if isinstance(m, PeftLoraLinear)]
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(X_TEST), peft_model(X_TEST), atol=1e-6, rtol=1e-5)
    assert all(layer.rslora is rslora and layer.r == 3 and layer.alpha == 6 for _, layer in lk.lora_layers(ours))


def test_round_trip_lorakit_peft_lorakit(tmp_path):
    model = base_model()
    lk.inject_lora(model, ["query", "value"], r=3, alpha=3)
    train_lorakit(model)
    save_peft_adapter(model, tmp_path / "a")
    peft_model = PeftModel.from_pretrained(base_model(), str(tmp_path / "a"))
    peft_model.save_pretrained(str(tmp_path / "b"))
    back = base_model()
    load_peft_adapter(back, tmp_path / "b")
    for (n1, l1), (n2, l2) in zip(lk.lora_layers(model), lk.lora_layers(back)):
        assert n1 == n2 and torch.equal(l1.A, l2.A) and torch.equal(l1.B, l2.B)


def test_every_peft_default_is_accepted(tmp_path):
    # All fields of a default LoraConfig (whatever this peft version adds) must mean "plain LoRA".
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query"]).to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config, default=str))
    assert read_peft_config(tmp_path)["r"] == 2


# --- rejected configs and files ----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("bias", "all"),
        ("rank_pattern", {"query": 8}),
        ("alpha_pattern", {"query": 8}),
        ("fan_in_fan_out", True),
        ("layers_to_transform", [0]),
        ("init_lora_weights", "pissa"),
        ("some_future_option", 3),
    ],
)
def test_unsupported_config_fields_are_rejected_and_change_nothing(tmp_path, field, value):
    peft_model = get_peft_model(base_model(), LoraConfig(r=2, lora_alpha=2, target_modules=["query"]))
    peft_model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config[field] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=field):
        load_peft_adapter(model, tmp_path)
    assert not list(lk.lora_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_above_min_in_out_is_rejected_and_changes_nothing(tmp_path):
    # peft accepts r=4 on the 6→3 head; lorakit's layer requires r <= min(in, out).
    get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=4, target_modules=["head"])).save_pretrained(str(tmp_path))
    model = base_model()
    with pytest.raises(ValueError, match=r"r <= min\(in, out\)"):
        load_peft_adapter(model, tmp_path)
    assert isinstance(model.head, nn.Linear) and not list(lk.lora_layers(model))


def test_other_peft_types_are_rejected(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "IA3", "target_modules": ["query"]}))
    with pytest.raises(ValueError, match="peft_type='IA3'"):
        read_peft_config(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_peft_adapter(base_model(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["query"]}))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_peft_adapter(base_model(), tmp_path)


def test_wrong_architecture_is_reported_before_any_change(tmp_path):
    model = base_model()
    lk.inject_lora(model, "query", r=2)
    save_peft_adapter(model, tmp_path)
    other = nn.Sequential()
    other.add_module("blocks", nn.ModuleList([nn.ModuleDict({"query": nn.Linear(8, 5)})]))
    with pytest.raises(ValueError, match="has shape"):
        load_peft_adapter(other, tmp_path)
    assert isinstance(other.blocks[0]["query"], nn.Linear)
    with pytest.raises(ValueError, match="matches no module"):
        load_peft_adapter(nn.Sequential(nn.Linear(8, 8)), tmp_path)


def test_loading_into_a_model_with_lora_is_refused(tmp_path):
    model = base_model()
    lk.inject_lora(model, "query", r=2)
    save_peft_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="already carries LoRA"):
        load_peft_adapter(model, tmp_path)


def test_mixed_ranks_cannot_be_exported(tmp_path):
    model = base_model()
    lk.inject_lora(model, "query", r=2)
    lk.inject_lora(model, "value", r=4)
    with pytest.raises(ValueError, match="mixes"):
        save_peft_adapter(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_no_lora_layers_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_peft_adapter(base_model(), tmp_path)


def test_peft_matching_rule():
    model = base_model()
    assert peft_target_names(model, ["query", "absent"]) == ["blocks.0.query", "blocks.1.query"]
    assert peft_target_names(model, r".*\.1\.value") == ["blocks.1.value"]
    assert peft_target_names(model, "query") == []  # a string is a full-match regex, as in peft


def test_core_imports_without_peft():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['peft'] = None; sys.modules['transformers'] = None\n"
        "import lorakit, lorakit.peft_compat, lorakit.book.bench\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_B_is_stored_row_major_r_by_out_and_keeps_that_layout():
    # The speed layout (see lorakit.layer): B is (out, r) but B.t() is a contiguous (r, out) tensor.
    layer = lk.LoRALinear(nn.Linear(16, 12), r=4)
    assert layer.B.shape == (12, 4) and layer.B.t().is_contiguous()
    layer = layer.to(torch.float64)
    assert layer.B.dtype == torch.float64 and layer.B.t().is_contiguous()
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(3, 16, dtype=torch.float64)).sum().backward()
    opt.step()
    assert layer.B.t().is_contiguous() and torch.count_nonzero(layer.B) > 0


# --- bad adapter directories are refused cleanly ----------------------------------------------------------------


def peft_dir(tmp_path):
    get_peft_model(base_model(), LoraConfig(r=2, lora_alpha=2, target_modules=["query"])).save_pretrained(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("text, message", [
    ('{"peft_type": "LORA", "r": 2,', "is not valid JSON"),
    ("[1, 2, 3]", "holds a JSON list, not an object"),
    ("", "is not valid JSON"),
])
def test_broken_config_json_is_refused_naming_the_file(tmp_path, text, message):
    directory = peft_dir(tmp_path)
    (directory / CONFIG_NAME).write_text(text)
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"{CONFIG_NAME} {message}.*save_pretrained"):
        load_peft_adapter(model, directory)
    assert not list(lk.lora_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("how", ["truncated", "garbage", "nan"])
def test_broken_weights_are_refused_naming_the_file(tmp_path, how):
    from safetensors.torch import load_file, save_file

    directory = peft_dir(tmp_path)
    path = directory / WEIGHTS_NAME
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "garbage":
        path.write_bytes(b"not safetensors" * 5)
    else:
        tensors = load_file(str(path))
        key = sorted(tensors)[0]
        tensors[key][0, 0] = float("nan")
        save_file(tensors, str(path))
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    message = "NaN/Inf" if how == "nan" else "is not a readable safetensors file"
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME} .*{message}|{WEIGHTS_NAME} {message}"):
        load_peft_adapter(model, directory)
    assert not list(lk.lora_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dora_without_its_magnitude_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    peft_model = get_peft_model(base_model(), LoraConfig(r=2, lora_alpha=2, target_modules=["query"], use_dora=True))
    peft_model.save_pretrained(str(tmp_path))
    tensors = {k: v for k, v in load_file(str(tmp_path / WEIGHTS_NAME)).items() if "magnitude" not in k}
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    model = base_model()
    with pytest.raises(ValueError, match="lora_magnitude_vector' is missing"):
        load_peft_adapter(model, tmp_path)
    assert not list(lk.lora_layers(model))


def test_invalid_regex_target_in_a_peft_config_names_the_pattern(tmp_path):
    directory = peft_dir(tmp_path)
    config = json.loads((directory / CONFIG_NAME).read_text())
    config["target_modules"] = "blocks.(0"
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="target_modules='blocks.\\(0' is not a valid regular expression"):
        load_peft_adapter(base_model(), directory)


def test_undetached_dora_is_not_exported(tmp_path):
    model = base_model()
    lk.inject_adapter(model, lk.LoraConfig(r=2, target_modules=["query"], variant="dora",
                                           variant_options={"detach_norm": False}))
    with pytest.raises(ValueError, match="detach_norm=False"):
        save_peft_adapter(model, tmp_path / "out")
