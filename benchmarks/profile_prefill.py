"""Where does a pruned prefill's time go, and does the device wait on the host?

The per-stage split of `bench_model.py` comes from runs that synchronise around every stage,
which hides whether a short stage is limited by the device or by the host queueing its kernels.
This profiles whole prefills with no synchronisation inside, for the unpruned model and one keep
ratio, at one or more batch sizes, in one process:

- the median prefill time (no profiler);
- under torch.profiler, one prefill with the stages marked (vision, layers < K, layer K, layers
  > K, and the rest): each stage's host time (its ranges on the host) and device time (the kernel
  time: where the profiler records the stage's device-side span, the kernel time inside it, which
  also counts CUDA-graph replays; in brackets, the kernel time of the operators it launched,
  which on the H100 counted some decoder kernels twice: those summed to more than the device's
  busy time); a stage whose host time is well above its device time is launch-bound;
- the device's busy time (union of kernel intervals) against the profiled wall time, the kernel
  count, and the operators that took the most device time. The profiler itself adds host time
  (on the H100, 0.171 s profiled for a 0.141 s prefill), so the busy share it shows is a lower
  bound.

On the H100 (`benchmarks/results/h100/timer-fixed/`), 7B config, 64x392x392 video at 11.1 %: at
batch 1 the pruned prefill kept the GPU 69 % busy (the unpruned one 94 %): after PC-MMR's check
that every budget is filled, the host queues the short layers after K while the GPU waits; at
batch 4 and 8 it was 94 % and 96 % busy, and the speed-up 0.81 and 0.83 of the FLOP ideal.

``--compile-language`` also times and profiles the decoder layers' norms and MLPs under
``torch.compile`` (and with ``attention``, the attention modules too): an experiment, not what
the pipeline runs.

Usage: ``python benchmarks/profile_prefill.py [--device cpu|cuda] [--config mid|7b] [--frames 64]
[--video-size 392x392] [--keep 0.111] [--layer 2] [--repeats 5] [--batches 1 4] [--vision-compile auto|on|off]
[--compile-language none|pieces|attention] [--out PATH]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_model import (CONFIGS, build, device_name, encode, flop_model, grids_of,  # noqa: E402
                                    parse_size, prefill, replicate, set_ratio, stage_modules, timed,
                                    vision_inputs)

STAGES = ("vision", "layers < K", "layer K", "layers > K")


class StageMarks:
    """Profiler ranges around the vision encoder and each decoder layer, from forward hooks: no
    synchronisation, so the ranges show host time and the kernels each one launched."""

    def __init__(self, model, layer: int) -> None:
        import torch

        self.hooks = []
        self.open: dict[int, object] = {}
        for module, index in stage_modules(model, layer):
            def pre(module, *_, stage=STAGES[index]):
                mark = torch.profiler.record_function(stage)
                mark.__enter__()
                self.open[id(module)] = mark

            def post(module, *_):
                self.open.pop(id(module)).__exit__(None, None, None)

            self.hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _union(intervals: list[tuple[float, float]]) -> float:
    """Length covered by the intervals: busy time counts overlapping kernels once."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_once(model, inputs, device) -> dict:
    """One prefill under the profiler: per-stage host and device seconds, busy time, top operators.

    Each stage gets its host time and the number of ranges the hooks opened (one per module
    call); on CUDA, ``device_s`` is the kernel time of the operators launched inside its host
    ranges, and, where the profiler records the ranges' device-side spans, ``device_span_s`` and
    ``kernels`` count the kernels inside those spans (CUDA-graph replays included). ``rest`` is
    what lies outside the stages: on the host the wall time not in a stage range (the final wait
    for the device included), on the device the busy time not in a stage span.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall = timed(lambda: prefill(model, inputs), device)
    events = prof.events()
    stages = {s: {"host_s": 0.0, "ranges": 0, "device_s": 0.0, "kernels": 0} for s in (*STAGES, "rest")}
    kernels, spans = [], {}
    for e in events:
        if e.device_type == DeviceType.CPU and e.name in STAGES:
            stages[e.name]["host_s"] += (e.time_range.end - e.time_range.start) / 1e6
            stages[e.name]["ranges"] += 1
        elif cuda and e.device_type == DeviceType.CUDA:
            target = spans.setdefault(e.name, []) if e.name in STAGES else kernels
            target.append((e.time_range.start, e.time_range.end))
    for e in events:  # a launching op's kernels belong to the stage range around it
        if e.device_type != DeviceType.CPU or not e.kernels or e.name in STAGES:
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name not in STAGES:
            parent = parent.cpu_parent
        stage = stages[parent.name if parent is not None else "rest"]
        stage["device_s"] += sum(k.duration for k in e.kernels) / 1e6
        stage["kernels"] += len(e.kernels)
    busy = _union(kernels) / 1e6 if cuda else None
    for name, ranges in spans.items():
        inside = [[(max(a, lo), min(b, hi)) for a, b in kernels if b > lo and a < hi] for lo, hi in ranges]
        stages[name]["device_span_s"] = sum(_union(k) for k in inside) / 1e6
        stages[name]["kernels"] = sum(len(k) for k in inside)
    if spans:
        stages["rest"]["device_span_s"] = busy - sum(stages[s].get("device_span_s", 0.0) for s in STAGES)
        stages["rest"]["kernels"] = len(kernels) - sum(stages[s]["kernels"] for s in STAGES)
    stages["rest"]["host_s"] = wall - sum(stages[s]["host_s"] for s in STAGES)
    ops = {}
    for event in prof.key_averages():
        spent = event.self_device_time_total if cuda else event.self_cpu_time_total
        if event.key.startswith("aten::") and spent > 0:
            ops[event.key] = spent / 1e6
    top = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])
    return {"wall_s": wall, "busy_s": busy, "kernels": len(kernels), "batch": int(inputs["input_ids"].shape[0]),
            "stages": stages, "top_ops": top}


def compile_language(model, attention: bool) -> None:
    """The experiment of ``--compile-language``: each decoder layer's norms and MLP (and attention)
    under ``torch.compile(dynamic=True)``; the layers' own forward, and pruning's wrapper of it, stay
    eager."""
    import torch

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.model.language_model.layers:
        for module in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
            module.compile(dynamic=True)
        if attention:
            layer.self_attn.compile(dynamic=True)


def measure(model, handle, inputs, ratios, device, repeats: int) -> dict:
    """Warm each configuration up (the third run of a shape replays PC-MMR's CUDA graph), time the
    prefills interleaved, then profile one of each."""
    out = {}
    for ratio in ratios:
        set_ratio(handle, ratio)
        for _ in range(3):
            prefill(model, inputs)
        out[ratio] = {"prefill_s_all": []}
    for _ in range(repeats):
        for ratio in ratios:
            set_ratio(handle, ratio)
            out[ratio]["prefill_s_all"].append(timed(lambda: prefill(model, inputs), device))
    marks = StageMarks(model, handle.settings.layer)
    for ratio in ratios:
        set_ratio(handle, ratio)
        out[ratio]["prefill_s"] = statistics.median(out[ratio]["prefill_s_all"])
        out[ratio]["profile"] = profile_once(model, inputs, device)
    marks.remove()
    return out


def report(label: str, cells: dict, ideal: float) -> None:
    base = cells[1.0]["prefill_s"]
    for ratio, cell in cells.items():
        share = f", {base / cell['prefill_s'] / ideal:.2f} of the FLOP ideal {ideal:.2f}x" if ratio < 1.0 else ""
        p = cell["profile"]
        busy = f", device busy {p['busy_s']:.4f} s ({p['busy_s'] / p['wall_s']:.0%}), {p['kernels']} kernels" \
            if p["busy_s"] is not None else ""
        print(f"{label} keep {ratio * 100:5.1f}%: prefill {cell['prefill_s']:.4f} s ({base / cell['prefill_s']:.2f}x{share}); "
              f"profiled {p['wall_s']:.4f} s{busy}")
        for stage, s in p["stages"].items():
            host = "outside" if stage == "rest" else "host"
            if p["busy_s"] is None:  # CPU: the host time is the time
                print(f"    {stage:11} {host:7} {s['host_s'] * 1e3:8.2f} ms")
                continue
            device = f"device {s['device_span_s'] * 1e3:8.2f} ms (by operator {s['device_s'] * 1e3:8.2f})" \
                if "device_span_s" in s else f"device by operator {s['device_s'] * 1e3:8.2f} ms"
            print(f"    {stage:11} {host:7} {s['host_s'] * 1e3:8.2f} ms  {device}  {s['kernels']:5} kernels")
        print("    top ops: " + ", ".join(f"{k.removeprefix('aten::')} {v * 1e3:.2f}" for k, v in
                                         list(p["top_ops"].items())[:8]) + " (ms)")


def main(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    import iwp_ops
    from iwp_ops.models.vision_compile import SETTINGS, compile_wanted

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=tuple(CONFIGS), default=None, help="default: mid on CPU, 7b on CUDA")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--video-size", type=parse_size, default=(392, 392))
    parser.add_argument("--keep", type=float, default=0.111)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1],
                        help="batch sizes (identical copies of the video): the host's share shrinks as the batch grows")
    parser.add_argument("--vision-compile", choices=SETTINGS, default="auto")
    parser.add_argument("--compile-language", choices=("none", "pieces", "attention"), default="none")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_prefill.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = args.config or ("7b" if device.type == "cuda" else "mid")
    spec = CONFIGS[config]
    dtype = getattr(torch, spec["dtype"])
    model, processor = build(spec, device, dtype)
    encoded = encode(processor, "video", args.video_size, args.frames, seed=1)
    iwp_ops.flatten_patch_embedding(model)
    iwp_ops.pack_vision_attention(model)
    if compile_wanted(args.vision_compile, device):
        iwp_ops.compile_vision_blocks(model)
        pixels, grid = vision_inputs(encoded, device, dtype)
        with torch.inference_mode():
            model.model.visual(pixels, grid_thw=grid)
    handle = iwp_ops.enable_pruning(model, keep_ratio=args.keep, layer=args.layer)
    ratios = (1.0, args.keep)
    print(f"{config} config on {device_name(device)}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; video {args.frames}x{args.video_size[0]}x{args.video_size[1]}, "
          f"{int(encoded['attention_mask'].sum())} tokens, K={args.layer}", flush=True)
    results = {}
    set_ratio(handle, args.keep)
    prefill(model, replicate(encoded, 1, device))
    stats = handle.last_stats[0]
    length = int(encoded["attention_mask"].sum())
    flops = [flop_model(spec, grids_of(encoded), length, stats.visual_before, kept, args.layer, 1)["prefill"]
             for kept in (stats.visual_before, stats.visual_after)]
    ideal = flops[0] / flops[1]
    for batch in args.batches:
        inputs = replicate(encoded, batch, device)
        results[f"eager, batch {batch}"] = measure(model, handle, inputs, ratios, device, args.repeats)
        report(f"batch {batch:3} eager   ", results[f"eager, batch {batch}"], ideal)
    if args.compile_language != "none":
        inputs = replicate(encoded, args.batches[0], device)
        started = time.perf_counter()
        compile_language(model, args.compile_language == "attention")
        for ratio in ratios:  # compiles
            set_ratio(handle, ratio)
            prefill(model, inputs)
        print(f"compile ({args.compile_language}): {time.perf_counter() - started:.1f} s", flush=True)
        label = f"compiled {args.compile_language}, batch {args.batches[0]}"
        results[label] = measure(model, handle, inputs, ratios, device, args.repeats)
        report(f"batch {args.batches[0]:3} compiled", results[label], ideal)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "config": config, "frames": args.frames, "video_size": list(args.video_size), "keep": args.keep,
            "layer": args.layer, "repeats": args.repeats, "batches": args.batches, "flop_ideal": ideal,
            "visual_tokens": stats.visual_before, "visual_kept": stats.visual_after,
            "compile_language": args.compile_language}
    out = {"meta": meta, "results": {k: {str(r): c for r, c in v.items()} for k, v in results.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
