"""The benchmark harness: what it counts, probes and writes is what the scripts rely on."""

from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks.harness import memory, report
from benchmarks.harness.flops import flop_model
from benchmarks.harness.models import CONFIGS
from benchmarks.harness.timing import orders, runs

GRID = [(8, 24, 24)]  # a 16-frame 336x336 video's patch grid


def test_flop_model_prunes_only_the_layers_from_k_on():
    spec, length, visual = CONFIGS["mid"], 1200, 1152
    full = flop_model(spec, GRID, length, visual, visual, layer=2, new_tokens=16)
    cut = flop_model(spec, GRID, length, visual, 128, layer=2, new_tokens=16)
    assert full["kept_length"] == length and cut["kept_length"] == length - (visual - 128)
    assert cut["vision"] == full["vision"] > 0
    assert full["prefill"] == full["vision"] + full["llm_prefill"]
    assert cut["llm_prefill"] < full["llm_prefill"] and cut["after_k"] < full["after_k"]
    assert cut["decode"] < full["decode"]
    later = flop_model(spec, GRID, length, visual, 128, layer=5, new_tokens=16)
    assert cut["llm_prefill"] < later["llm_prefill"] < full["llm_prefill"]
    at_k = flop_model(spec, GRID, length, visual, 128, layer=spec["text"]["num_hidden_layers"] - 1, new_tokens=1)
    assert at_k["after_k"] == 0 and at_k["decode"] == 0


def test_peak_probe_sees_what_the_call_allocates():
    def allocate():
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        return block.sum()

    reading = memory.peak_of(allocate, torch.device("cpu"))
    assert reading["extra"] >= 48 * 2**20


def test_runs_report_the_median_and_the_fastest():
    calls = []
    timing = runs(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmups=2)
    assert len(calls) == 5 and len(timing["seconds_all"]) == 3
    assert timing["seconds_best"] == min(timing["seconds_all"]) <= timing["seconds"]


def test_orders_alternate_so_load_falls_on_every_configuration():
    assert list(orders((1, 2, 3), 3)) == [(1, 2, 3), (3, 2, 1), (1, 2, 3)]


def test_table_aligns_and_results_land_in_the_machine_folder(tmp_path, capsys):
    text = report.table((("name", -6), ("n", 4)), [("a", 1), ("bb", 22)])
    assert text.splitlines() == ["name      n", "-----------", "a         1", "bb       22"]
    assert report.default_out("bench_x", torch.device("cpu")) == report.RESULTS / "cpu" / "bench_x.json"
    out = report.write_json(tmp_path / "deep" / "x.json", {"a": [1, 2]})
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    assert f"wrote {out}" in capsys.readouterr().out


def test_paired_processes_alternate_and_ratio_wall_times(tmp_path):
    import sys

    from benchmarks.harness.processes import paired

    started: list[str] = []

    def command(name: str, seconds: float):
        def make(tag: str):
            started.append(f"{name}-{tag}")
            return [sys.executable, "-c", f"import time; time.sleep({seconds})"], tmp_path / f"{name}-{tag}.log"
        return make

    checked = []
    result = paired({"slow": command("slow", 0.6), "fast": command("fast", 0.2)}, pairs=2, warmups=1,
                    check=lambda name, run: checked.append((name, run["returncode"])))
    assert started == ["slow-warmup0", "fast-warmup0", "fast-pair0", "slow-pair0", "slow-pair1", "fast-pair1"]
    assert checked == [(n.split("-")[0], 0) for n in started]
    assert [r["tag"] for r in result["runs"]["slow"]] == ["pair0", "pair1"]  # the warm-up pair is not counted
    assert all(r > 1.5 for r in result["ratios"]) and result["median_ratio"] > 1.5
    assert result["median_wall_s"]["slow"] >= 0.6 > result["median_wall_s"]["fast"] >= 0.2
    assert all(r["linger_s"] < 1 and r["session_cpu_s"] >= 0 for rs in result["runs"].values() for r in rs)


def test_a_run_waits_for_the_processes_it_left_and_counts_their_cpu(tmp_path):
    import sys

    from benchmarks.harness.processes import run_process

    child = "import time\nwhile time.process_time() < 0.6: pass"  # spins until it has used 0.6 CPU-seconds
    run = run_process([sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {child!r}])"],
                      tmp_path / "run.log")
    assert run["returncode"] == 0
    assert run["linger_s"] >= 0.2  # the orphaned child outlived its parent, and was waited for
    assert run["session_cpu_s"] >= 0.45  # its CPU counted, though its parent never reaped it
