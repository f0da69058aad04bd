"""What decoding and preprocessing each item in a child process (`pipeline.sandbox`) costs per item.

On generated media (H.264 mp4s and PNGs from `scenes.media`), each item is decoded with
the pipeline's own `decode_row` in this process, then through the child process
(`decode_isolation` on, warm child), alternating rounds so machine load hits both alike.
Reported: mean ms per item for each and the difference (the per-item overhead: one round
trip over a socket pair, pickling the arguments and the decoded frames), and the one-off
cost of starting a child (paid once per Ray worker, and again after each crash or timeout).
Then the same for preprocessing the decoded items with the shipped reference model's
processor (`preprocess_row`, `fault_tolerance.preprocess_isolation` on and off): the round
trip carries the decoded frames in and the packed model inputs out.

Usage: ``python -m benchmarks.bench_isolation [--videos N] [--images M] [--rounds R] [--out PATH]``
(under a minute on 2 cores). Prints a table and writes JSON to benchmarks/results/cpu/bench_isolation.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness.report import RESULTS, write_json
from pipeline import sandbox
from jobs.default_model import default_model_path
from pipeline.config import DecodeIsolationConfig, FaultToleranceConfig, GenerationConfig, SamplingConfig
from pipeline.decode import decode_row
from pipeline.preprocess import preprocess_row
from scenes.media import write_image, write_video


def rows(root: Path, videos: int, images: int) -> list[dict]:
    out = []
    for i in range(videos):
        path = root / f"clip{i}.mp4"
        write_video(path, seed=i, frames=32, fps=8, size=(240, 320))
        out.append(path)
    for i in range(images):
        path = root / f"img{i}.png"
        write_image(path, seed=100 + i, size=(448, 448))
        out.append(path)
    return [{"id": p.name, "uri": str(p), "media_type": None, "prompt": None, "start_s": None, "end_s": None} for p in out]


def timed(items: list[dict], cfg: SamplingConfig, isolation: DecodeIsolationConfig | None) -> list[float]:
    return timed_stage(items, lambda row: decode_row(row, cfg, isolation))


def timed_stage(items: list[dict], stage) -> list[float]:
    times = []
    for item in items:
        started = time.perf_counter()
        row = stage(dict(item))
        times.append(time.perf_counter() - started)
        assert row["status"] == "ok", row["error"]
    return times


def summary(inside: dict[str, list[float]], isolated: dict[str, list[float]], title: str) -> dict[str, dict]:
    out = {}
    print(f"{title:<12} {'items':>5} {'in-process ms':>14} {'isolated ms':>12} {'overhead ms':>12}")
    for kind in ("video", "image"):
        a, b = statistics.mean(inside[kind]) * 1000, statistics.mean(isolated[kind]) * 1000
        out[kind] = {"items": len(inside[kind]), "in_process_ms": round(a, 2), "isolated_ms": round(b, 2),
                     "overhead_ms": round(b - a, 2), "overhead_pct": round(100 * (b - a) / a, 1)}
        print(f"{kind:<12} {len(inside[kind]):>5} {a:>14.2f} {b:>12.2f} {b - a:>12.2f}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "cpu" / "bench_isolation.json")
    args = p.parse_args(argv)
    cfg, isolation = SamplingConfig(num_frames=8), DecodeIsolationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        items = rows(Path(tmp), args.videos, args.images)
        starts = []
        for _ in range(3):
            sandbox._SANDBOX.close()
            started = time.perf_counter()
            timed(items[:1], cfg, isolation)  # a cold child: start, imports, then one item
            starts.append(time.perf_counter() - started)
        timed(items, cfg, None)  # warm this process's decoders too
        inside, isolated = {"video": [], "image": []}, {"video": [], "image": []}
        for _ in range(args.rounds):
            for kind, part in (("video", items[:args.videos]), ("image", items[args.videos:])):
                inside[kind] += timed(part, cfg, None)
                isolated[kind] += timed(part, cfg, isolation)
        decoded = [decode_row(dict(item), cfg) for item in items]
        model, gen, faults = str(default_model_path()), GenerationConfig(), FaultToleranceConfig()
        ways = {"inside": None, "isolated": faults}
        runs = {way: (lambda row, f=f: preprocess_row(row, model, gen, isolation=f)) for way, f in ways.items()}
        for run in runs.values():
            timed_stage(decoded, run)  # load the processor here and in the child
        pre = {way: {"video": [], "image": []} for way in ways}
        for _ in range(args.rounds):
            for kind, part in (("video", decoded[:args.videos]), ("image", decoded[args.videos:])):
                for way, run in runs.items():
                    pre[way][kind] += timed_stage(part, run)
        sandbox._SANDBOX.close()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.node(),
              "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "sampling": cfg.model_dump(), "rounds": args.rounds,
              "cold_child_first_item_ms": round(1000 * statistics.median(starts), 1),
              "per_item": summary(inside, isolated, "decode"),
              "preprocess_model": "reference/model", "preprocess_per_item": summary(pre["inside"], pre["isolated"], "preprocess")}
    print(f"cold child (start + imports + first item): {result['cold_child_first_item_ms']} ms, once per Ray worker")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
