"""The callables Ray Data runs for the stages: per-row functions over a batch, and the model actor.

Decode and preprocess are written per row (simple to test, one failure per row); `run_stages`
gives Ray Data one batch function for both and does the bookkeeping once per batch and stage.
`ModelStage` is the model actor's class: it builds `pipeline.engine.ModelEngine` inside the
actor, so the driver, which only names the class, never imports torch and transformers (the
"driver imports" start-up part of `benchmarks.bench_naive`), before Ray could even start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


def run_stages(table: pa.Table, *, steps: Sequence[tuple[str, Callable[..., dict], dict[str, Any]]], board: Any,
               tags: dict[str, str]) -> pa.Table:
    """Each `(stage, fn, kwargs)` step over every row of the batch in turn, in this one task.

    Decode and preprocess run as one Ray task per batch: the decoded frames go to the processor
    inside the worker, instead of through the object store to a second task. Each stage reports
    its rows when the batch has passed it, so a stall still names the stage it is in.
    """
    metrics = stage_metrics()
    rows = table.to_pylist()
    for stage, fn, kwargs in steps:
        for i, row in enumerate(rows):
            started = time.perf_counter()
            row = rows[i] = fn(row, **kwargs)
            metrics.stage_latency.observe(time.perf_counter() - started, tags={**tags, "stage": stage})
            if stage == "decode" and row["status"] == OK:
                metrics.frames.inc(row["num_frames"], tags=tags)
            if stage == "preprocess":
                row["ready_at"] = time.time()
        report(board, stage, len(rows))
    return pa.Table.from_pylist(rows)
