"""The one definition of the rows that flow through the pipeline and land in Parquet.

Every stage works on the same row shape: a failure anywhere sets `status="failed"` with
`error_type`, `error` and `stage`, and later stages pass such rows through untouched, so
no manifest id is ever dropped.
"""

from __future__ import annotations

import math

import pyarrow as pa

from pipeline.token_grid import KEPT_TOKENS_TYPE

OK, FAILED = "ok", "failed"

RESULT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("media_type", pa.string()),
        pa.field("source_id", pa.string()),  # the manifest id; a clip's id is "<source_id>#<clip_index>"
        pa.field("clip_index", pa.int32()),  # null on rows that are not clips (unsplit, images, unplannable)
        pa.field("start_s", pa.float64()),  # the window decoded, seconds from the video's start; null = all
        pa.field("end_s", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("tags_unknown", pa.int32()),
        pa.field("answer", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("error", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("model", pa.string()),
        pa.field("task", pa.string()),
        pa.field("num_frames", pa.int32()),
        pa.field("num_visual_tokens", pa.int32()),
        pa.field("num_kept_tokens", pa.int32()),
        pa.field("weight_fidelity", pa.float32()),
        pa.field("kept_token_indices", KEPT_TOKENS_TYPE),  # only with output.record_kept_tokens
        pa.field("latency_s", pa.float64()),
        pa.field("attempt", pa.int32()),
        pa.field("run_id", pa.string()),
        pa.field("fingerprint", pa.string()),
    ]
)

def mark_failed(row: dict, stage: str, exc: BaseException) -> dict:
    """Record a per-item failure on the row instead of raising, so the row keeps flowing."""
    row.update(
        status=FAILED,
        stage=stage,
        error_type=type(exc).__name__,
        error=str(exc)[:2000] or type(exc).__name__,
    )
    return row


def to_result_table(rows: list[dict]) -> pa.Table:
    """Project rows onto RESULT_SCHEMA so every written file has the same schema."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in RESULT_SCHEMA}
    return pa.Table.from_pydict(columns, schema=RESULT_SCHEMA)


def is_present(value) -> bool:
    """True for a real value: Ray hands missing manifest cells over as None or NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))
