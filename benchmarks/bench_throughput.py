"""Items/s and tokens/s of the generation engine against static `generate()` batches, pruned and not.

Arms, each on the same items and at its own best configuration:

- ``engine``: `pipeline.generation.GenerationEngine`, IWP at ``--keep`` (11.1 % by default):
  micro-batched prefill, continuous-batching decode, batch sizes from the memory budget;
- ``engine unpruned``: the same engine, pruning off;
- ``static``: the path the engine replaced (`benchmarks.harness.static_batches`): batches packed
  by tokens, one `generate()` each, every row waiting for its batch's longest answer; pruned as
  the engine arm, at the fastest of ``--static-batches`` (each must fit memory);
- ``static unpruned``.

Answers have realistic, varying lengths: each item's length is drawn once from a seeded
distribution (log-normal, median half of ``--new-tokens``, clipped to 8..``--new-tokens``) and
forced through the logits (end-of-sequence banned before it, forced at it), since random weights
would otherwise stop at random. Workloads: videos and images (random pixels; sizes below).

Beside each measured time, the configuration's ideal from arithmetic and bytes alone:
prefill FLOPs (vision encoder, decoder at full length before K and at the kept length after) at
the device's matmul rate, plus per decode step the weights and every decoding row's KV cache read
at the device's memory bandwidth (both rates measured here on a CPU, nominal on a GPU). Results
read as the measured items/s ratio of the pruned to the unpruned engine against the ideal ratio.

Usage: ``python -m benchmarks.bench_throughput [--device cpu|cuda] [--config mid|7b] [--items N]
[--new-tokens 64 128] [--workloads video image] [--repeats R] [--threads T] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import models, report
from benchmarks.harness.flops import flop_model
from benchmarks.harness.static_batches import static_generate
from benchmarks.harness.timing import orders, sync
from pipeline.generation.memory import module_bytes
from pipeline.preprocess import SEQUENCE_KEYS

SIZES = {"video": ((224, 224), 16), "image": ((448, 448), 1)}
NOMINAL = {"h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}  # dense bf16 FLOP/s, HBM bytes/s


def lengths(count: int, most: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(np.log(most / 2), 0.5, count)
    return [int(v) for v in np.clip(np.round(drawn), 8, most)]


def workload(processor, kind: str, count: int, most: int, seed: int) -> list:
    from pipeline.generation import GenerationRequest

    size, frames = SIZES[kind]
    out = []
    for i, n in enumerate(lengths(count, most, seed)):
        encoded = models.encode(processor, kind, size, frames, seed=seed + i)
        inputs = {k: v[0].numpy() if k in SEQUENCE_KEYS else v.numpy() for k, v in encoded.items()}
        out.append(GenerationRequest(inputs, max_new_tokens=most, eos_at=n))
    return out


def device_rates(device) -> tuple[float, float]:
    """(matmul FLOP/s, memory bytes/s): measured on a CPU, nominal for a known GPU."""
    import torch

    name = report.machine(device)
    if name in NOMINAL:
        return NOMINAL[name]
    a = torch.randn(1024, 1024)
    start = time.perf_counter()
    for _ in range(8):
        a @ a
    flops = 8 * 2 * 1024**3 / (time.perf_counter() - start)
    big = torch.empty(64 << 20, dtype=torch.uint8)
    start = time.perf_counter()
    for _ in range(4):
        big.clone()
    return flops, 4 * 2 * big.numel() / (time.perf_counter() - start)


def ideal_seconds(spec: dict, requests: list, kept_share: float, layer: int, weights: int, rates: tuple[float, float],
                  kv_per_token: int) -> float:
    """Prefill FLOPs at the matmul rate plus decode steps at the bandwidth, rows decoding together
    (the bytes of a step: the weights once and each row's cache)."""
    flops_rate, bandwidth = rates
    prefill, caches = 0.0, []
    for r in requests:
        ids = r.inputs["input_ids"]
        visual = int(np.isin(ids, [spec["image_token_id"], spec["video_token_id"]]).sum())
        grid = r.inputs.get("video_grid_thw", r.inputs.get("image_grid_thw"))
        kept = round(visual * kept_share)
        cost = flop_model(spec, [tuple(int(v) for v in row) for row in grid], len(ids), visual, kept, layer, 1)
        prefill += cost["prefill"]
        caches.append((len(ids) - visual + kept, r.eos_at + 1))
    steps = max(n for _, n in caches)
    kv_bytes = sum(kv_per_token * (length * n + n * (n - 1) / 2) for length, n in caches)
    return prefill / flops_rate + (steps * weights + kv_bytes) / bandwidth


def run_arm(arm: str, model, processor, handle, requests: list, keep: float, static_batches: list[int]) -> dict:
    from pipeline.generation import GenerationEngine

    pruned = not arm.endswith("unpruned")
    if handle is not None:
        models.set_ratio(handle, keep if pruned else 1.0)
    tok = processor.tokenizer
    device = model.device
    if arm.startswith("engine"):
        engine = GenerationEngine(model, tok, handle if pruned else None)
        sync(device)
        start = time.perf_counter()
        results = engine.generate(requests)
        sync(device)
        seconds = time.perf_counter() - start
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"{arm}: {errors[0]}")
        run = engine.last_run
        return {"seconds": seconds, "tokens": run.decode_tokens, "mean_decode_batch": run.mean_decode_batch,
                "max_decode_batch": run.max_decode_batch, "micro_batches": run.micro_batches,
                "prefill_s": run.prefill_s, "decode_s": run.decode_s,
                "busy_share": (run.prefill_s + run.decode_s) / seconds, "peak_memory": run.peak_memory or None,
                "kv_per_token": sum(engine.budget.kv_per_token)}
    best = None
    for size in static_batches:
        sync(device)
        start = time.perf_counter()
        tokens = static_generate(model, tok, requests, size, 1 << 30)
        sync(device)
        seconds = time.perf_counter() - start
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "tokens": tokens, "batch_size": size}
    return best


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default=None, help="mid (CPU default) or 7b (GPU default)")
    ap.add_argument("--items", type=int, default=None, help="items per workload (CPU 48, GPU 256)")
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--workloads", nargs="+", default=["video", "image"], choices=list(SIZES))
    ap.add_argument("--keep", type=float, default=0.111)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--static-batches", type=int, nargs="+", default=None,
                    help="static arm batch sizes to try (CPU 16 48, GPU 32 64 128 256)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arms", nargs="+", default=["engine", "engine unpruned", "static", "static unpruned"])
    ap.add_argument("--vision-compile", default="auto", choices=["auto", "on", "off"],
                    help="as the job's model.compile_vision (auto: on CUDA only)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    config = models.config_for(args.config, device)
    spec = models.CONFIGS[config]
    dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    model, processor = models.build(spec, device, dtype)
    import iwp_ops
    from pipeline.generation import prepare_vision

    prepare_vision(model, args.vision_compile, device)  # the vision tower as load_model gives it to jobs

    handle = iwp_ops.enable_pruning(model, method="iwp", keep_ratio=args.keep, layer=args.layer)
    items = args.items or (256 if cuda else 48)
    statics = args.static_batches or ([32, 64, 128, 256] if cuda else [16, 48])
    rates = device_rates(device)
    weights = module_bytes(model)
    spec_ids = {**spec, "image_token_id": model.config.image_token_id, "video_token_id": model.config.video_token_id}
    cells = []
    for kind in args.workloads:
        for most in args.new_tokens:
            requests = workload(processor, kind, items, most, seed=7)
            run_arm("engine", model, processor, handle, requests[:4], args.keep, statics[:1])  # warm-up
            seen: dict[str, list[dict]] = {arm: [] for arm in args.arms}
            for order in orders(tuple(args.arms), args.repeats):
                for arm in order:
                    seen[arm].append(run_arm(arm, model, processor, handle, requests, args.keep, statics))
            for arm, runs in seen.items():
                seconds = statistics.median(r["seconds"] for r in runs)
                pruned = not arm.endswith("unpruned")
                kv = runs[0].get("kv_per_token") or next((r[0]["kv_per_token"] for a, r in seen.items()
                                                          if a.startswith("engine")), 0)
                ideal = ideal_seconds(spec_ids, requests, args.keep if pruned else 1.0, args.layer, weights, rates, kv)
                cells.append({"workload": kind, "new_tokens": most, "arm": arm, "items": items, "seconds": seconds,
                              "items_per_s": items / seconds, "tokens_per_s": runs[0]["tokens"] / seconds,
                              "ideal_seconds": ideal, "share_of_ideal": ideal / seconds,
                              **{k: v for k, v in runs[0].items() if k not in ("seconds",)},
                              "seconds_all": [r["seconds"] for r in runs]})
    ratios = []
    for kind in args.workloads:
        for most in args.new_tokens:
            cell = {c["arm"]: c for c in cells if c["workload"] == kind and c["new_tokens"] == most}
            row = {"workload": kind, "new_tokens": most}
            if "engine" in cell and "static" in cell:
                row["engine_vs_static"] = cell["engine"]["items_per_s"] / cell["static"]["items_per_s"]
            if "engine" in cell and "engine unpruned" in cell:
                row["pruned_vs_unpruned"] = cell["engine"]["items_per_s"] / cell["engine unpruned"]["items_per_s"]
                row["ideal_pruned_vs_unpruned"] = cell["engine unpruned"]["ideal_seconds"] / cell["engine"]["ideal_seconds"]
                row["share_of_ideal_ratio"] = row["pruned_vs_unpruned"] / row["ideal_pruned_vs_unpruned"]
            ratios.append(row)
    print(report.table([("workload", -8), ("new", 4), ("arm", -16), ("items/s", 9), ("tokens/s", 9), ("s", 7),
                        ("ideal s", 8), ("batch", 6)],
                       [(c["workload"], c["new_tokens"], c["arm"], f"{c['items_per_s']:.2f}", f"{c['tokens_per_s']:.0f}",
                         f"{c['seconds']:.1f}", f"{c['ideal_seconds']:.2f}",
                         f"{c.get('mean_decode_batch', c.get('batch_size', 0)):.0f}") for c in cells]))
    print()
    print(report.table([("workload", -8), ("new", 4), ("engine/static", 14), ("pruned/unpruned", 16), ("ideal", 6),
                        ("share", 6)],
                       [(r["workload"], r["new_tokens"], f"{r.get('engine_vs_static', float('nan')):.2f}x",
                         f"{r.get('pruned_vs_unpruned', float('nan')):.2f}x",
                         f"{r.get('ideal_pruned_vs_unpruned', float('nan')):.2f}x",
                         f"{r.get('share_of_ideal_ratio', float('nan')):.2f}") for r in ratios]))
    out = args.out or report.default_out("throughput", device)
    report.write_json(out, {"date": report.now(), "device": report.device_name(device), "config": config,
                            "keep_ratio": args.keep, "layer": args.layer, "vision_compile": args.vision_compile, "rates": {"flops": rates[0], "bytes": rates[1]},
                            "weights_bytes": weights, "cells": cells, "ratios": ratios,
                            "command": "python -m benchmarks.bench_throughput " + " ".join(argv or [])})


if __name__ == "__main__":
    main()
