"""Object storage costs on a real S3 API server on loopback (moto, `tests.support.s3`).

- fetch: for each video size, one item decoded by the pipeline's own `decode_media` in a fresh
  process through a counting TCP relay: bytes fetched / object size, the process's peak RSS (VmHWM),
  and the decode time; then MB/s of the fetch alone (`pipeline.storage.spooled`, direct).
  The videos are uncompressed (rawvideo in Matroska), so any size is quick to make and every
  byte is real media; 8 frames are sampled and resized as in a job.
- resume: ROWS result rows in FILES Parquet files under OUTPUT/results, then the time of one
  listing, and of `plan_resume` (listing + reads of `id`, `status`, `attempt`, `fingerprint`
  only) against a manifest of the same ids.

Usage: ``python -m benchmarks.bench_storage [--sizes-mb 10,1024] [--rows 100000] [--files 1000] [--out PATH]``.
Prints a table and writes JSON (default benchmarks/results/cpu/bench_storage.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tests.support.s3 import Relay, S3Server

CHILD = """
import json, sys, time
from pipeline.config import SamplingConfig
from pipeline.decode import decode_media
from pipeline.storage import spooled
uri, cap, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
if mode == "decode":
    frames, _ = decode_media(uri, "video", SamplingConfig(num_frames=8, max_side=448, max_media_bytes=cap), None, None)
    shape = list(frames.shape)
else:
    with spooled(uri, cap):
        shape = None
# VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024, "frames": shape}))
"""


def raw_video(path: Path, megabytes: int) -> int:
    """An uncompressed 640x480 video of about `megabytes` MB (460,800 bytes a frame)."""
    frames = max(8, megabytes * 1_000_000 // (640 * 480 * 3 // 2))
    base = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, i, 1), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.stat().st_size


def child(uri: str, mode: str, env: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, uri, str(1 << 40), mode], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def fetch_rows(server: S3Server, sizes_mb: list[int], work: Path) -> list[dict]:
    relay = Relay(server.port)
    out = []
    try:
        for mb in sizes_mb:
            local = work / f"video-{mb}mb.mkv"
            size = raw_video(local, mb)
            uri = server.upload(local, f"s3://bench/media/{local.name}")
            local.unlink()
            relay.bytes_to_client = 0
            decoded = child(uri, "decode", server.env(relay.endpoint))
            fetched = relay.bytes_to_client
            alone = child(uri, "fetch", server.env())
            server.filesystem().delete_file(uri.removeprefix("s3://"))
            out.append({"object_mb": round(size / 1e6, 1), "bytes_fetched_over_size": round(fetched / size, 4),
                        "decode_peak_rss_mb": round(decoded["peak_rss_mb"], 1), "decode_s": round(decoded["seconds"], 2),
                        "frames": decoded["frames"], "fetch_mb_per_s": round(size / 1e6 / alone["seconds"], 1)})
    finally:
        relay.down()
    return out


def resume_row(server: S3Server, rows: int, files: int) -> dict:
    from pipeline.schema import RESULT_SCHEMA
    from pipeline.sink import plan_resume

    fs, output, fingerprint = server.filesystem(), "s3://bench/out", "f" * 16
    ids = [f"item-{i:07d}" for i in range(rows)]
    per = -(-rows // files)
    started = time.perf_counter()
    for n, first in enumerate(range(0, rows, per)):
        chunk = ids[first:first + per]
        table = pa.Table.from_pylist([{"id": i, "uri": f"s3://bench/media/{i}.mp4", "status": "ok", "caption": "a caption .",
                                       "attempt": 1, "run_id": "bench", "fingerprint": fingerprint} for i in chunk],
                                     schema=RESULT_SCHEMA)
        pq.write_table(table, f"bench/out/results/date=2026-01-01/part-{n:05d}.parquet", filesystem=fs)
    written = time.perf_counter() - started
    os.environ.update(server.env())
    started = time.perf_counter()
    listed = [i for i in fs.get_file_info(pafs.FileSelector("bench/out/results", recursive=True)) if i.is_file]
    listing = time.perf_counter() - started
    manifest = pa.table({"id": ids, "uri": [f"s3://bench/media/{i}.mp4" for i in ids]})
    started = time.perf_counter()
    todo = plan_resume(output, manifest, fingerprint, retry_failed=False)
    resume = time.perf_counter() - started
    assert len(listed) == files and len(todo) == 0
    return {"rows": rows, "files": files, "write_s": round(written, 1), "listing_s": round(listing, 2),
            "plan_resume_s": round(resume, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", default="10,1024", help="video sizes to fetch and decode, comma-separated")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu" / "bench_storage.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(log=Path(tmp) / "moto.log")
        try:
            server.bucket("bench")
            fetch = fetch_rows(server, [int(s) for s in args.sizes_mb.split(",")], Path(tmp))
            resume = resume_row(server, args.rows, args.files) if args.rows else None
        finally:
            server.stop()
    print(f"{'object MB':>10} {'fetched/size':>13} {'peak RSS MB':>12} {'decode s':>9} {'fetch MB/s':>11}")
    for r in fetch:
        print(f"{r['object_mb']:>10} {r['bytes_fetched_over_size']:>13} {r['decode_peak_rss_mb']:>12} {r['decode_s']:>9} "
              f"{r['fetch_mb_per_s']:>11}")
    if resume:
        print(f"resume: {resume['rows']} rows in {resume['files']} files: listing {resume['listing_s']} s, "
              f"plan_resume {resume['plan_resume_s']} s (writing them took {resume['write_s']} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                    "server": "moto (python -m moto.server) on 127.0.0.1", "fetch": fetch,
                                    "resume": resume, "args": {"sizes_mb": args.sizes_mb, "rows": args.rows,
                                                               "files": args.files}}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
