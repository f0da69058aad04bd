"""How the report scales: the time to write it over a large output, the size of what a browser
loads, and the cost of the pictures per item (first report) and of a second report (cached).

Writes a synthetic output of `--rows` result rows (failed rows of a few error types with
caption-length messages: no media, so this times reading, grouping and the data scripts), and
`--picture-rows` ok rows that each name one real generated image (so each is decoded and drawn,
with a recorded token grid); then writes the report twice into the same folder.

Usage: ``python benchmarks/bench_report.py [--rows N] [--picture-rows N] [--out PATH]``.
Prints a table and writes JSON to benchmarks/results/bench_report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.report import write_report  # noqa: E402
from pipeline.schema import RESULT_SCHEMA  # noqa: E402
from pipeline.token_grid import QWEN, TokenGrid, kept_tokens_value  # noqa: E402
from scenes.media import write_image  # noqa: E402

ERRORS = (("MediaError", "decode"), ("DecodeTimeout", "decode"), ("OutOfMemoryError", "model"))


def synthetic_output(root: Path, rows: int, picture_rows: int) -> str:
    image = root / "image.png"
    write_image(image, seed=3)
    grid = TokenGrid(QWEN, 1, 16, 16, merge_size=2, temporal_patch_size=2)  # 64 tokens
    out = []
    for i in range(rows):
        kind, stage = ERRORS[i % len(ERRORS)]
        out.append({"id": f"item-{i:07d}", "uri": f"/nowhere/{i}.mp4", "media_type": "video", "status": "failed",
                    "error_type": kind, "stage": stage, "error": f"a large blue circle at bottom center moving left {i}",
                    "attempt": 1, "run_id": "bench", "fingerprint": "bench"})
    for i in range(picture_rows):
        out.append({"id": f"pic-{i:05d}", "uri": str(image), "media_type": "image", "status": "ok", "caption": "a shape",
                    "num_frames": 1, "num_visual_tokens": 64, "num_kept_tokens": 16, "weight_fidelity": 0.95,
                    "kept_token_indices": kept_tokens_value(grid, tuple(range(0, 64, 4)), 64), "attempt": 1,
                    "run_id": "bench", "fingerprint": "bench"})
    results = root / "output" / "results" / "date=2026-01-01"
    results.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(out, schema=RESULT_SCHEMA), results / "part-bench.parquet")
    return str(root / "output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--picture-rows", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_report.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        output = synthetic_output(root, args.rows, args.picture_rows)
        site = root / "site"
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            write_report(output, str(site))
            timings.append(time.perf_counter() - started)
        pages = sorted((site / "data").glob("page-*.js"))
        result = {
            "rows": args.rows + args.picture_rows,
            "picture_rows": args.picture_rows,
            "first_report_s": round(timings[0], 2),
            "second_report_s": round(timings[1], 2),
            "pages": len(pages),
            "largest_page_kib": round(max(p.stat().st_size for p in pages) / 1024, 1),
            "search_index_mib": round((site / "data" / "search.js").stat().st_size / 2**20, 2),
            "index_html_kib": round((site / "index.html").stat().st_size / 1024, 1),
            "pictures": len(list((site / "thumbs").glob("*"))) + len(list((site / "overlays").glob("*"))),
        }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
