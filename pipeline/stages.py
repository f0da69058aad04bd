"""Run a per-row stage function over a Ray Data batch, with its metrics and progress report.

Decode and preprocess are written per row (simple to test, one failure per row); this
adapter gives Ray Data a batch function and does the bookkeeping once per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline.metrics import stage_metrics
from pipeline.progress import report
from pipeline.schema import OK


def run_stage(table: pa.Table, *, fn: Callable[..., dict], stage: str, board: Any, tags: dict[str, str],
              **kwargs: Any) -> pa.Table:
    metrics = stage_metrics()
    out = []
    for row in table.to_pylist():
        started = time.perf_counter()
        row = fn(row, **kwargs)
        metrics.stage_latency.observe(time.perf_counter() - started, tags={**tags, "stage": stage})
        if stage == "decode" and row["status"] == OK:
            metrics.frames.inc(row["num_frames"], tags=tags)
        if stage == "preprocess":
            row["ready_at"] = time.time()
        out.append(row)
    report(board, stage, len(out))
    return pa.Table.from_pylist(out)
