"""LoraConfig, the variant registry, the one injection path, and peft's names (merge_and_unload, unload, disable)."""

import copy
import json

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit import LoraConfig, inject_adapter
from lorakit.layer import LoRALinear, register_variant, variant_class, variant_names


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


X = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))


# --- the config --------------------------------------------------------------------------------------------------


def test_alpha_defaults_to_r_everywhere():
    assert LoraConfig(r=4, target_modules="q").alpha == 4.0
    assert LoRALinear(nn.Linear(6, 5), r=3).alpha == 3.0
    model = mlp()
    lk.inject_lora(model, "0", r=2, match="exact")
    assert model[0].scaling == 1.0
    from lorakit.variants import AdaLoRALinear, DoRALinear, PiSSALinear, QLoRALinear

    for cls in (DoRALinear, PiSSALinear, AdaLoRALinear, QLoRALinear):
        assert cls(nn.Linear(64, 8), r=2).alpha == 2.0, cls


@pytest.mark.parametrize("variant", variant_names())
def test_json_round_trip_for_every_variant(variant):
    config = LoraConfig(r=2, alpha=3.0, target_modules=["a", "b"], match="suffix", dropout=0.0 if variant == "dora" else 0.1,
                        variant=variant, modules_to_save=["head"])
    text = json.dumps(config.to_dict())
    assert LoraConfig.from_dict(json.loads(text)) == config
    assert hash(LoraConfig.from_dict(json.loads(text))) == hash(config)


def test_config_is_frozen():
    config = LoraConfig(r=2, target_modules="q")
    with pytest.raises(AttributeError):
        config.r = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(r=0), ValueError, "choose r >= 1"),
        (dict(r=2.5), TypeError, "must be an int"),
        (dict(alpha=-1.0), ValueError, "alpha=-1.0 must be a finite number > 0"),
        (dict(alpha=float("nan")), ValueError, "alpha=nan"),
        (dict(match="glob"), ValueError, "match='glob' is unknown"),
        (dict(dropout=1.0), ValueError, "dropout=1.0 must be in \\[0, 1\\)"),
        (dict(target_modules=()), ValueError, "no target_modules given"),
        (dict(target_modules=[3]), TypeError, "non-empty strings"),
        (dict(variant="vera"), ValueError, "variant='vera' is unknown: choose one of 'adalora', 'dora'"),
        (dict(variant="dora", variant_options={"block_size": 64}), ValueError, "has no option 'block_size'"),
        (dict(variant="pissa", init_A="gaussian"), ValueError, "init_A='gaussian' is not available for variant 'pissa'"),
        (dict(init_A="xavier"), ValueError, "one of 'kaiming', 'gaussian'"),
        (dict(match="regex", target_modules=["blocks.(0"]), ValueError, "target 'blocks.\\(0' \\(match='regex'\\) is not a valid"),
        (dict(rslora="yes"), TypeError, "rslora='yes' must be True or False"),
    ],
)
def test_validation_in_one_place(kwargs, error, message):
    kwargs = {"r": 2, "target_modules": ("q",), **kwargs}
    with pytest.raises(error, match=message):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("data, message", [([1, 2], "JSON object"), ({"r": 2, "target_modules": ["q"], "x": 1}, "no field"),
                                           ({"r": "two", "target_modules": ["q"]}, "invalid LoraConfig")])
def test_from_dict_refuses_bad_data(data, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig.from_dict(data)


# --- registry and injection ---------------------------------------------------------------------------------------


def test_registry_names_the_layer_classes():
    assert {name: variant_class(name).__name__ for name in variant_names()} == {
        "adalora": "AdaLoRALinear", "dora": "DoRALinear", "lora": "LoRALinear", "pissa": "PiSSALinear",
        "qlora": "QLoRALinear"}


def test_a_registered_variant_is_injected_by_name():
    @register_variant
    class ScaledTwice(LoRALinear):
        VARIANT = "test-twice"

        @property
        def scaling(self) -> float:
            return 2 * super().scaling

    try:
        model = mlp()
        assert inject_adapter(model, LoraConfig(r=1, target_modules="2", match="exact", variant="test-twice")) == ["2"]
        assert type(model[2]) is ScaledTwice and model[2].scaling == 2.0
    finally:
        from lorakit import layer

        layer._VARIANTS.pop("test-twice")


@pytest.mark.parametrize("variant, kwargs, message", [
    ("dora", dict(dropout=0.1), "no input dropout"),
    ("pissa", dict(init_A="gaussian"), "PiSSALinear cannot honour init_A='gaussian'"),
    ("adalora", dict(init_A="kaiming"), "AdaLoRALinear cannot honour init_A='kaiming'"),
])
def test_every_variant_takes_the_common_arguments_and_refuses_what_it_cannot_honour(variant, kwargs, message):
    cls = variant_class(variant)
    layer = cls(nn.Linear(64, 8), 2, 4.0, rslora=True)  # r, alpha, rslora: accepted by every variant
    assert layer.scaling == 4.0 / 2 ** 0.5
    with pytest.raises(ValueError, match=message):
        cls(nn.Linear(64, 8), 2, **kwargs)


def test_invalid_regex_target_names_the_pattern_and_changes_nothing():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="target '\\[0' \\(match='regex'\\) is not a valid regular expression.*re.escape"):
        lk.inject_lora(model, "[0", r=1, match="regex")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_failed_injection_changes_nothing_even_for_pissa():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="layer '4'.*rank r=4"):
        inject_adapter(model, LoraConfig(r=4, target_modules=("0", "4"), match="exact", variant="pissa"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not list(lk.lora_layers(model))


def test_modules_to_save_train_beside_the_adapter_and_may_not_overlap():
    model = mlp()
    inject_adapter(model, LoraConfig(r=1, target_modules="0", match="exact", modules_to_save=["4"]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.A", "0.B", "4.weight", "4.bias"]
    with pytest.raises(ValueError, match="overlap"):
        inject_adapter(mlp(), LoraConfig(r=1, target_modules="2", match="exact", modules_to_save=["2"]))


def test_wrap_linears_goes_through_the_registry():
    from lorakit.variants import wrap_linears

    model = mlp()
    assert wrap_linears(model, ["0", "2"], "qlora", r=2, match="exact", variant_options={"double_quant": True}) == ["0", "2"]
    assert type(model[0]).__name__ == "QLoRALinear" and model[0].double_quant


# --- peft's names -----------------------------------------------------------------------------------------------


def trained(variant="lora"):
    model = mlp()
    inject_adapter(model, LoraConfig(r=2, target_modules=("0", "2"), match="exact", variant=variant))
    with torch.no_grad():
        for _, layer in lk.lora_layers(model):
            layer.B.normal_()
    return model


@pytest.mark.parametrize("variant", ["lora", "dora", "adalora", "qlora"])
def test_disable_adapters_runs_the_base_model_unchanged(variant):
    base = mlp()
    model = trained(variant)
    if variant == "adalora":
        with torch.no_grad():
            model[0].E.fill_(1.0)
    adapted = model(X)
    with lk.disable_adapters(model) as same:
        assert same is model
        plain = model(X)
    if variant == "qlora":  # the base is the 4-bit copy of W
        assert torch.allclose(plain, base(X), atol=0.2)
    else:
        assert torch.equal(plain, base(X))
    assert torch.equal(model(X), adapted)
    assert not any(layer.disabled for _, layer in lk.lora_layers(model))


def test_disable_adapters_refuses_merged_and_pissa_layers():
    model = trained()
    lk.merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with lk.disable_adapters(model):
            pass
    with pytest.raises(ValueError, match="PiSSA"):
        with lk.disable_adapters(trained("pissa")):
            pass


def test_unload_removes_adapters_without_merging():
    base = mlp()
    model = trained()
    lk.merge_lora(model)  # merged layers are unmerged first
    out = lk.unload(model)
    assert out is model and type(model[0]) is nn.Linear
    assert torch.allclose(model(X), base(X), atol=1e-6)


@pytest.mark.parametrize("variant", ["lora", "dora", "pissa", "adalora"])
def test_merge_and_unload_bakes_the_adapter_in(variant):
    model = trained(variant)
    expected = model(X)
    assert lk.merge_and_unload(model) is model
    assert type(model[0]) is nn.Linear and not list(lk.lora_layers(model))
    assert torch.allclose(model(X), expected, atol=1e-5)
    legacy = trained(variant)
    assert torch.allclose(lk.unload_lora(legacy)(X), expected, atol=1e-5)  # today's name still works


def test_config_copies_and_pickles_and_its_options_are_read_only():
    import pickle

    config = LoraConfig(r=2, target_modules="q", variant="dora", variant_options={"detach_norm": False})
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))
    with pytest.raises(TypeError):
        config.variant_options["detach_norm"] = True  # type: ignore[index]
