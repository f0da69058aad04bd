"""End-to-end pipeline throughput against the model's own ceiling, and decode speed.

On media generated into a temporary directory (H.264 mp4s and PNGs from
`scenes.media`) and a saved, randomly initialised Qwen2.5-VL from
`reference.builders` (made bigger than the test model with --hidden/--layers: the
default 128 x 8 layers makes the model stage cost roughly 4x decode + preprocess per
item on these clips, so the model is the bottleneck stage, as it is on a GPU, but decode
is far from free; the output prints the measured ratio), this measures:

1. Ceiling: in this one process, without Ray, every item is decoded and preprocessed
   first with the pipeline's own per-row functions (`decode_row`, `preprocess_row`,
   i.e. decord/PIL, then `build_inputs` through the model's processor and
   `pipeline.tensors.pack`). Then only the model stage is timed: a
   `pipeline.engine.ModelEngine(cfg)` is called on batches of `rows_per_call` rows in
   the numpy-dict format Ray Data hands it (one array per column, as `_rows` parses),
   with one untimed warm-up call first. It runs with as many torch threads as the
   model actor gets inside Ray (Ray sets OMP_NUM_THREADS to the actor's `num_cpus`;
   the benchmark checks this in a Ray task), which is the matched ceiling; with
   --all-cores-ceiling also with every core (the machine's ceiling for the model
   alone; off by default, as OpenMP threads make it slow and erratic whenever other
   work shares the CPUs).
2. End to end: `run_pipeline(PipelineConfig(...))` on a local Ray instance started
   here (`ray.init(num_cpus=os.cpu_count(), include_dashboard=False)`). A small
   warm-up manifest runs first so Ray, its worker pool and their imports are up. The
   measured run is then reported three ways:
   - all-in: `RunReport.items_per_s` (manifest read, the model actor's process start
     and model load, every batch, the final reconcile);
   - model stage after its first call: items the model finished after its first
     call ÷ time from that call's end to the last call's end, read by polling the
     run's `ProgressBoard` every 0.1 s (handed to this script by `run_pipeline`'s
     `observer`, `pipeline.run.RunObserver`). This leaves out Ray Data's
     start, the model actor's process start, model load and the first call; it is
     slightly optimistic when decode is the slower stage, since decode runs ahead
     while the model loads. It is split at the moment preprocessing finished: the
     model's rate while decode/preprocess tasks still shared the CPUs, and after;
   - output side: items after the first output batch ÷ time from the first to the
     last output batch reaching the driver (the observer's `delivered`). Ray Data delivers output in bursts (the write tasks wait for CPU on a
     small machine), so this one is coarse; it is kept for reference.
   Efficiency = e2e items/s ÷ matched-ceiling items/s; the target is >= 0.9 once
   decode has enough CPU. On a machine with few cores, decode, preprocess, Ray's own
   processes and the model share the same CPUs (with 2 cores, Ray gives the model
   actor one and the decode/preprocess tasks the other), so the target may not be met
   there; the table gives the figures needed to see why (the stage timeline, whether
   the model ever waited for input, and the load average by phase: other work on the
   machine makes every figure pessimistic).
3. Decode: frames/s on the generated videos in one process with one decoder thread:
   decord with the pipeline's sampling (`decode_video`), decord decoding all frames,
   PyAV decoding all frames to rgb24, and the `ffmpeg` CLI decoding the same files to
   raw rgb24 frames (`-threads 1` before `-i`, so the decoder itself is single
   threaded), once per file (process start included) and once for all files in one
   process (concat demuxer). "Per core" is frames per CPU-second of the decoding
   process (ffmpeg: of the child processes), which other load on the machine affects
   far less than frames per wall-second. If `ffmpeg` is not on PATH that
   row says so instead of failing. PIL image decode (`decode_image`) is reported too.

Usage: ``python -m benchmarks.bench_pipeline [--quick] [--videos N] [--images M] [--frames F]
[--hidden H] [--layers L] [--rows-per-call R] [--all-cores-ceiling] [--out PATH]``
(default about 3 minutes on 2 cores, --quick under a minute). Prints a table and writes JSON (config,
versions, date, load averages, all numbers) to benchmarks/results/cpu/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness.report import RESULTS, write_json

TARGET_EFFICIENCY = 0.9
VIDEO_SIZE = (240, 320)  # (height, width)
IMAGE_SIZE = (240, 320)


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small run, about a minute on 2 cores")
    p.add_argument("--videos", type=int, help="videos to generate (default 144, quick 18)")
    p.add_argument("--images", type=int, help="images to generate (default 48, quick 6)")
    p.add_argument("--frames", type=int, default=64, help="frames per generated video (default 64)")
    p.add_argument("--fps", type=int, default=16, help="frame rate of the generated videos")
    p.add_argument("--hidden", type=int, default=128, help="LM hidden size of the random model (multiple of 16)")
    p.add_argument("--layers", type=int, default=8, help="LM decoder layers of the random model (> pruning layer)")
    p.add_argument("--rows-per-call", type=int,
                   help="rows per model-actor call, e2e and ceiling alike (default 16 = the pipeline's; quick 8, so "
                        "that its few items still give 3 output batches)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--decode-repeats", type=int, help="passes over the videos per decoder, best kept (default 2, quick 1)")
    p.add_argument("--all-cores-ceiling", action="store_true",
                   help="also time the ceiling with torch using every core (slow and erratic when other work shares "
                        "the CPUs: OpenMP threads then spin-wait on each other; OMP_WAIT_POLICY=PASSIVE helps)")
    p.add_argument("--warmup-items", type=int, default=4, help="items in the e2e warm-up manifest")
    p.add_argument("--ray-logs", action="store_true", help="show Ray worker logs on the driver")
    p.add_argument("--workdir", type=Path, help="keep media, model and outputs here instead of a temp dir")
    p.add_argument("--out", type=Path, default=RESULTS / "cpu" / "bench_pipeline.json")
    args = p.parse_args(argv)
    args.videos = args.videos if args.videos is not None else (18 if args.quick else 144)
    args.images = args.images if args.images is not None else (6 if args.quick else 48)
    args.rows_per_call = args.rows_per_call or (8 if args.quick else 16)
    args.decode_repeats = args.decode_repeats or (1 if args.quick else 2)
    if args.hidden % 16:
        p.error("--hidden must be a multiple of 16 (the tiny model's head size is 16)")
    if args.videos < 1 or args.images < 0 or args.frames < 2:
        p.error("need at least one video of at least 2 frames")
    return args


def versions() -> dict:
    import av
    import decord
    import PIL
    import ray
    import torch
    import transformers

    ffmpeg = shutil.which("ffmpeg")
    ffmpeg_version = None
    if ffmpeg:
        done = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, check=False)
        ffmpeg_version = (done.stdout.splitlines() or [""])[0]
    return {
        "python": platform.python_version(), "platform": platform.platform(), "ray": ray.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__, "decord": decord.__version__,
        "av": av.__version__, "ffmpeg_libs_in_av": av.library_versions.get("libavcodec"),
        "pillow": PIL.__version__, "numpy": np.__version__, "pyarrow": pa.__version__,
        "ffmpeg": ffmpeg_version, "ffmpeg_path": ffmpeg,
    }


def make_media(root: Path, videos: int, images: int, frames: int, fps: int) -> list[dict]:
    """Videos and images interleaved, so every model batch holds a similar mix."""
    from scenes.media import write_image, write_video

    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    vids, imgs = [], []
    for i in range(videos):
        path = media / f"clip_{i:03d}.mp4"
        write_video(path, seed=1000 + i, size=VIDEO_SIZE, frames=frames, fps=fps)
        vids.append({"id": f"video-{i:03d}", "uri": str(path), "media_type": "video"})
    for i in range(images):
        path = media / f"image_{i:03d}.png"
        write_image(path, seed=2000 + i, size=IMAGE_SIZE)
        imgs.append({"id": f"image-{i:03d}", "uri": str(path), "media_type": "image"})
    rows, step = [], max(1, round(videos / max(images, 1)))
    while vids or imgs:
        rows.extend(vids[:step])
        del vids[:step]
        if imgs:
            rows.append(imgs.pop(0))
    return rows


def write_manifest(rows: list[dict], path: Path) -> Path:
    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("media_type", pa.string()), ("prompt", pa.string())])
    pq.write_table(pa.Table.from_pylist([{**r, "prompt": None} for r in rows], schema=schema), path)
    return path


def make_config(args: argparse.Namespace, model_path: Path, manifest: Path, output: Path):
    from pipeline.config import BatchingConfig, GenerationConfig, ModelConfig, PipelineConfig

    return PipelineConfig(
        name="bench-pipeline",
        input=str(manifest),
        output=str(output),
        model=ModelConfig(path=str(model_path), device="cpu"),
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens),
        batching=BatchingConfig(rows_per_call=args.rows_per_call),
    )


# ----------------------------------------------------------------------------- decode


def _cpu_self() -> float:
    return time.process_time()


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _decord_all(uri: str) -> int:
    import decord

    vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=1)
    return int(vr.get_batch(list(range(len(vr)))).asnumpy().shape[0])


def _pyav_all(uri: str) -> int:
    import av

    n = 0
    with av.open(uri) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def _ffmpeg_all(ffmpeg: str, uri: str) -> None:
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-filter_threads", "1",
           "-i", uri, "-f", "rawvideo", "-pix_fmt", "rgb24", "-threads", "1", "-y", os.devnull]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ffmpeg_concat(ffmpeg: str, uris: list[str], listing: Path) -> None:
    """All files through one ffmpeg process (concat demuxer), so process start-up is paid once."""
    listing.write_text("".join(f"file '{u}'\n" for u in uris))
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-filter_threads", "1",
           "-f", "concat", "-safe", "0", "-i", str(listing), "-f", "rawvideo", "-pix_fmt", "rgb24", "-threads", "1",
           "-y", os.devnull]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _timed_pass(fn, uris: list[str], children: bool) -> tuple[float, float, list]:
    cpu = _cpu_children if children else _cpu_self
    w0, c0 = time.perf_counter(), cpu()
    out = [fn(u) for u in uris]
    return time.perf_counter() - w0, cpu() - c0, out


def decode_bench(videos: list[str], images: list[str], sampling, frames_per_video: int, repeats: int,
                 work: Path) -> dict:
    """Single process, one decoder thread; best of `repeats` passes over all files."""
    from pipeline.decode import decode_image, decode_video

    total_src = frames_per_video * len(videos)
    results: dict[str, dict] = {}

    def best(name: str, fn, uris: list[str], frames_out, frames_src, children: bool = False, **extra) -> None:
        fn(uris[0])  # warm-up: imports, codec init, page cache
        runs = [_timed_pass(fn, uris, children) for _ in range(repeats)]
        wall, cpu, out = min(runs, key=lambda r: r[0])
        n_out = frames_out(out) if callable(frames_out) else frames_out
        results[name] = {
            "files": len(uris), "frames_out": n_out, "frames_decoded": frames_src, "wall_s": wall, "cpu_s": cpu,
            "frames_out_per_s": n_out / wall, "frames_out_per_cpu_s": n_out / cpu if cpu > 0 else None,
            "frames_decoded_per_s": frames_src / wall if frames_src else None,
            "frames_decoded_per_cpu_s": frames_src / cpu if frames_src and cpu > 0 else None,
            "wall_s_all_runs": [r[0] for r in runs], **extra,
        }

    # decode_video decodes frame 0 to probe the size, then seeks to the sampled frames;
    # with one keyframe per file decord decodes every frame up to the last sampled one.
    best("decord_sampled", lambda u: decode_video(u, sampling, None, None)[0].shape[0], videos,
         lambda out: int(sum(out)), total_src,
         note=f"pipeline's decode_video: {sampling.num_frames} sampled frames per video out (frames_out); "
              "frames_decoded counts every source frame, since the decoder has to decode up to the last sampled one")
    best("decord_all", _decord_all, videos, lambda out: int(sum(out)), total_src,
         note="decord VideoReader(num_threads=1).get_batch(all frames) to numpy rgb24")
    best("pyav_all", _pyav_all, videos, lambda out: int(sum(out)), total_src,
         note="PyAV, codec thread_count=1, every frame to_ndarray(rgb24)")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        best("ffmpeg_all", lambda u: _ffmpeg_all(ffmpeg, u), videos, total_src, total_src, children=True,
             note="ffmpeg -threads 1 -filter_threads 1 -i FILE -f rawvideo -pix_fmt rgb24 -threads 1 -y /dev/null; "
                  "one process per file, start-up included; CPU is the children's user+system time")
        listing = work / "ffmpeg_concat.txt"
        best("ffmpeg_concat", lambda batch: _ffmpeg_concat(ffmpeg, batch, listing), [videos], total_src, total_src,
             children=True, note="the same, all files through one ffmpeg process (-f concat), start-up paid once")
    else:
        results["ffmpeg_all"] = results["ffmpeg_concat"] = {"available": False,
                                 "note": "ffmpeg not on PATH: no ffmpeg baseline (apt-get install -y ffmpeg)"}
    if images:
        best("pil_images", lambda u: decode_image(u, sampling).shape[0], images, lambda out: int(sum(out)), 0,
             note="pipeline's decode_image (PIL, PNG) per image; frames = images")
    return results


# ----------------------------------------------------------------------------- ceiling


def prepare_rows(cfg, manifest_rows: list[dict]) -> tuple[list[dict], dict]:
    """Decode and preprocess every item in this process, as the pipeline's CPU tasks do."""
    import torch

    from pipeline.decode import decode_row
    from pipeline.preprocess import load_processor, preprocess_row

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray's decode/preprocess tasks run with OMP_NUM_THREADS=1
    load_processor(cfg.model.path, cfg.model.trust_remote_code)
    times: dict[str, dict[str, list[float]]] = {"video": {"decode": [], "preprocess": []},
                                                "image": {"decode": [], "preprocess": []}}
    rows = []
    try:
        for m in manifest_rows:
            row = {"id": m["id"], "uri": m["uri"], "media_type": m["media_type"], "prompt": None,
                   "start_s": None, "end_s": None}
            t0 = time.perf_counter()
            row = decode_row(row, cfg.sampling)
            t1 = time.perf_counter()
            row = preprocess_row(row, cfg.model.path, cfg.generation, cfg.model.trust_remote_code, cfg.task_prompt)
            t2 = time.perf_counter()
            row["ready_at"] = time.time()  # run_stages adds this after preprocess
            times[m["media_type"]]["decode"].append(t1 - t0)
            times[m["media_type"]]["preprocess"].append(t2 - t1)
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    failed = [r["id"] for r in rows if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"decode/preprocess failed for {failed[:5]}: {rows[0].get('error')}")
    per = {kind: {stage: float(np.mean(v)) if v else None for stage, v in t.items()} | {"count": len(t["decode"])}
           for kind, t in times.items()}
    total = sum(sum(t["decode"]) + sum(t["preprocess"]) for t in times.values())
    per["all"] = {"seconds": total, "per_item_s": total / len(rows)}
    return rows, per


def _column(values: list) -> np.ndarray:
    """One column as Ray Data's numpy batch format gives it (pyarrow -> numpy)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values):
            return np.asarray(values, dtype=np.int64)
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    if present and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present):
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def numpy_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: _column([r.get(k) for r in rows]) for k in keys}


def ceiling(cfg, rows: list[dict], threads: int) -> dict:
    """Model stage only, in this process: ModelEngine on pre-built numpy batches."""
    import torch

    from pipeline.engine import ModelEngine

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        engine = ModelEngine(cfg)
        load_s = time.perf_counter() - t0
        n = cfg.batching.rows_per_call
        batches = [numpy_batch(rows[i:i + n]) for i in range(0, len(rows), n)]
        kinds = {r["media_type"]: r for r in rows}
        warm = numpy_batch(list(kinds.values()))
        t0 = time.perf_counter()
        engine(warm)  # untimed: first-call allocations, thread pool, kernel selection
        warmup_s = time.perf_counter() - t0
        seconds, out = [], []
        cpu0 = time.process_time()
        for batch in batches:
            t0 = time.perf_counter()
            table = engine(batch)
            seconds.append(time.perf_counter() - t0)
            out.append(table)
        cpu = time.process_time() - cpu0
        result = pa.concat_tables(out)
        del engine
        gc.collect()
    finally:
        torch.set_num_threads(before)
    total = sum(seconds)
    ok = result.filter(pa.compute.equal(result["status"], "ok"))
    return {
        "torch_threads": threads, "items": len(rows), "ok": len(ok), "batches": len(batches),
        "model_load_s": load_s, "warmup_call_s": warmup_s, "seconds": total, "batch_seconds": seconds,
        "cpu_s": cpu, "cpu_per_wall": cpu / total if total > 0 else None,
        "items_per_s": len(rows) / total, "s_per_item": total / len(rows),
        "mean_kept_tokens": float(np.mean(ok["num_kept_tokens"].to_numpy())) if len(ok) else None,
        "mean_visual_tokens": float(np.mean(ok["num_visual_tokens"].to_numpy())) if len(ok) else None,
        "captions": dict(zip(result["id"].to_pylist(), result["caption"].to_pylist())),
    }


# ----------------------------------------------------------------------------- end to end


def start_ray(show_logs: bool) -> float:
    import logging

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, log_to_driver=show_logs)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not show_logs:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return time.perf_counter() - t0


def actor_threads(num_cpus: float) -> dict:
    """torch's thread count in a Ray worker with the model actor's CPU request."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    def probe() -> tuple[int, str | None]:
        import torch

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    threads, omp = ray.get(probe.remote())
    return {"torch_threads": threads, "OMP_NUM_THREADS": omp}


class RunWatcher:
    """The run's observer (`pipeline.run.RunObserver`): polls its ProgressBoard (per-stage rows
    done) every `interval` seconds from a thread, and notes when each output batch reaches the
    driver. Stage counts are reported by the stages when a batch finishes, so the model stage's
    timeline shows each model call's completion (to within `interval`), unaffected by when Ray
    Data gets the results to the driver."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.samples, self.batches, self.error = interval, [], [], None
        self._handle, self._stop = None, None

    def started(self, board) -> None:
        import threading

        self._handle, self._stop = board, threading.Event()
        threading.Thread(target=self._loop, name="bench-board-poller", daemon=True).start()

    def delivered(self, rows: int) -> None:
        self.batches.append((time.perf_counter(), rows))

    def _loop(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                done, _ = ray.get(self._handle.snapshot.remote(), timeout=10)
            except Exception as exc:  # the board is killed at the end of the run
                self.error = self.error or f"{type(exc).__name__}: {exc}"[:200]
                return
            self.samples.append((time.perf_counter(), dict(done)))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def _stage_timeline(samples: list[tuple[float, dict]], t0: float, total: int) -> dict:
    out: dict = {}
    for stage in ("decode", "preprocess", "model", "write"):
        changes, last = [], 0
        for t, done in samples:
            n = done.get(stage, 0)
            if n > last:
                changes.append((t - t0, n))
                last = n
        out[stage] = {"first_s": changes[0][0] if changes else None,
                      "all_done_s": next((t for t, n in changes if n >= total), None), "changes": changes}
    return out


def run_e2e(cfg) -> dict:
    """One `run_pipeline`: its RunReport, output-batch arrivals and the per-stage timeline."""
    from pipeline.run import run_pipeline
    from pipeline.sink import read_results

    watcher = RunWatcher()
    try:
        t0 = time.perf_counter()
        report = run_pipeline(cfg, progress_stream=io.StringIO(), observer=watcher)
        wall = time.perf_counter() - t0
    finally:
        watcher.stop()
    events = watcher.batches
    table = read_results(cfg.output.path)
    total = report.this_run.total
    out = {
        "items": total, "ok": int(pa.compute.sum(pa.compute.equal(table["status"], "ok")).as_py() or 0),
        "report_seconds": report.seconds, "wall_seconds": wall, "all_in_items_per_s": report.items_per_s,
        "output_batches": len(events), "batch_rows": [r for _, r in events],
        "batch_arrival_s": [t - t0 for t, _ in events],
        "first_output_batch_s": events[0][0] - t0 if events else None,
    }
    # Output side: rows after the first output batch / time from the first to the last one.
    out["output_steady_items_per_s"] = None
    if len(events) >= 3:
        span = events[-1][0] - events[0][0]
        out["output_steady_items_per_s"] = sum(r for _, r in events[1:]) / span if span > 0 else None
    # Model stage: rows it finished after its first call / time from that call's end to its last call's end.
    timeline = _stage_timeline(watcher.samples, t0, total)
    out["stages"] = timeline
    out["board_poll_error"] = watcher.error
    model = list(timeline["model"]["changes"])
    out["first_model_batch_s"] = model[0][0] if model else None
    out["model_end_from_output"] = bool(events) and (not model or model[-1][1] < total)
    if out["model_end_from_output"]:
        # The board is killed as the run ends, so the model's last call can finish after the last
        # poll; the last output batch's arrival (a little later, so pessimistic) stands in for it.
        model.append((events[-1][0] - t0, total))
    # Did the model ever wait for input? The backlog is rows preprocessed but not yet through the
    # model, sampled from its first finished call until preprocessing ended (0 there = starved).
    backlog = [d.get("preprocess", 0) - d.get("model", 0) for t, d in watcher.samples
               if model and t - t0 >= model[0][0] and d.get("preprocess", 0) < total]
    out["min_backlog_while_preprocessing"] = min(backlog) if backlog else None
    pre_done = timeline["preprocess"]["all_done_s"]
    out["cpu_stages_items_per_s"] = total / pre_done if pre_done else None
    # The model stage's rate while decode/preprocess tasks still compete for the CPUs, and after.
    out["steady_during_cpu_stages_items_per_s"] = out["steady_after_cpu_stages_items_per_s"] = None
    if pre_done is not None and len(model) >= 2:
        during = [p for p in model if p[0] <= pre_done]
        if len(during) >= 2:
            out["steady_during_cpu_stages_items_per_s"] = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0])
        start = during[-1] if during else model[0]
        if model[-1][0] > start[0]:
            out["steady_after_cpu_stages_items_per_s"] = (model[-1][1] - start[1]) / (model[-1][0] - start[0])
    out["steady_items_per_s"] = None
    if len(model) >= 2 and model[-1][0] > model[0][0]:
        out["steady_items"] = model[-1][1] - model[0][1]
        out["steady_seconds"] = model[-1][0] - model[0][0]
        out["steady_items_per_s"] = out["steady_items"] / out["steady_seconds"]
    else:
        out["steady_note"] = (f"the model stage was seen finishing {len(model)} call(s): a rate without the first "
                              "needs at least 2; use more items or a smaller --rows-per-call")
    failed = table.filter(pa.compute.not_equal(table["status"], "ok"))
    if len(failed):
        out["failed_examples"] = failed.select(["id", "stage", "error"]).slice(0, 3).to_pylist()
    out["captions"] = dict(zip(table["id"].to_pylist(), table["caption"].to_pylist()))
    return out


# ----------------------------------------------------------------------------- report


def _f(x, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render(res: dict) -> str:
    c, m, e = res["config"], res["model_stage"], res["e2e"]
    prep = res["preprocess_per_item"]
    lines = [
        f"iwp-annotate pipeline benchmark — {res['date']} — {res['cpu_count']} CPUs — quick={c['quick']}",
        f"media: {c['videos']} videos ({c['frames']} frames, {VIDEO_SIZE[1]}x{VIDEO_SIZE[0]}, H.264) + {c['images']} PNG images; "
        f"model: random Qwen2.5-VL hidden={c['hidden']} layers={c['layers']}, pruning {c['pruning']}, "
        f"max_new_tokens={c['max_new_tokens']}, rows/call={c['rows_per_call']}",
        f"per item, one process, 1 thread: decode+preprocess {prep['all']['per_item_s']:.3f} s "
        f"(video {_f(prep['video']['decode'], '{:.3f}')}+{_f(prep['video']['preprocess'], '{:.3f}')} s, "
        f"image {_f(prep['image']['decode'], '{:.3f}')}+{_f(prep['image']['preprocess'], '{:.3f}')} s); "
        f"model {m['matched']['s_per_item']:.3f} s -> model/(decode+preprocess) = {res['model_to_cpu_ratio']:.2f}",
        f"Ray model actor: torch threads {res['ray']['actor']['torch_threads']} "
        f"(OMP_NUM_THREADS={res['ray']['actor']['OMP_NUM_THREADS']}); ray.init {res['ray']['init_s']:.1f} s; "
        f"warm-up run ({c['warmup_items']} items) {res['ray']['warmup_run_s']:.1f} s",
        "",
    ]
    ac = m["all_cores"] or {}
    lines.append(f"{'throughput':<58}{'items/s':>9}{'eff.':>8}" + (f"{'eff. vs all-core':>18}" if ac else ""))
    rows = [
        (f"ceiling: model only, pre-decoded, {m['matched']['torch_threads']} thread(s) = actor's", m["matched"]["items_per_s"], None, None),
        *([(f"ceiling: model only, pre-decoded, {res['cpu_count']} threads (all cores)", ac.get("items_per_s"), None, None)] if ac else []),
        ("e2e all-in (RunReport: incl. actor start + model load)", e["all_in_items_per_s"], res["efficiency"]["all_in"], res["efficiency"]["all_in_vs_all_cores"]),
        (f"e2e model stage after its 1st call ({e.get('steady_items', 0)} of {e['items']} items)", e["steady_items_per_s"], res["efficiency"]["steady"], res["efficiency"]["steady_vs_all_cores"]),
        ("  of which: while decode/preprocess tasks still ran", e["steady_during_cpu_stages_items_per_s"], res["efficiency"]["steady_during_cpu_stages"], None),
        ("  of which: after decode/preprocess had finished", e["steady_after_cpu_stages_items_per_s"], res["efficiency"]["steady_after_cpu_stages"], None),
        ("e2e output side after 1st output batch (bursty)", e["output_steady_items_per_s"], res["efficiency"]["output_steady"], None),
        ("bound if decode and model each get 1 core: min(model, decode)", res["two_core_bound_items_per_s"], res["efficiency"]["bound"], None),
    ]
    for name, ips, eff, eff2 in rows:
        lines.append(f"{name:<58}{_f(ips):>9}{_f(eff):>8}" + (f"{_f(eff2):>18}" if ac else ""))
    if e.get("steady_note"):
        lines.append("note: " + e["steady_note"])
    st = e["stages"]
    lines.append(f"target: efficiency >= {TARGET_EFFICIENCY} (vs the matched ceiling) once decode has enough CPU; "
                 f"{e['ok']}/{e['items']} ok; captions equal to the ceiling's for {res['caption_agreement']:.0%} of ids")
    lines.append(f"e2e timeline (s from run_pipeline call): all decoded {_f(st['decode']['all_done_s'], '{:.1f}')}, "
                 f"all preprocessed {_f(st['preprocess']['all_done_s'], '{:.1f}')}, first model call done "
                 f"{_f(e['first_model_batch_s'], '{:.1f}')} (actor start + model load + 1 call), model done "
                 f"{_f(st['model']['all_done_s'], '{:.1f}')}"
                 + (" (last call unseen: last output batch used)" if e["model_end_from_output"] else "")
                 + ", output batches at "
                 + ", ".join(f"{t:.1f}" for t in e["batch_arrival_s"]) + f", returned {e['report_seconds']:.1f}")
    lines.append(f"e2e decode+preprocess stages: {_f(e['cpu_stages_items_per_s'])} items/s over their whole span "
                 f"(sharing CPU with the model actor's start-up); rows preprocessed ahead of the model after its "
                 f"first call, minimum while preprocessing: {_f(e['min_backlog_while_preprocessing'], '{}')} "
                 f"(0 = the model waited for input)")
    lines += ["", f"{'decode, one process, one decoder thread':<52}{'frames/s':>10}{'frames/CPU-s':>14}{'src fr/CPU-s':>14}"]
    names = {"decord_sampled": f"decord, pipeline sampling ({c['num_frames']} of {c['frames']} out)",
             "decord_all": "decord, all frames", "pyav_all": "PyAV, all frames -> rgb24",
             "ffmpeg_all": "ffmpeg CLI -threads 1 -> rawvideo rgb24, 1 proc/file",
             "ffmpeg_concat": "ffmpeg CLI, same, all files in 1 process (concat)", "pil_images": "PIL images (decode_image), images"}
    for key, name in names.items():
        d = res["decode"].get(key)
        if d is None:
            continue
        if d.get("available") is False:
            lines.append(f"{name:<52}{'ffmpeg not on PATH: skipped':>38}")
            continue
        lines.append(f"{name:<52}{d['frames_out_per_s']:>10.1f}{_f(d['frames_out_per_cpu_s'], '{:.1f}'):>14}"
                     f"{_f(d['frames_decoded_per_cpu_s'], '{:.1f}'):>14}")
    lines.append(f"model-stage CPU/wall in the ceiling: {m['matched']['torch_threads']} thread {_f(m['matched']['cpu_per_wall'])}"
                 + (f", {ac['torch_threads']} threads {_f(ac['cpu_per_wall'])}" if ac else
                    " (all-cores ceiling not run: --all-cores-ceiling)")
                 + "; well below the thread count means the process was starved of CPU")
    lines.append(f"load average before {res['loadavg']['before']}, after {res['loadavg']['after']}, by phase (1-min) "
                 + ", ".join(f"{k.removeprefix('before_')} {v[0]}" for k, v in res['loadavg']['by_phase'].items())
                 + f"; total {res['runtime_s']:.0f} s")
    if res["ray"]["actor"]["torch_threads"] != m["matched"]["torch_threads"]:
        lines.append(f"WARNING: the ceiling ran with {m['matched']['torch_threads']} torch thread(s) but the model actor "
                     f"got {res['ray']['actor']['torch_threads']}: the efficiency compares unlike things")
    busy = max([res['loadavg']['before'][0]] + [v[0] for v in res['loadavg']['by_phase'].values()])
    if busy > 0.5 * res["cpu_count"]:
        lines.append(f"WARNING: other work was running (1-min load up to {busy} on {res['cpu_count']} CPUs); "
                     "every figure above is pessimistic and less repeatable")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


class Phases:
    """Wall time and the load average at the start of each phase of the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.loads: dict[str, list[float]] = {}

    def mark(self, name: str) -> None:
        self.loads[name] = [round(x, 2) for x in os.getloadavg()]


def end_to_end(cfg, warm_manifest: Path, work: Path, show_logs: bool, phases: Phases) -> dict:
    """Ray up, the actor's thread count, a warm-up run, then the measured run."""
    import ray

    init_s = start_ray(show_logs)
    try:
        actor = actor_threads(cfg.resources.cpus_per_model_actor)
        tw = time.perf_counter()
        warm_output = cfg.output.model_copy(update={"path": str(work / "warm-out")})
        warm = run_e2e(cfg.model_copy(update={"input": str(warm_manifest), "output": warm_output}))
        warm_s = time.perf_counter() - tw
        print(f"[bench] ray up ({init_s:.1f} s), warm-up run {warm_s:.1f} s", flush=True)
        phases.mark("before_e2e_measured_run")
        e2e = run_e2e(cfg)
    finally:
        ray.shutdown()
    warm.pop("captions", None)
    print(f"[bench] e2e {e2e['all_in_items_per_s']:.2f} items/s all-in", flush=True)
    return {"ray": {"init_s": init_s, "actor": actor, "warmup_run_s": warm_s, "warmup_run": warm}, "e2e": e2e}


def efficiency(e2e: dict, ceiling_ips: float, all_cores: dict | None, bound: float, cfg, cpu_count: int) -> dict:
    """Each e2e rate over the matched ceiling (and over the all-cores one where it ran)."""
    def ratio(a, b):
        return a / b if a is not None and b else None

    every = all_cores and all_cores["items_per_s"]
    return {
        "target": TARGET_EFFICIENCY,
        "all_in": ratio(e2e["all_in_items_per_s"], ceiling_ips),
        "steady": ratio(e2e["steady_items_per_s"], ceiling_ips),
        "all_in_vs_all_cores": ratio(e2e["all_in_items_per_s"], every),
        "steady_during_cpu_stages": ratio(e2e["steady_during_cpu_stages_items_per_s"], ceiling_ips),
        "steady_after_cpu_stages": ratio(e2e["steady_after_cpu_stages_items_per_s"], ceiling_ips),
        "output_steady": ratio(e2e["output_steady_items_per_s"], ceiling_ips),
        "steady_vs_all_cores": ratio(e2e["steady_items_per_s"], every),
        "bound": ratio(bound, ceiling_ips),
        "definition": "e2e items/s / ceiling items/s; ceiling = ModelEngine alone on pre-decoded, "
                      "pre-processed batches in one process with the actor's torch thread count",
        "note": (f"{cpu_count} CPUs: Ray runs the model actor on {cfg.resources.cpus_per_model_actor:g} CPU and decode/"
                 f"preprocess tasks on the rest, sharing them with Ray's own processes; the >= "
                 f"{TARGET_EFFICIENCY} target applies once decode has enough CPU of its own"),
    }


def measure(args: argparse.Namespace, work: Path, phases: Phases) -> dict:
    """Media, model and config; then decode, the ceiling and the end-to-end runs, in that order."""
    from tests.support.tiny_models import build_tiny_model

    t0 = time.perf_counter()
    rows = make_media(work, args.videos, args.images, args.frames, args.fps)
    phases.seconds["make_media_s"] = time.perf_counter() - t0
    manifest = write_manifest(rows, work / "manifest.parquet")
    warm_rows = [{**r, "id": "warm-" + r["id"]} for r in rows[: max(1, args.warmup_items)]]
    warm_manifest = write_manifest(warm_rows, work / "warmup.parquet")
    t0 = time.perf_counter()
    model_path = build_tiny_model(work / "model", hidden=args.hidden, layers=args.layers)
    phases.seconds["build_model_s"] = time.perf_counter() - t0
    cfg = make_config(args, model_path, manifest, work / "out")
    if cfg.pruning.method != "none" and args.layers <= cfg.pruning.layer:
        raise SystemExit(f"--layers must exceed the pruning layer {cfg.pruning.layer}")
    print(f"[bench] {len(rows)} items in {work}; model hidden={args.hidden} layers={args.layers}", flush=True)

    phases.mark("before_decode")
    t0 = time.perf_counter()
    decode = decode_bench([r["uri"] for r in rows if r["media_type"] == "video"],
                          [r["uri"] for r in rows if r["media_type"] == "image"], cfg.sampling, args.frames,
                          args.decode_repeats, work)
    phases.seconds["decode_bench_s"] = time.perf_counter() - t0
    print("[bench] decode done", flush=True)

    phases.mark("before_prepare")
    t0 = time.perf_counter()
    prepared, prep = prepare_rows(cfg, rows)
    phases.seconds["prepare_s"] = time.perf_counter() - t0
    matched_threads, cpu_count = max(1, int(cfg.resources.cpus_per_model_actor)), os.cpu_count() or 1
    phases.mark("before_ceiling")
    t0 = time.perf_counter()
    matched = ceiling(cfg, prepared, matched_threads)
    all_cores = None
    if args.all_cores_ceiling:
        all_cores = ceiling(cfg, prepared, cpu_count) if cpu_count != matched_threads else dict(matched)
    phases.seconds["ceiling_s"] = time.perf_counter() - t0
    del prepared
    gc.collect()
    print(f"[bench] ceiling {matched['items_per_s']:.2f} items/s ({matched_threads} thread)", flush=True)

    phases.mark("before_e2e")
    t0 = time.perf_counter()
    run = end_to_end(cfg, warm_manifest, work, args.ray_logs, phases)
    phases.seconds["e2e_s"] = time.perf_counter() - t0

    e2e, ceiling_ips = run["e2e"], matched["items_per_s"]
    bound = min(ceiling_ips, 1.0 / prep["all"]["per_item_s"])
    ceiling_caps, e2e_caps = matched.pop("captions"), e2e.pop("captions")
    if all_cores is not None:
        all_cores.pop("captions", None)
    return {
        "config": {
            "quick": args.quick, "videos": args.videos, "images": args.images, "frames": args.frames,
            "fps": args.fps, "video_size_hw": VIDEO_SIZE, "image_size_hw": IMAGE_SIZE, "hidden": args.hidden,
            "layers": args.layers, "rows_per_call": args.rows_per_call, "all_cores_ceiling": args.all_cores_ceiling,
            "max_new_tokens": args.max_new_tokens, "num_frames": cfg.sampling.num_frames,
            "warmup_items": len(warm_rows), "decode_repeats": args.decode_repeats,
            "pruning": f"{cfg.pruning.method} keep {cfg.pruning.keep_ratio} at layer {cfg.pruning.layer}",
            "pipeline_config": json.loads(cfg.model_dump_json()),
        },
        "versions": versions(),
        "preprocess_per_item": prep,
        "model_stage": {"matched": matched, "all_cores": all_cores},
        "model_to_cpu_ratio": matched["s_per_item"] / prep["all"]["per_item_s"],
        "two_core_bound_items_per_s": bound,
        **run,
        "efficiency": efficiency(e2e, ceiling_ips, all_cores, bound, cfg, cpu_count),
        "caption_agreement": sum(ceiling_caps.get(k) == v for k, v in e2e_caps.items()) / max(len(e2e_caps), 1),
        "decode": decode,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before, phases = time.perf_counter(), os.getloadavg(), Phases()
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        measured = measure(args, work, phases)
    res = {"benchmark": "bench_pipeline", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cpu_count": os.cpu_count() or 1, "config": measured.pop("config"), "versions": measured.pop("versions"),
           "loadavg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()],
                       "by_phase": phases.loads},
           "phases_s": phases.seconds, **measured, "runtime_s": time.perf_counter() - started}
    print()
    print(render(res))
    write_json(args.out, res, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
