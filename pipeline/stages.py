"""The callables Ray Data runs for the stages: per-row functions over a batch, and the model actor.

Decode and preprocess are written per row (simple to test, one failure per row); `run_stage`
gives Ray Data a batch function and does the bookkeeping once per batch. `ModelStage` is the
model actor's class: it builds `pipeline.engine.ModelEngine` inside the actor, so the driver,
which only names the class, never imports torch and transformers (1.5-2 s of every run's
start-up, spent before Ray could start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline.metrics import stage_metrics
from pipeline.progress import report
from pipeline.schema import OK


class ModelStage:
    """`map_batches` callable class for the model actor; see `pipeline.engine.ModelEngine`."""

    def __init__(self, **kwargs: Any) -> None:
        from pipeline.engine import ModelEngine

        self.engine = ModelEngine(**kwargs)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        return self.engine(batch)


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
