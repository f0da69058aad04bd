"""Which video decoder the decode stage should use: time to take the sampled frames of one clip.

For each codec (H.264 and AV1, 640x480, 30 fps, `--seconds` long, made with PyAV), each
decoder importable here takes `--frames` uniformly sampled frames, resized to 448 on the long
side, in one process with one thread: decord (seeking, as `pipeline.decode` does) and PyAV
(decoding in order up to the last sampled frame, the fallback path). Reported: seconds per
clip and sampled frames per second of one core, the best of `--repeats`. Beside them, where an
`ffmpeg` binary is on PATH, the ffmpeg CLI takes the same number of frames the fastest way it
can, one seeking call per frame (`-ss T -i clip -frames:v 1`, one decoder thread, scaled to 448,
raw rgb24 to a pipe); its figure is frames per CPU-second of the ffmpeg processes, so process
start-up is counted, as it would be for a pipeline that shelled out to ffmpeg. The `decord` module
is whichever is on the path: run once as is (decord 0.6.0) and once with decord2 first on
PYTHONPATH (`pip install --target DIR decord2`; same module name) to compare the two.

Usage: ``python -m benchmarks.bench_decoders [--seconds 30] [--frames 8] [--repeats 3] [--out PATH]``.
Prints a table and writes JSON (default benchmarks/results/cpu/bench_decoders.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from pipeline.config import SamplingConfig
from pipeline.decode import _decode_decord, _decode_pyav
from pipeline.storage import MediaError

ENCODERS = {"h264": ("libx264", "mp4"), "av1": ("libsvtav1", "mkv")}


def clip(path: Path, encoder: str, seconds: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(30 * seconds):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * i, 1), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def best(fn, repeats: int) -> float | None:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            fn()
        except MediaError:
            return None
        times.append(time.perf_counter() - started)
    return min(times)


def ffmpeg_cpu_seconds(ffmpeg: str, path: Path, seconds: int, frames: int) -> float:
    """CPU seconds the ffmpeg CLI spends taking `frames` frames spread uniformly over the clip."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i in range(frames):
        at = (i + 0.5) * seconds / frames
        subprocess.run([ffmpeg, "-v", "error", "-threads", "1", "-ss", f"{at:.3f}", "-i", str(path), "-frames:v", "1",
                        "-vf", "scale=448:-2", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                       check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    import decord

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu" / "bench_decoders.json")
    args = p.parse_args()
    cfg = SamplingConfig(num_frames=args.frames, max_side=448)
    decord_name = f"decord {getattr(decord, '__version__', '?')} ({Path(decord.__file__).parent})"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec, (encoder, suffix) in ENCODERS.items():
            path = Path(tmp) / f"clip.{suffix}"
            clip(path, encoder, args.seconds)
            refused = MediaError("refused")
            for decoder, fn in (("decord", lambda: _decode_decord(str(path), "clip", cfg, None, None)),
                                ("pyav", lambda: _decode_pyav(str(path), "clip", cfg, None, None, refused))):
                seconds = best(fn, args.repeats)
                rows.append({"codec": codec, "decoder": decoder, "seconds": None if seconds is None else round(seconds, 3),
                             "sampled_frames_per_s": None if seconds is None else round(args.frames / seconds, 1)})
            ffmpeg = shutil.which("ffmpeg")
            if ffmpeg:
                cpu = min(ffmpeg_cpu_seconds(ffmpeg, path, args.seconds, args.frames) for _ in range(args.repeats))
                rows.append({"codec": codec, "decoder": "ffmpeg-cli", "seconds": round(cpu, 3),
                             "sampled_frames_per_s": round(args.frames / cpu, 1), "seconds_are": "cpu"})
    print(f"{decord_name}; {args.seconds} s 640x480 clips, {args.frames} frames sampled")
    print(f"{'codec':>6} {'decoder':>8} {'s/clip':>8} {'frames/s':>9}")
    for r in rows:
        print(f"{r['codec']:>6} {r['decoder']:>8} {str(r['seconds'] or 'cannot'):>8} {str(r['sampled_frames_per_s'] or '-'):>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                    "decord": decord_name, "rows": rows, "args": vars(args) | {"out": str(args.out)}},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
