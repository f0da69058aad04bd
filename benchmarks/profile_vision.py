"""Where does the vision encoder's time go?

Pruning starts after the vision encoder, so the encoder bounds what any LLM-side pruning can
gain (issue #5), and on a GPU it takes a larger share of the prefill's time than of its FLOPs
(`benchmarks/results/h100/`). This profiles the encoder alone, packed as the pipeline runs it,
with torch.profiler: device time per operator family (matmuls, attention, normalisation, rotary
and other elementwise work, copies and indexing, the patch embedding), the operators that took
most, and the achieved FLOP rate against the FLOP count of
`benchmarks.harness.flops.vision_flops`.

It also times the whole encoder with each way of running its segment attention, in one process:
transformers' call per segment, `packed_attention`'s padded call, and on a CUDA GPU its call to
torch's variable-length attention ("flash varlen": the pipeline's choice there, FlashAttention 2
or cuDNN); and, with ``--compile``, the blocks under ``torch.compile``
(`iwp_ops.compile_vision_blocks`, as the pipeline runs them on CUDA).

Usage: ``python -m benchmarks.profile_vision [--device cpu|cuda] [--config mid|7b]
[--frames 64] [--video-size 392x392] [--repeats 3] [--compile] [--out PATH]``
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from benchmarks.harness.flops import vision_flops
from benchmarks.harness.models import CONFIGS, build, config_for, encode, grids_of, parse_size, vision_inputs
from benchmarks.harness.report import default_out, device_name, now, write_json
from benchmarks.harness.timing import runs, timed

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

    seconds = runs(run, device, repeats)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            timed(run, device)
    ops = {}
    for event in prof.key_averages():
        spent = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if event.key.startswith("aten::") and spent > 0:
            ops[event.key] = spent / 1e6 / repeats
    return {"seconds": seconds["seconds"], "seconds_all": seconds["seconds_all"], "ops": ops}


def time_attention_variants(model, encoded, device, repeats: int, compile_blocks: bool) -> dict:
    """The encoder's median seconds with each segment-attention path (see the module docstring);
    leaves the model as the pipeline runs it."""
    import torch

    import iwp_ops

    visual = model.model.visual
    pixels, grid = vision_inputs(encoded, device, next(visual.parameters()).dtype)
    config = visual.config

    def seconds() -> dict:
        with torch.inference_mode():
            return runs(lambda: visual(pixels, grid_thw=grid), device, repeats)

    out = {}
    config._attn_implementation = "sdpa"
    out["per-segment loop"] = seconds()
    iwp_ops.pack_vision_attention(model, varlen=False)
    out["padded"] = seconds()
    iwp_ops.pack_vision_attention(model)
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
        return runs(lambda: embed(pixels), device, repeats)


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
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/<machine>/profile_vision_<conv|linear|compiled>.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = config_for(args.config, device)
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
        "meta": {"date": now(),
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
    name = "profile_vision_compiled" if args.compile else f"profile_vision_{args.patch_embed}"
    write_json(args.out or default_out(name, device), result, indent=1)
    return result


if __name__ == "__main__":
    main()
