"""The shared comparison: every method runs, counts what it should, and equal settings give equal results."""

import pytest
import torch

from lorakit.book.lowrank import quickstart_mlp
from lorakit.book.compare import METHODS, WHERE_IT_APPLIES, effective_weight, prepare_variant, run_variant


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(160, 784, generator=g), torch.randint(0, 10, (160,), generator=g)
    return X, y, X[:64], y[:64]


def fresh():
    torch.manual_seed(1)
    return quickstart_mlp()


def run(method, task, **kwargs):
    X, y, Xt, yt = task
    kwargs.setdefault("r", 4)
    return run_variant(method, X, y, Xt, yt, epochs=1, batch_size=16, model=fresh(), progress=False, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_reports(method, task):
    res = run(method, task)
    r = 4
    lora_params = r * (784 + 512) + r * (512 + 512)
    expected_trainable = {
        "frozen": 0, "full": 669_706, "galore": 669_706, "dora": lora_params + 512 + 512,
        "adalora": 6 * (784 + 512) + 6 * (512 + 512) + 12,
    }.get(method, lora_params)
    assert res.trainable == expected_trainable
    assert res.steps == (0 if method == "frozen" else 10)
    assert method in WHERE_IT_APPLIES
    if method in ("lora", "lora+", "rslora", "qlora"):
        assert max(res.update_ranks.values()) <= r
    if method == "pissa":
        assert max(res.update_ranks.values()) <= 2 * r
    if method not in ("frozen", "full", "galore"):
        assert res.optimizer_bytes < 10 * 4 * res.trainable  # two fp32 moments (+ step counters)


def test_galore_state_is_far_below_full_adam(task):
    assert run("galore", task).optimizer_bytes < 0.2 * run("full", task).optimizer_bytes


def test_same_scale_gives_same_result(task):
    # At r = 1, alpha/r == alpha/sqrt(r): LoRA and rsLoRA must agree exactly (same init, same batches).
    a, b = run("lora", task, r=1, alpha=8), run("rslora", task, r=1, alpha=8)
    assert a.accuracy == b.accuracy and a.train_loss == b.train_loss


def test_caller_random_state_is_untouched(task):
    X, y, Xt, yt = task
    model = fresh()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_variant("lora", X, y, Xt, yt, r=2, epochs=1, batch_size=16, model=model, progress=False)
    # the adapter init is drawn inside fork_rng; the data order uses its own generator
    assert torch.equal(torch.rand(3), expected)


def test_effective_weight_and_bad_input():
    model = fresh()
    assert torch.equal(effective_weight(model[0]), model[0].weight.detach())
    with pytest.raises(TypeError, match="nn.Linear"):
        effective_weight(torch.nn.ReLU())
    with pytest.raises(ValueError, match="unknown"):
        prepare_variant("vera", fresh())
    with pytest.raises(ValueError, match="total_steps"):
        prepare_variant("lora", fresh(), total_steps=5)


@pytest.fixture(scope="module")
def chapter_task():
    """The Chapter 11 task, cut down: 600 rotated FashionMNIST training images, 1000 test images."""
    from lorakit.book import transfer

    X, y, Xt, yt = transfer.downstream_task(n_train=600)
    return X, y, Xt[:1000], yt[:1000], transfer.pretrained_mlp(progress=False)


@pytest.fixture(scope="module")
def chapter_results(chapter_task):
    import copy

    X, y, Xt, yt, base = chapter_task
    return {m: run_variant(m, X, y, Xt, yt, r=4, lr=3e-3, epochs=4, batch_size=25, model=copy.deepcopy(base),
                           progress=False) for m in METHODS}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "frozen"])
def test_every_method_beats_the_frozen_model_on_the_chapter_task(chapter_results, method):
    # The pretrained model is near chance on rotated images (≈ 4 %); 96 steps of any method must learn the task.
    frozen = chapter_results["frozen"].accuracy
    assert frozen < 0.1
    assert chapter_results[method].accuracy > frozen + 0.3, (method, chapter_results[method].accuracy)


def test_methods_that_update_only_the_adapter_leave_the_frozen_parts_alone(chapter_results):
    # LoRA-family updates live in the two adapted layers; the frozen model's update is exactly zero.
    assert all(n == 0 for n in chapter_results["frozen"].update_norms.values())
    for method in ("lora", "dora", "pissa", "qlora"):
        assert all(n > 0 for n in chapter_results[method].update_norms.values())
