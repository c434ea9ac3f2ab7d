"""Adapter files: round trip, atomic writes, and refusal of adapters that do not fit."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lorakit import inject_lora, load_adapter, lora_layers, merge_lora, save_adapter


def make_model(seed=0, r=2, targets=("0", "2")):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    torch.manual_seed(100)  # same base weights for every adapter
    inject_lora(model, list(targets), r=r, match="exact")
    return model


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.A.copy_(torch.randn(layer.A.shape, generator=g))
            layer.B.copy_(torch.randn(layer.B.shape, generator=g))


def test_round_trip_gives_identical_outputs(tmp_path):
    source = make_model()
    randomize(source, 1)
    path = save_adapter(source, tmp_path / "a.safetensors")
    target = make_model()
    load_adapter(target, path)
    x = torch.randn(3, 6)
    assert torch.equal(target(x), source(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_adapter_holds_only_the_factors(tmp_path):
    model = make_model()
    path = save_adapter(model, tmp_path / "a.safetensors")
    from safetensors.torch import load_file

    assert sorted(load_file(path)) == ["0.A", "0.B", "2.A", "2.B"]


def test_switching_adapters_on_one_base(tmp_path):
    model = make_model()
    randomize(model, 1)
    first = save_adapter(model, tmp_path / "first.safetensors")
    randomize(model, 2)
    second = save_adapter(model, tmp_path / "second.safetensors")
    x = torch.randn(3, 6)
    out_second = model(x)
    load_adapter(model, first)
    out_first = model(x)
    assert not torch.allclose(out_first, out_second)
    load_adapter(model, second)
    assert torch.equal(model(x), out_second)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wrong_rank_is_refused_and_nothing_changes(tmp_path):
    path = save_adapter(make_model(r=2), tmp_path / "a.safetensors")
    model = make_model(r=3)
    before = snapshot(model)
    with pytest.raises(ValueError, match="(?s)nothing was loaded.*'r': 2"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def test_wrong_layer_names_are_refused(tmp_path):
    path = save_adapter(make_model(targets=("0",)), tmp_path / "a.safetensors")
    model = make_model(targets=("0", "2"))
    before = snapshot(model)
    with pytest.raises(ValueError, match="model has LoRA layers the adapter lacks: \\['2'\\]"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def test_wrong_shape_is_refused(tmp_path):
    model = make_model()
    path = save_adapter(model, tmp_path / "a.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    tensors["2.B"] = torch.zeros(7, 2)
    save_file(tensors, str(path), metadata=metadata)
    before = snapshot(model)
    with pytest.raises(ValueError, match="'2.B' has shape \\(7, 2\\)"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def test_loading_into_merged_model_is_refused(tmp_path):
    model = make_model()
    path = save_adapter(model, tmp_path / "a.safetensors")
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge"):
        load_adapter(model, path)


def test_foreign_file_and_missing_file(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match="not a lorakit adapter"):
        load_adapter(make_model(), foreign)
    with pytest.raises(FileNotFoundError, match="save_adapter"):
        load_adapter(make_model(), tmp_path / "missing.safetensors")


def test_saving_without_lora_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(nn.Linear(2, 2), tmp_path / "a.safetensors")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import lorakit.adapter as adapter

    target = tmp_path / "a.safetensors"
    model = make_model()
    save_adapter(model, target)
    good = target.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(adapter, "save_file", broken_save)
    randomize(model, 3)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# --- every variant round-trips; files are checked ------------------------------------------------------------------

import json  # noqa: E402

from lorakit import LoraConfig, adapter_state_dict, inject_adapter  # noqa: E402

VARIANT_CONFIGS = {
    "lora": dict(variant="lora"),
    "rslora": dict(variant="lora", rslora=True),
    "dora": dict(variant="dora"),
    "dora-undetached": dict(variant="dora", variant_options={"detach_norm": False}),
    "pissa": dict(variant="pissa"),
    "adalora": dict(variant="adalora"),
    "qlora": dict(variant="qlora", variant_options={"double_quant": True, "block_size": 32}),
}


def base_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def trained_variant(kind, seed=7):
    model = base_model()
    config = LoraConfig(r=2, target_modules=("0", "2"), match="exact", modules_to_save=("4",), **VARIANT_CONFIGS[kind])
    inject_adapter(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move every trainable tensor, as training would
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model, config


@pytest.mark.parametrize("kind", sorted(VARIANT_CONFIGS))
def test_every_variant_round_trips_exactly(tmp_path, kind):
    source, config = trained_variant(kind)
    path = save_adapter(source, tmp_path / "a.safetensors")
    x = torch.randn(4, 6)
    expected = source(x)
    # 1. into a model injected with the same config
    injected = base_model()
    inject_adapter(injected, config)
    assert load_adapter(injected, path) == ["0", "2"]
    assert torch.equal(injected(x), expected)
    # 2. into the plain base model: the layers come from the stored config
    plain = base_model()
    assert load_adapter(plain, path) == ["0", "2"]
    assert type(plain[0]) is type(source[0])
    assert torch.equal(plain(x), expected)
    assert {n for n, p in plain.named_parameters() if p.requires_grad} == {
        n for n, p in source.named_parameters() if p.requires_grad}


def test_file_holds_every_adapter_tensor_and_its_config(tmp_path):
    model, config = trained_variant("dora")
    from safetensors import safe_open

    path = save_adapter(model, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys, meta = sorted(handle.keys()), handle.metadata()
    assert keys == ["0.A", "0.B", "0.m", "2.A", "2.B", "2.m", "modules_to_save.4.bias", "modules_to_save.4.weight"]
    assert [LoraConfig.from_dict(c) for c in json.loads(meta["configs"])] == [config]
    assert sorted(adapter_state_dict(base_model()) ) == []


@pytest.mark.parametrize("saved,into", [("dora", "lora"), ("lora", "dora"), ("pissa", "lora"), ("adalora", "lora")])
def test_adapter_of_one_variant_is_refused_by_another(tmp_path, saved, into):
    path = save_adapter(trained_variant(saved)[0], tmp_path / "a.safetensors")
    model, _ = trained_variant(into)
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"(?s)nothing was loaded.*holds a '{saved}' layer"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def corrupt(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all" * 3)
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("into", ["injected", "plain"])
def test_corrupt_file_is_refused_naming_it(tmp_path, how, into):
    model = make_model() if into == "injected" else base_model()
    path = save_adapter(make_model(), tmp_path / "a.safetensors")
    corrupt(path, how)
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"{path.name} is not a readable safetensors file.*save_adapter"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def rewrite(path, tensors=None, **metadata_changes):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata.update(metadata_changes)
    save_file(tensors if tensors is not None else load_file(path), str(path), metadata=metadata)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused(tmp_path, value):
    from safetensors.torch import load_file

    path = save_adapter(make_model(), tmp_path / "a.safetensors")
    tensors = load_file(path)
    tensors["2.B"][0, 0] = value
    rewrite(path, tensors)
    for model in (make_model(), base_model()):
        before = snapshot(model)
        with pytest.raises(ValueError, match="NaN/Inf values in tensor\\(s\\) 2.B"):
            load_adapter(model, path)
        assert_unchanged(model, before)


@pytest.mark.parametrize("change", [{"configs": "{not json"}, {"layers": "[1, 2]"},
                                    {"configs": json.dumps([{"r": 2, "target_modules": ["0"], "variant": "lorra"}])}])
def test_bad_metadata_is_refused_naming_the_file(tmp_path, change):
    path = save_adapter(make_model(), tmp_path / "a.safetensors")
    rewrite(path, **change)
    model = base_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="a.safetensors has unreadable adapter metadata"):
        load_adapter(model, path)
    assert_unchanged(model, before)


def test_plain_base_of_another_architecture_is_refused_unchanged(tmp_path):
    path = save_adapter(trained_variant("pissa")[0], tmp_path / "a.safetensors")
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    before = snapshot(other)
    with pytest.raises(ValueError, match="nothing was loaded"):
        load_adapter(other, path)
    assert_unchanged(other, before)  # PiSSA's rewrite of the base weight was undone


def test_first_format_files_still_load(tmp_path):
    source = make_model()
    randomize(source, 1)
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(source).items()}
    layers = {n: {"r": 2, "alpha": 1.0, "rslora": False} for n in ("0", "2")}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata={"format": "lorakit-adapter/1", "layers": json.dumps(layers)})
    plain = base_model()
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    load_adapter(plain, path)
    assert plain[0].alpha == 1.0
    x = torch.randn(3, 6)
    for layer in (source[0], source[2]):
        layer.alpha = 1.0
    assert torch.allclose(plain(x), source(x))


def test_modules_to_save_must_match_when_loading_into_an_injected_model(tmp_path):
    source, config = trained_variant("lora")
    path = save_adapter(source, tmp_path / "a.safetensors")
    model = base_model()
    inject_adapter(model, LoraConfig(r=2, target_modules=("0", "2"), match="exact"))  # no modules_to_save
    before = snapshot(model)
    with pytest.raises(ValueError, match="saves modules \\['4'\\], the model trains \\[\\] in full"):
        load_adapter(model, path)
    assert_unchanged(model, before)
