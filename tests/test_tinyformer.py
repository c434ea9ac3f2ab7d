"""Tests for lorakit.book.tinyformer: the Part IV TinyViT, its tasks, pretraining and weight file."""

import importlib.util
from dataclasses import asdict

import pytest
import torch

import lorakit as lk
from lorakit.book import tinyformer as tf

SMALL = tf.TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16)
needs_data = pytest.mark.skipif(importlib.util.find_spec("lorakit.book.data") is None, reason="lorakit.book.data not available")


def test_config_validation():
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        tf.TinyViTConfig(patch_size=5)
    with pytest.raises(ValueError, match="heads=3 does not divide dim=64"):
        tf.TinyViTConfig(heads=3)
    with pytest.raises(ValueError, match="depth=0"):
        tf.TinyViTConfig(depth=0)


def test_patchify_layout():
    image = torch.arange(784.0).reshape(1, 784)
    patches = tf.patchify(image)
    assert patches.shape == (1, 16, 49)
    grid = image.reshape(28, 28)
    assert torch.equal(patches[0, 0], grid[:7, :7].reshape(-1))  # top-left
    assert torch.equal(patches[0, 1], grid[:7, 7:14].reshape(-1))  # next to the right
    assert torch.equal(patches[0, 4], grid[7:14, :7].reshape(-1))  # second row
    with pytest.raises(ValueError, match="flattened"):
        tf.patchify(torch.zeros(2, 100))


def test_tinyvit_shapes_names_and_parameter_count():
    model = tf.TinyViT()
    assert model(torch.rand(3, 784)).shape == (3, 5)
    names = {n for n, _ in model.named_modules()}
    assert {"blocks.0.attn.q_proj", "blocks.1.attn.o_proj", "blocks.1.fc2", "head"} <= names
    d, m, L = 64, 128, 2
    block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    expected = (49 * d + d) + d + 17 * d + L * block + 2 * d + (d * 5 + 5)
    assert lk.count_parameters(model).total == expected


def test_attention_prefix_changes_output_not_shape():
    torch.manual_seed(0)
    attn = tf.Attention(8, 2)
    x = torch.randn(2, 5, 8)
    before = attn(x)
    attn.prefix_k = torch.nn.Parameter(torch.randn(3, 8))
    attn.prefix_v = torch.nn.Parameter(torch.randn(3, 8))
    after = attn(x)
    assert after.shape == before.shape and not torch.allclose(after, before)


def test_reset_head_is_seeded_and_typed():
    a, b = tf.TinyViT(SMALL), tf.TinyViT(SMALL)
    ha = tf.reset_head(a, 3, generator=torch.Generator().manual_seed(1))
    hb = tf.reset_head(b, 3, generator=torch.Generator().manual_seed(1))
    assert ha.weight.shape == (3, 16) and torch.equal(ha.weight, hb.weight) and a.head is ha
    with pytest.raises(TypeError, match="TinyViT"):
        tf.reset_head(torch.nn.Linear(2, 2))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = tf.TinyViT(SMALL)
    path = tf.save_model(model, tmp_path / "m.safetensors", extra={"note": "x"})
    loaded, meta = tf.load_model(path)
    X = torch.rand(2, 784)
    assert torch.equal(loaded(X), model.eval()(X))
    assert meta["note"] == "x" and meta["config"]["dim"] == 16
    with pytest.raises(FileNotFoundError, match="python -m lorakit.book.tinyformer"):
        tf.load_model(tmp_path / "missing.safetensors")


def test_stored_weights_are_small_and_record_their_recipe():
    path = tf.DEFAULT_WEIGHTS
    assert path.is_file(), "run `python -m lorakit.book.tinyformer` to create the pretrained weights"
    assert path.stat().st_size < 2_000_000
    model, meta = tf.load_model(path)
    assert meta["recipe"] == asdict(tf.PretrainRecipe())
    assert meta["config"] == asdict(tf.TinyViTConfig())
    assert 0.8 < meta["pretrain_test_accuracy"] < 1.0
    assert lk.count_parameters(model).total == 71_749
    assert not tf.load_pretrained().training


def test_weight_files_are_byte_for_byte_reproducible(tmp_path):
    torch.manual_seed(0)
    model = tf.TinyViT(SMALL)
    extra = {"recipe": asdict(tf.PretrainRecipe()), "pretrain_test_accuracy": 0.5}
    a = tf.save_model(model, tmp_path / "a.safetensors", extra=extra).read_bytes()
    b = tf.save_model(model, tmp_path / "b.safetensors", extra=extra).read_bytes()
    assert a == b


def test_load_model_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="holds format None, not 'lorakit-tinyvit/1'"):
        tf.load_model(tmp_path / "other.safetensors")


@needs_data
def test_tasks_are_disjoint_relabelled_and_rotated():
    from lorakit.book.data import load_fashion_mnist

    X, y = tf.load_task("downstream", "test")
    assert X.shape == (5000, 784) and X.dtype == torch.float32
    assert torch.equal(torch.bincount(y), torch.full((5,), 1000))
    raw_X, raw_y = load_fashion_mnist("test")
    raw = torch.as_tensor(raw_X)[torch.as_tensor(raw_y) >= 5][0].reshape(28, 28)
    assert torch.equal(X[0].reshape(28, 28), torch.rot90(raw, 1, (0, 1)))
    Xp, yp = tf.load_task("pretrain", "train", 100, seed=3)
    Xp2, _ = tf.load_task("pretrain", "train", 100, seed=3)
    assert Xp.shape == (100, 784) and int(yp.max()) <= 4 and torch.equal(Xp, Xp2)
    with pytest.raises(ValueError, match="task='other'"):
        tf.load_task("other", "train")
    with pytest.raises(ValueError, match="n=0"):
        tf.load_task("pretrain", "train", 0)


@needs_data
def test_pretraining_is_bit_for_bit_reproducible():
    recipe = tf.PretrainRecipe(epochs=1, batch_size=64)
    a, acc_a = tf.pretrain(SMALL, recipe, n_train=256, progress=False)
    b, acc_b = tf.pretrain(SMALL, recipe, n_train=256, progress=False)
    assert acc_a == acc_b
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


@needs_data
def test_downstream_task_is_one_task_of_both_splits():
    task = tf.downstream_task(50, 30, seed=3)
    assert task.X.shape == (50, 784) and task.X_test.shape == (30, 784)
    X, y = tf.load_task("downstream", "train", 50, seed=3)
    assert torch.equal(task.X, X) and torch.equal(task.y, y)
