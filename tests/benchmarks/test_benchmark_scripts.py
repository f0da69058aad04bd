"""The GPU benchmark scripts' CPU paths: they run, and what they report is what they measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_model, profile_prefill, profile_vision
from benchmarks.harness import models
from benchmarks.harness.timing import StageTimer

ROOT = Path(__file__).resolve().parents[2]


def test_prune_overhead_times_every_part(tmp_path):
    out = tmp_path / "overhead.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_prune_overhead", "--device", "cpu",
                    "--sizes", "96", "--repeats", "1", "--out", str(out)], check=True, cwd=ROOT)
    rows = json.loads(out.read_text())["rows"]
    assert {r["part"] for r in rows} == {"select iwp", "iwp scores", "iwp pc-mmr", "select magnitude",
                                         "select divprune", "fidelity"}
    assert all(r["n"] == 96 and r["kept"] == 11 and r["seconds"] > 0 and r["kernels"] is None for r in rows)


def test_vision_attention_comparison_packs_the_model_and_matches_fp32():
    model, processor = models.build(models.CONFIGS["mid"], torch.device("cpu"), torch.float32)
    media = {"image": models.encode(processor, "image", (56, 84), 1),
             "video": models.encode(processor, "video", (56, 56), 4)}
    out = bench_model.compare_vision_attention(model, media, torch.device("cpu"), repeats=1)
    assert model.config.vision_config._attn_implementation != "sdpa"
    for kind in media:
        assert out[kind]["loop_s"] > 0 and out[kind]["packed_s"] > 0
        assert out[kind]["loop_max_error_vs_fp32"] < 1e-5
        assert out[kind]["packed_max_error_vs_fp32"] < 1e-5


def test_vision_profile_accounts_for_the_encoder_by_operator_family(tmp_path):
    out = tmp_path / "profile.json"
    result = profile_vision.main(["--device", "cpu", "--frames", "4", "--video-size", "56x56", "--repeats", "1",
                                  "--patch-embed", "conv", "--out", str(out)])
    assert json.loads(out.read_text())["families"] == result["families"]
    assert result["families"]["patch embedding"] > 0 and result["families"]["matmul"] > 0
    assert sum(result["families"].values()) == pytest.approx(result["profiled_op_seconds"])
    assert result["flops"] > 0 and result["tflops_per_s"] > 0
    assert all(result["patch_embedding_alone"][k]["seconds"] > 0 for k in ("conv", "linear"))
    assert set(result["attention_variants"]) == {"per-segment loop", "padded"}  # flash varlen: CUDA only
    assert all(v["seconds"] > 0 for v in result["attention_variants"].values())
    assert profile_vision.family("aten::addmm") == "matmul"
    assert profile_vision.family("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"


def test_prefill_profile_splits_each_prefill_into_stages(tmp_path):
    """Every module call of a prefill opens one range of its stage (the mid config: 10 decoder
    layers, K=2), at the batch asked for. The device columns need CUDA and are not checked here."""
    out = tmp_path / "prefill.json"
    result = profile_prefill.main(["--device", "cpu", "--frames", "4", "--video-size", "56x56", "--repeats", "1",
                                   "--batches", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["results"]) == {"eager, batch 1", "eager, batch 2"}
    assert result["meta"]["visual_kept"] < result["meta"]["visual_tokens"] and result["meta"]["flop_ideal"] > 1
    ranges = dict(zip(profile_prefill.STAGES, (1, 2, 1, 7)))
    for label, cells in result["results"].items():
        assert set(cells) == {"1.0", "0.111"}
        for cell in cells.values():
            profile = cell["profile"]
            assert profile["batch"] == int(label.rsplit(" ", 1)[1])
            stages = profile["stages"]
            assert {s: stages[s]["ranges"] for s in profile_prefill.STAGES} == ranges
            assert all(stages[s]["host_s"] > 0 for s in profile_prefill.STAGES)
            assert 0 < stages["rest"]["host_s"] < profile["wall_s"]
            assert profile["busy_s"] is None and profile["top_ops"]
    assert profile_prefill._union([(0, 2), (1, 3), (5, 6)]) == 4


def test_stage_timer_reads_only_while_on(tiny_model_dir):
    """Timed prefills run with the stage timer off (its syncs would slow them on a GPU); the runs
    that split the time by stage run with it on and account for every stage."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    inputs = models.encode(processor, "video", (56, 56), 4)
    timer = StageTimer(model, 1, torch.device("cpu"))
    models.prefill(model, inputs)
    assert set(timer.take().values()) == {0.0}
    timer.on = True
    models.prefill(model, inputs)
    assert all(seconds > 0 for seconds in timer.take().values())
    timer.remove()


def test_throughput_benchmark_times_every_arm_on_the_same_forced_lengths(tmp_path):
    import json

    from benchmarks import bench_throughput

    out = tmp_path / "throughput.json"
    bench_throughput.main(["--items", "3", "--new-tokens", "12", "--workloads", "image", "--static-batches", "2",
                           "--threads", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    cells = {c["arm"]: c for c in data["cells"]}
    assert set(cells) == {"engine", "engine unpruned", "static", "static unpruned"}
    expected = sum(n + 1 if n < 12 else n for n in bench_throughput.lengths(3, 12, seed=7))  # each answer and its EOS
    assert {c["tokens"] for c in cells.values()} == {expected}
    assert cells["static"]["batch_size"] == 2 and cells["engine"]["micro_batches"] >= 1
    assert all(c["seconds"] > 0 and c["ideal_seconds"] > 0 for c in cells.values())
    ratio = data["ratios"][0]
    assert ratio["engine_vs_static"] > 0 and ratio["ideal_pruned_vs_unpruned"] > 1
