"""Where does the vision encoder's time go?

On the H100 the 7B's vision encoder took 59 % of the unpruned 64-frame prefill's time for 27 %
of its FLOPs, packed attention included (`benchmarks/results/h100/`), and since pruning starts
after it, it bounds what any LLM-side pruning can gain (issue #5). This profiles the encoder
alone, packed as the pipeline runs it, with torch.profiler: device time per operator family
(matmuls, attention, normalisation, rotary and other elementwise work, copies and indexing,
the patch embedding), the operators that took most, and the achieved FLOP rate against the
FLOP count of `bench_model.vision_flops`.

It also times the whole encoder with each way of running its segment attention, in one process:
transformers' call per segment, `packed_attention`'s padded call, and on a CUDA GPU its call to
torch's variable-length attention ("flash varlen": the pipeline's choice there, FlashAttention 2
or cuDNN); and, with ``--compile``, the blocks under ``torch.compile``
(`iwp_ops.compile_vision_blocks`, as the pipeline runs them on CUDA).

Usage: ``python benchmarks/profile_vision.py [--device cpu|cuda] [--config mid|7b]
[--frames 64] [--video-size 392x392] [--repeats 3] [--compile] [--out PATH]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_model import (CONFIGS, build, device_name, encode, grids_of, parse_size,  # noqa: E402
                                    timed, vision_flops, vision_inputs)

# Operator name fragments per family, first match wins; anything else is "other elementwise".
FAMILIES = (
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "softmax")),
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
    ("patch embedding", ("conv",)),
    ("normalisation", ("norm", "rsqrt", "aten::pow", "aten::mean")),
    ("copies and indexing", ("copy_", "aten::cat", "index", "gather", "contiguous", "clone", "aten::to", "_to_copy",
                             "empty", "zeros", "scatter", "split", "chunk")),
)


def family(name: str) -> str:
    return next((f for f, parts in FAMILIES if any(p in name for p in parts)), "other elementwise")


def profile_encoder(model, encoded, device, repeats: int) -> dict:
    """Self device time per aten operator (CPU time on CPU) over `repeats` runs, after one warm-up."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    visual = model.model.visual
    pixels, grid = vision_inputs(encoded, device, next(visual.parameters()).dtype)

    def run() -> None:
        with torch.inference_mode():
            visual(pixels, grid_thw=grid)

    seconds = [timed(run, device) for _ in range(repeats + 1)][1:]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            timed(run, device)
    ops = {}
    for event in prof.key_averages():
        spent = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if event.key.startswith("aten::") and spent > 0:
            ops[event.key] = spent / 1e6 / repeats
    return {"seconds": sorted(seconds)[len(seconds) // 2], "seconds_all": seconds, "ops": ops}


def time_attention_variants(model, encoded, device, repeats: int, compile_blocks: bool) -> dict:
    """The encoder's median seconds with each segment-attention path (see the module docstring);
    leaves the model as the pipeline runs it."""
    import torch

    import iwp_ops
    from iwp_ops.models import vision_attention

    visual = model.model.visual
    pixels, grid = vision_inputs(encoded, device, next(visual.parameters()).dtype)
    config = visual.config

    def seconds() -> dict:
        with torch.inference_mode():
            visual(pixels, grid_thw=grid)
            runs = [timed(lambda: visual(pixels, grid_thw=grid), device) for _ in range(repeats)]
        return {"seconds": sorted(runs)[len(runs) // 2], "seconds_all": runs}

    out = {}
    config._attn_implementation = "sdpa"
    out["per-segment loop"] = seconds()
    config._attn_implementation = vision_attention.PADDED_NAME
    out["padded"] = seconds()
    config._attn_implementation = vision_attention.NAME
    if device.type == "cuda":
        out["flash varlen"] = seconds()
    if compile_blocks:
        iwp_ops.compile_vision_blocks(model)
        start = timed(lambda: visual(pixels, grid_thw=grid), device)
        out["compiled blocks"] = {**seconds(), "first_call_s": start}
    return out


def time_patch_embedding(model, encoded, device, repeats: int = 20) -> dict:
    """The model's patch embedding alone, as it runs now: median and fastest seconds of `repeats`
    runs after a warm-up."""
    import torch

    embed = model.model.visual.patch_embed
    pixels = encoded["pixel_values_videos"].to(device, embed.proj.weight.dtype)
    with torch.inference_mode():
        embed(pixels)
        runs = [timed(lambda: embed(pixels), device) for _ in range(repeats)]
    return {"seconds": sorted(runs)[len(runs) // 2], "seconds_best": min(runs)}


def summarise(ops: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, spent in ops.items():
        out[family(name)] = out.get(family(name), 0.0) + spent
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    import iwp_ops

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=tuple(CONFIGS), default=None, help="default: mid on CPU, 7b on CUDA")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--video-size", type=parse_size, default=(392, 392), help="HxW per frame (multiples of 28)")
    ap.add_argument("--patch-embed", choices=("linear", "conv"), default="linear",
                    help="linear: iwp_ops.flatten_patch_embedding, as the pipeline runs it; conv: transformers' Conv3d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the blocks under torch.compile (last)")
    ap.add_argument("--top", type=int, default=12, help="operators listed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_vision.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = args.config or ("7b" if device.type == "cuda" else "mid")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, processor = build(CONFIGS[config], device, dtype)
    iwp_ops.pack_vision_attention(model)
    encoded = encode(processor, "video", args.video_size, args.frames)
    # Each patch embedding is timed alone, and the encoder profiled with the one asked for: the
    # Conv3d first, since flattening is done in place.
    embedding = {"conv": time_patch_embedding(model, encoded, device)}
    if args.patch_embed == "conv":
        measured = profile_encoder(model, encoded, device, args.repeats)
    iwp_ops.flatten_patch_embedding(model)
    embedding["linear"] = time_patch_embedding(model, encoded, device)
    if args.patch_embed == "linear":
        measured = profile_encoder(model, encoded, device, args.repeats)
    flops = vision_flops(CONFIGS[config]["vision"], grids_of(encoded))
    attention = time_attention_variants(model, encoded, device, args.repeats, args.compile)
    families = summarise(measured["ops"])
    profiled = sum(families.values())
    top = sorted(measured["ops"].items(), key=lambda kv: -kv[1])[:args.top]
    result = {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
                 "python": platform.python_version(), "config": config, "dtype": str(dtype),
                 "patch_embed": args.patch_embed, "frames": args.frames, "video_size": list(args.video_size), "repeats": args.repeats,
                 "time_basis": "self CUDA time per aten op" if device.type == "cuda" else "self CPU time per aten op"},
        "seconds": measured["seconds"], "seconds_all": measured["seconds_all"], "flops": flops,
        "tflops_per_s": flops / measured["seconds"] / 1e12, "profiled_op_seconds": profiled,
        "families": families, "ops": measured["ops"], "patch_embedding_alone": embedding,
        "attention_variants": attention,
    }
    print(f"vision encoder, {config} config, {args.patch_embed} patch embedding, {args.frames}x{args.video_size[0]}x{args.video_size[1]} video on "
          f"{result['meta']['device']}: {measured['seconds'] * 1e3:.1f} ms (median of {args.repeats}), "
          f"{flops / 1e12:.2f} TFLOP, {result['tflops_per_s']:.2f} TFLOP/s")
    print(f"patch embedding alone (median of 20): Conv3d {embedding['conv']['seconds'] * 1e3:.1f} ms, one matrix "
          f"product {embedding['linear']['seconds'] * 1e3:.1f} ms")
    print("whole encoder by segment attention path (median of {}):".format(args.repeats))
    for name, spent in attention.items():
        extra = f", first call {spent['first_call_s']:.1f} s" if "first_call_s" in spent else ""
        print(f"  {name:18s} {spent['seconds'] * 1e3:9.1f} ms  {flops / spent['seconds'] / 1e12:7.2f} TFLOP/s{extra}")
    print(f"{'family':22s} {'ms':>9s} {'share':>6s}")
    for name, spent in families.items():
        print(f"{name:22s} {spent * 1e3:9.2f} {spent / profiled:6.1%}")
    print(f"top operators ({result['meta']['time_basis']}):")
    for name, spent in top:
        print(f"  {name:40s} {spent * 1e3:9.2f} ms  [{family(name)}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
