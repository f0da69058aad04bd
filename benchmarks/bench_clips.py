"""What splitting long videos into clips costs: CPU seconds of clip planning per hour of video
for both modes, and clips per second through a whole run on the shipped model.

1. Planning: one video made by `scenes.media.write_scenes` (`--minutes` long, a hard cut every
   `--scene-s` s, `--size` HxW, `--fps`, H.264), planned in this process by
   `pipeline.clips.plan_video`, the function the plan stage runs per source: fixed mode
   (`--length` s windows: a metadata probe) and shots mode (PyAV decodes every frame, one
   low-resolution frame per 1/DETECT_FPS s goes to PySceneDetect's ContentDetector). Reported:
   CPU seconds of this process (user + system, `getrusage`) per call, the best of `--repeats`,
   and that figure scaled to one hour of video; beside them PyAV decoding every frame and
   converting none (the floor under shots mode: what the detector adds is the difference), and
   the largest distance between a found cut and the true one.
2. End to end: `run_pipeline` with the shipped model (`reference/model`, on the CPU) over
   `--videos` generated videos of `--e2e-seconds` s each (a cut every `--scene-s` s, 240x320,
   24 fps), once per mode, on a local Ray instance started here, after a one-video warm-up run
   so Ray's workers are up. clips/s is `RunReport.items_per_s`: the run's clips over its whole
   time (planning, the model actor's start and load, every batch, the final reconcile).

Usage: ``python -m benchmarks.bench_clips [--minutes 3] [--size 360x640] [--fps 24] [--videos 4]
[--e2e-seconds 60] [--repeats 3] [--out PATH]`` (about 4 minutes on 2 shared cores). Prints a table
and writes JSON to benchmarks/results/cpu/clips.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness.report import RESULTS, now, table, write_json
from pipeline.clips import DETECT_FPS, DETECT_WIDTH, plan_video
from pipeline.config import ClipsConfig, ModelConfig, PipelineConfig
from scenes.media import write_scenes


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def best_cpu(fn, repeats: int) -> tuple[float, object]:
    """The fewest CPU seconds of `repeats` calls (other work only ever adds) and the last result."""
    spent, result = [], None
    for _ in range(repeats):
        before = cpu_seconds()
        result = fn()
        spent.append(cpu_seconds() - before)
    return min(spent), result


def decode_only(path: str) -> int:
    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def planning(root: Path, args: argparse.Namespace) -> list[dict]:
    seconds = args.minutes * 60
    cuts = [float(t) + 0.3 for t in range(args.scene_s, int(seconds), args.scene_s)]
    h, w = (int(x) for x in args.size.split("x"))
    path = root / "long.mp4"
    write_scenes(path, cuts, seconds, seed=1, size=(h, w), fps=args.fps)
    per_hour = 3600 / seconds
    rows = []
    true_cuts = [int(c * args.fps) / args.fps for c in cuts]
    for mode, cfg in (("fixed", ClipsConfig(length_s=args.length)), ("shots", ClipsConfig(mode="shots"))):
        spent, windows = best_cpu(lambda: plan_video(str(path), "bench", cfg, None, None), args.repeats)
        error = None
        if mode == "shots":
            found = [a for a, _ in windows[1:]]
            error = max(abs(a - b) for a, b in zip(found, true_cuts)) if len(found) == len(true_cuts) else None
        rows.append({"what": f"plan {mode}", "cpu_s": spent, "cpu_s_per_hour": spent * per_hour, "clips": len(windows),
                     "max_cut_error_s": error, "cuts_found": len(windows) - 1 if mode == "shots" else None})
    spent, frames = best_cpu(lambda: decode_only(str(path)), args.repeats)
    rows.append({"what": "decode every frame (PyAV)", "cpu_s": spent, "cpu_s_per_hour": spent * per_hour, "frames": frames})
    return rows


def end_to_end(root: Path, args: argparse.Namespace) -> list[dict]:
    import ray

    from pipeline.run import run_pipeline
    from reference import __file__ as reference_init

    model = str(Path(reference_init).resolve().parent / "model")
    cuts = [float(t) + 0.3 for t in range(args.scene_s, args.e2e_seconds, args.scene_s)]
    rows_in = []
    for i in range(args.videos):
        path = root / f"video{i}.mp4"
        write_scenes(path, cuts, args.e2e_seconds, seed=10 + i, size=(240, 320), fps=24)
        rows_in.append({"id": f"video{i}", "uri": str(path)})
    pq.write_table(pa.Table.from_pylist(rows_in), root / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows_in[:1]), root / "warmup.parquet")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        def config(manifest: str, output: str, clips: ClipsConfig) -> PipelineConfig:
            return PipelineConfig(name="bench-clips", input=str(root / manifest), output=str(root / output),
                                  model=ModelConfig(path=model, device="cpu"), clips=clips)

        run_pipeline(config("warmup.parquet", "warmup", ClipsConfig(length_s=args.length)))
        out = []
        for mode, clips in (("fixed", ClipsConfig(length_s=args.length)), ("shots", ClipsConfig(mode="shots"))):
            report = run_pipeline(config("manifest.parquet", f"out-{mode}", clips))
            out.append({"what": f"end to end {mode}", "clips": report.this_run.total, "ok": report.this_run.ok,
                        "seconds": report.seconds, "clips_per_s": report.items_per_s})
        return out
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="length of the planned video")
    p.add_argument("--size", default="360x640", help="HxW of the planned video")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--scene-s", type=int, default=12, help="seconds between cuts")
    p.add_argument("--length", type=float, default=10.0, help="fixed mode's window, seconds")
    p.add_argument("--videos", type=int, default=4, help="videos in the end-to-end runs")
    p.add_argument("--e2e-seconds", type=int, default=60, help="length of each end-to-end video")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "cpu" / "clips.json")
    args = p.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_clips_") as tmp:
        plan_rows = planning(Path(tmp), args)
        e2e_rows = end_to_end(Path(tmp), args) if args.videos else []
    print(table([("planning", -26), ("CPU s", 8), ("CPU s / h of video", 19), ("clips", 6), ("max cut error s", 16)],
                [(r["what"], f"{r['cpu_s']:.3f}", f"{r['cpu_s_per_hour']:.2f}", r.get("clips", ""),
                  "" if r.get("max_cut_error_s") is None else f"{r['max_cut_error_s']:.3f}") for r in plan_rows]))
    if e2e_rows:
        print(table([("end to end (shipped model)", -26), ("clips", 6), ("ok", 4), ("seconds", 8), ("clips/s", 8)],
                    [(r["what"], r["clips"], r["ok"], f"{r['seconds']:.1f}", f"{r['clips_per_s']:.2f}") for r in e2e_rows]))
    result = {
        "benchmark": "bench_clips", "date": now(), "cpu_count": os.cpu_count(), "loadavg_after": os.getloadavg(),
        "config": {**{k: v for k, v in vars(args).items() if k != "out"},
                   "detect_fps": DETECT_FPS, "detect_width": DETECT_WIDTH},
        "versions": {"python": platform.python_version(), "av": av.__version__,
                     "scenedetect": __import__("scenedetect").__version__},
        "planning": plan_rows, "end_to_end": e2e_rows, "runtime_s": time.perf_counter() - started,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
