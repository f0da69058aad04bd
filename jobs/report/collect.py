"""What the report shows, read from an output (local or object store) without changing it.

Everything comes from the output itself: result rows (`pipeline.sink.read_results`), the dead
letter's location, and the per-run log under `_runs/` (counts, times, the run's settings).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.manifest import ManifestError, read_manifest
from pipeline.runlog import read_records
from pipeline.schema import FAILED, OK
from pipeline.sink import DEAD_LETTER_DIR, best_first, read_results, subdir

EXAMPLES_PER_FAILURE = 3
FIDELITY_BINS = 20


@dataclass(frozen=True)
class FailureGroup:
    error_type: str
    stage: str
    count: int
    examples: list[dict[str, str]]  # id, error, run_id


@dataclass
class RunStats:
    run_id: str
    status: str
    started: str
    ended: str | None
    items: int
    seconds: float | None

    @property
    def items_per_s(self) -> float | None:
        return self.items / self.seconds if self.seconds else None


@dataclass
class OutputView:
    output: str
    table: pa.Table  # one row per id, sorted by id
    runs: list[RunStats]
    settings: dict[str, Any] | None
    fingerprints: list[str]
    failures: list[FailureGroup] = field(default_factory=list)

    @property
    def dead_letter(self) -> str:
        return subdir(self.output, DEAD_LETTER_DIR)

    def count(self, status: str) -> int:
        return int(pc.sum(pc.equal(self.table["status"], status)).as_py() or 0)

    def ok_rows(self) -> pa.Table:
        return self.table.filter(pc.equal(self.table["status"], OK))

    def tokens(self) -> tuple[int, int]:
        ok = self.ok_rows()
        return (int(pc.sum(ok["num_visual_tokens"]).as_py() or 0), int(pc.sum(ok["num_kept_tokens"]).as_py() or 0))

    def items_per_s(self) -> float | None:
        timed = [r for r in self.runs if r.seconds]
        seconds = sum(r.seconds for r in timed)
        return sum(r.items for r in timed) / seconds if seconds else None

    def recorded_kept(self) -> int:
        ok = self.ok_rows()
        return len(ok) - ok["kept_token_indices"].null_count

    def fidelity_histogram(self) -> list[int]:
        values = [v for v in self.ok_rows()["weight_fidelity"].to_pylist() if v is not None and not math.isnan(v)]
        counts = [0] * FIDELITY_BINS
        for v in values:
            counts[min(FIDELITY_BINS - 1, max(0, int(v * FIDELITY_BINS)))] += 1
        return counts


def _seconds(started: str, ended: str | None) -> float | None:
    if not ended:
        return None
    stamp = "%Y-%m-%dT%H:%M:%SZ"  # the run log's format, whole seconds
    return max((datetime.strptime(ended, stamp) - datetime.strptime(started, stamp)).total_seconds(), 1.0)


def _failures(table: pa.Table) -> list[FailureGroup]:
    failed = table.filter(pc.equal(table["status"], FAILED))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in failed.select(["id", "error_type", "error", "stage", "run_id"]).to_pylist():
        groups[(row["error_type"] or "unknown", row["stage"] or "unknown")].append(row)
    out = [FailureGroup(kind, stage, len(rows), [{"id": r["id"], "error": r["error"] or "", "run_id": r["run_id"] or ""}
                                                 for r in rows[:EXAMPLES_PER_FAILURE]])
           for (kind, stage), rows in groups.items()]
    return sorted(out, key=lambda g: (-g.count, g.error_type, g.stage))


def _with_clip_windows(table: pa.Table, inputs: list[str]) -> pa.Table:
    """Fill each row's clip window from the runs' manifests where the results lack it (rows
    written before results carried `start_s`/`end_s`), so a thumbnail shows the frames the model
    saw; an unreadable manifest leaves the whole video."""
    if not pc.any(pc.and_(pc.is_null(table["start_s"]), pc.is_null(table["end_s"]))).as_py():
        return table
    windows: dict[str, tuple[float | None, float | None]] = {}
    for uri in dict.fromkeys(inputs):
        try:
            manifest = read_manifest(uri)
        except (ManifestError, OSError):
            continue
        windows.update(zip(manifest["id"].to_pylist(), zip(manifest["start_s"].to_pylist(), manifest["end_s"].to_pylist())))
    found = [windows.get(i, (None, None)) for i in table["id"].to_pylist()]
    for n, name in enumerate(("start_s", "end_s")):
        column = pc.coalesce(table[name], pa.array([w[n] for w in found], pa.float64()))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def read_output(output: str) -> OutputView:
    """The output's rows (one per id: the best, as a rerun keeps it) and its run history."""
    table = read_results(output)
    if len(table) > pc.count_distinct(table["id"]).as_py():
        order, first = best_first(table)
        table = order.filter(first)
    records = read_records(output)
    if not len(table) and not records:
        raise FileNotFoundError(f"{output!r} holds no job output (no results/ files, no _runs/ log)")
    table = _with_clip_windows(table.sort_by("id"), [r["input"] for r in records])
    runs = [RunStats(r["run_id"], r["status"], r["started"], r.get("ended"), int(r.get("ok", 0)) + int(r.get("failed", 0)),
                     _seconds(r["started"], r.get("ended"))) for r in records]
    settings = next((r["settings"] for r in reversed(records) if r.get("settings")), None)
    fingerprints = sorted(set(table["fingerprint"].drop_null().to_pylist()))
    return OutputView(output, table, runs, settings, fingerprints, _failures(table))
