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
