"""How long and how much memory planning a very large manifest takes, before any media is read.

Writes a manifest of `--rows` rows (ids and URIs of files that do not exist, so any media
access would fail), then in a fresh process times each planning step the driver runs
(`read_manifest` with validation, `plan_resume` against an empty output, `blocks_of`,
`ray.data.from_arrow` on a local Ray instance started beforehand) and reports the
process's peak RSS before and after planning.

Usage: ``python -m benchmarks.bench_planning [--rows N] [--out PATH]`` (under a minute for 1M
rows on 2 cores). Prints a table and writes JSON to benchmarks/results/cpu/bench_planning.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import memory
from benchmarks.harness.report import RESULTS, table, write_json

STEPS = ("read_and_validate_s", "plan_resume_s", "blocks_of_s", "from_arrow_s")


def measure(manifest: str, output: str) -> dict:
    """Runs in a fresh process, so the peak RSS is planning's own."""
    import ray

    from pipeline.manifest import read_manifest
    from pipeline.run import blocks_of
    from pipeline.sink import plan_resume

    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.ERROR)
    before = memory.peak_rss_mib()
    steps = {}
    started = mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        steps[name] = time.perf_counter() - mark
        mark = time.perf_counter()

    manifest_table = read_manifest(manifest)
    step("read_and_validate_s")
    todo = plan_resume(output, manifest_table, "fingerprint", retry_failed=False)
    step("plan_resume_s")
    blocks = blocks_of(todo)
    step("blocks_of_s")
    ray.data.from_arrow(blocks)
    step("from_arrow_s")
    steps["total_s"] = time.perf_counter() - started
    return {"rows": len(todo), "blocks": len(blocks), **{k: round(v, 2) for k, v in steps.items()},
            "peak_rss_before_mib": round(before), "peak_rss_after_mib": round(memory.peak_rss_mib())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=RESULTS / "cpu" / "bench_planning.json")
    p.add_argument("--measure", nargs=2, metavar=("MANIFEST", "OUTPUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.parquet"
        ids = pa.array([f"id-{i:07d}" for i in range(args.rows)])
        uris = pa.array([f"/nonexistent/media/{i:07d}.mp4" for i in range(args.rows)])
        pq.write_table(pa.table({"id": ids, "uri": uris}), manifest)
        result = memory.in_fresh_process("benchmarks.bench_planning", "--measure", str(manifest), str(Path(tmp) / "out"))
        result["manifest_bytes"] = manifest.stat().st_size
    result.update(date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cpus=os.cpu_count(), load_avg=os.getloadavg())
    keys = ("rows", "blocks", "manifest_bytes", *STEPS, "total_s", "peak_rss_before_mib", "peak_rss_after_mib")
    print(table((("measure", -22), ("value", 12)), [(k, result[k]) for k in keys]))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
