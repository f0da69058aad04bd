"""Clip plans: which clips each source video is split into, made once, recorded, then trusted.

The plan stage (`plan_batch`) runs on CPU workers between reading the manifest and decoding:
a source row comes in, its clip rows go out (`id` = `<source id>#<clip index>`, with the
clip's `start_s`/`end_s`), and before any of them leaves, the batch's plans are written to
`OUTPUT/_plans/part-<hash>.parquet` whole or not at all (through the sink's writer, so on
an object store too). A rerun reads the plans (`read_plans`), turns planned sources straight
into their clip rows without opening the media (`expected_rows`), and sends only sources
without a plan to the stage; the expected rows are also what `sink.fill_missing` checks, so a
clip that never came back becomes a failed row instead of being lost.

A source that cannot be opened, probed or cut is one failed row with the source's own id and
a null `clip_index`; images are never split (one row, as without clips). No plan is recorded
for either, so `--retry-failed` probes a failed source again.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.clips import Window, plan_video
from pipeline.config import ClipsConfig, DecodeIsolationConfig
from pipeline.manifest import ManifestError, infer_media_type
from pipeline.metrics import stage_metrics
from pipeline.progress import report
from pipeline.sandbox import PLAN, run_isolated
from pipeline.schema import is_present, mark_failed
from pipeline.sink import PLANS_DIR, READERS, FingerprintMismatchError, atomic_write, part_files, quarantine, subdir
from pipeline.storage import readable, spooled

PLAN_SCHEMA = pa.schema([
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("fingerprint", pa.string()),
    pa.field("run_id", pa.string()),  # the run that probed the source
])
CLIP_COLUMNS = {"source_id": pa.string(), "clip_index": pa.int32()}
FAILURE_COLUMNS = ("status", "stage", "error_type", "error")
CLIP_SEPARATOR = "#"


def clip_id(source_id: str, index: int) -> str:
    return f"{source_id}{CLIP_SEPARATOR}{index}"


def check_clip_ids(manifest: pa.Table) -> None:
    """Refuse a manifest in which a clip's id would be another row's id ("a#0" beside "a")."""
    ids = manifest["id"]
    looks = pc.match_substring_regex(ids, rf"{CLIP_SEPARATOR}[0-9]+$")
    candidates = ids.filter(looks)
    if not len(candidates):
        return
    prefixes = pc.replace_substring_regex(candidates, rf"{CLIP_SEPARATOR}[0-9]+$", "")
    clash = candidates.filter(pc.is_in(prefixes, value_set=ids)).to_pylist()
    if clash:
        raise ManifestError(f"id(s) {clash[:5]} would collide with clip ids of another row when videos are split "
                            f"('<id>{CLIP_SEPARATOR}<clip index>'); rename them or run without clips")


def plan_source(uri: str, cfg: ClipsConfig, max_bytes: int, start_s: float | None, end_s: float | None) -> list[Window]:
    """The clip windows of one video; what the isolated child process runs. Fixed windows need
    only the container's header, read in place; shot cuts decode the whole (spooled) video."""
    with (spooled if cfg.mode == "shots" else readable)(uri, max_bytes) as source:
        return plan_video(source, uri, cfg, start_s, end_s)


def _windows(row: dict, cfg: ClipsConfig, max_bytes: int, isolation: DecodeIsolationConfig | None) -> list[Window]:
    args = (row["uri"], cfg, max_bytes, row.get("start_s"), row.get("end_s"))
    if isolation is not None and isolation.enabled:
        return run_isolated(plan_source, args, cfg.plan_timeout_s, isolation.max_attempts, PLAN)
    return plan_source(*args)


def plan_batch(table: pa.Table, *, clips: ClipsConfig, max_bytes: int, output: str, fingerprint: str, run_id: str,
               isolation: DecodeIsolationConfig | None = None, board: Any = None,
               tags: dict[str, str] | None = None) -> pa.Table:
    """Ray Data UDF: each unplanned video in, its clip rows out; the batch's plans are recorded
    first. Rows that already are clips (of a recorded plan) and rows that are not videos pass."""
    schema = _output_schema(table.schema)
    out, plans, probed, failed = [], [], 0, 0
    for row in table.to_pylist():
        if is_present(row.get("source_id")):
            out.append(row)
            continue
        row["source_id"] = row["id"]
        if (row.get("media_type") or infer_media_type(row["uri"])) != "video":
            out.append(row)  # images are never split; an unknown type fails in decode, by name
            continue
        row["media_type"] = "video"  # as resolved, also on the failed row of a source that cannot be planned
        probed += 1
        started = time.perf_counter()
        try:
            windows = _windows(row, clips, max_bytes, isolation)
        except Exception as exc:  # one bad source is one failed row, whatever it raised
            out.append(mark_failed(row, "plan", exc))
            failed += 1
            continue
        finally:
            if tags is not None:
                stage_metrics().stage_latency.observe(time.perf_counter() - started, tags={**tags, "stage": "plan"})
        plans += [(row["id"], i, a, b) for i, (a, b) in enumerate(windows)]
        out += [{**row, "id": clip_id(row["id"], i), "clip_index": i, "start_s": a, "end_s": b}
                for i, (a, b) in enumerate(windows)]
    if plans:
        write_plans(plans, output, fingerprint, run_id)
    if tags is not None and probed:
        metrics = stage_metrics()
        metrics.sources_planned.inc(probed, tags=tags)
        if plans:  # Ray's counters refuse an increment of 0
            metrics.clips_planned.inc(len(plans), tags=tags)
    report(board, "plan", probed)
    report(board, "plan_rows", len(plans) + failed)
    return pa.Table.from_pylist(out, schema=schema)


def _output_schema(schema: pa.Schema) -> pa.Schema:
    for name in FAILURE_COLUMNS:
        if name not in schema.names:
            schema = schema.append(pa.field(name, pa.string()))
    return schema


def write_plans(plans: list[tuple[str, int, float, float]], output: str, fingerprint: str, run_id: str) -> None:
    """One atomic file for these plans, named by their sources, so a retried batch rewrites it."""
    sources, indices, starts, ends = zip(*plans)
    table = pa.Table.from_arrays(
        [pa.array(sources, pa.string()), pa.array(indices, pa.int32()), pa.array(starts, pa.float64()),
         pa.array(ends, pa.float64()), pa.array([fingerprint] * len(plans), pa.string()),
         pa.array([run_id] * len(plans), pa.string())], schema=PLAN_SCHEMA)
    digest = hashlib.sha1("\n".join(sorted(set(sources))).encode()).hexdigest()[:20]
    atomic_write(table, f"{subdir(output, PLANS_DIR)}/part-{digest}.parquet")


def read_plans(output: str, fingerprint: str) -> pa.Table:
    """Every recorded plan, one per source (the first file's where a retry wrote two); an
    unreadable plan file is quarantined, so its sources are planned again. Plans made under
    another fingerprint refuse the run, as results do."""
    fs, paths = part_files(output, PLANS_DIR)

    def read(path: str) -> pa.Table | None:
        try:
            return pq.read_table(path, filesystem=fs, schema=PLAN_SCHEMA)
        except (pa.ArrowInvalid, OSError):
            return None

    with ThreadPoolExecutor(READERS) as pool:
        read_back = list(pool.map(read, paths))
    tables = []
    for number, (path, t) in enumerate(zip(paths, read_back)):
        if t is None:
            quarantine(fs, path, output)
            continue
        tables.append(t.append_column("_file", pa.array([number] * len(t), pa.int32())))
    if not tables:
        return PLAN_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    other = set(table["fingerprint"].to_pylist()) - {fingerprint, None}
    if other:
        raise FingerprintMismatchError(
            f"output {output!r} holds clip plans of a run with a different configuration (fingerprint "
            f"{sorted(other)[0]}, this run {fingerprint}); write to a new --output instead of mixing them")
    first = table.group_by("source_id").aggregate([("_file", "min")])
    table = table.join(first, keys=["source_id", "_file"], right_keys=["source_id", "_file_min"], join_type="inner")
    return table.drop_columns(["_file"]).sort_by([("source_id", "ascending"), ("clip_index", "ascending")])


def expected_rows(manifest: pa.Table, plans: pa.Table | None) -> pa.Table:
    """The rows the output must hold: each planned source's clips, and every other source as
    itself (`source_id` null while it still has to be planned; `plans` None: nothing is split,
    each row is its own source)."""
    if plans is None:
        return manifest.append_column("source_id", manifest["id"]).append_column(
            "clip_index", pa.nulls(len(manifest), pa.int32()))
    planned = pc.is_in(manifest["id"], value_set=plans["source_id"])
    rest = manifest.filter(pc.invert(planned))
    for name, dtype in CLIP_COLUMNS.items():
        rest = rest.append_column(name, pa.nulls(len(rest), dtype))
    windows = plans.select(["source_id", "clip_index", "start_s", "end_s"]).rename_columns(
        ["id", "clip_index", "clip_start", "clip_end"])
    joined = manifest.filter(planned).drop_columns(["start_s", "end_s"]).join(windows, keys="id", join_type="inner")
    joined = joined.sort_by([("id", "ascending"), ("clip_index", "ascending")])
    ids = pc.binary_join_element_wise(joined["id"], pc.cast(joined["clip_index"], pa.string()), CLIP_SEPARATOR)
    clip_columns = {"id": ids, "start_s": joined["clip_start"], "end_s": joined["clip_end"], "source_id": joined["id"],
                    "clip_index": joined["clip_index"]}
    # Every other manifest column (uri, prompt, a row's own settings) is the source's.
    clips = pa.table({name: clip_columns[name] if name in clip_columns else joined[name] for name in rest.column_names})
    return pa.concat_tables([clips, rest])

