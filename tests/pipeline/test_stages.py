"""`run_stages`: decode and preprocess in one task, each stage reported once the batch has passed it."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

from pipeline.stages import run_stages

TAGS = {"job": "j", "task": "caption", "method": "iwp"}


def test_each_stage_passes_the_whole_batch_and_reports_before_the_next_starts():
    events: list[tuple] = []
    board = SimpleNamespace(finished=SimpleNamespace(remote=lambda stage, rows, key=None: events.append(("report", stage, rows))))

    def decode(row, scale):
        events.append(("decode", row["id"]))
        return {**row, "status": "ok", "num_frames": 2, "value": row["value"] * scale}

    def preprocess(row):
        events.append(("preprocess", row["id"]))
        return {**row, "value": row["value"] + 1}

    table = pa.Table.from_pylist([{"id": "a", "value": 1}, {"id": "b", "value": 2}])
    out = run_stages(table, steps=[("decode", decode, {"scale": 10}), ("preprocess", preprocess, {})], board=board,
                     tags=TAGS).to_pylist()
    assert events == [("decode", "a"), ("decode", "b"), ("report", "decode", 2),
                      ("preprocess", "a"), ("preprocess", "b"), ("report", "preprocess", 2)]
    assert [r["value"] for r in out] == [11, 21]
    assert all(r["ready_at"] > 0 for r in out)  # stamped after preprocess, for the model's queue-wait metric
