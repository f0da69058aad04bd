"""Persist results so that every manifest id ends up in the output exactly once.

Layout under OUTPUT:
- `results/date=YYYY-MM-DD/part-<hash>.parquet`: finished rows (ok and failed), one file per
  model batch, in the partition of the day (UTC) the run started.
  The name is a hash of the batch's ids, and a local file appears by an atomic rename, so
  a retried task rewrites the same file instead of adding a second copy, and a killed
  writer leaves no half-written file that could be taken as done.
- `dead_letter/part-<hash>.parquet`: every failed attempt, kept across retries.
- `quarantine/`: result and plan files that could not be read back (their ids are redone).
- `_plans/part-<hash>.parquet`: the clip plans of split videos (`pipeline.plans`), one file per
  planning batch, written before any of its clips, so a rerun knows every clip id it expects.

The output's own id set is the checkpoint: a rerun reads it, refuses a different run
fingerprint, and processes only the ids that are missing (plus failed ones when asked).
`reconcile` runs before and after each run and removes any duplicate row that a retry
with a different batch composition could leave, keeping the best row per id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.metrics import stage_metrics
from pipeline.progress import report
from pipeline.schema import FAILED, OK, RESULT_SCHEMA
from pipeline.storage import OutputStorageError, resolve

RESULTS_DIR, DEAD_LETTER_DIR, QUARANTINE_DIR, PLANS_DIR = "results", "dead_letter", "quarantine", "_plans"
TMP_PREFIX = ".tmp-"  # a file being written; never read as a result (readers take only part-*.parquet)
READERS = 16  # result files read at once: on an object store each read is a few round trips of waiting
PROGRESS_COLUMNS = ("id", "status", "error_type", "stage", "media_type", "num_frames", "num_visual_tokens",
                    "num_kept_tokens", "weight_fidelity", "latency_s")


class FingerprintMismatchError(ValueError):
    """The output holds results of a differently configured run."""


def subdir(output: str, name: str) -> str:
    return output.rstrip("/") + "/" + name


def atomic_write(table: pa.Table, uri: str) -> None:
    """Write `uri` whole or not at all; a storage failure raises OutputStorageError naming it."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    try:
        fs.create_dir(parent, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                pq.write_table(table, tmp, filesystem=fs)
                fs.move(tmp, path)
            except BaseException:
                _discard(fs, tmp)
                raise
        else:  # an object-store PUT is atomic: the object appears whole or not at all
            pq.write_table(table, path, filesystem=fs)
    except OSError as exc:
        raise OutputStorageError(f"cannot write {uri}: {exc}") from exc


def _discard(fs: pafs.FileSystem, tmp: str) -> None:
    """Best effort: on read-only storage the temporary file stays, and readers skip it by name."""
    try:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    except OSError:
        pass


def sweep_temporary(output: str) -> int:
    """Delete temporary files that killed writers left; only safe while holding the output lock."""
    removed = 0
    for name in (RESULTS_DIR, DEAD_LETTER_DIR, PLANS_DIR):
        fs, path = resolve(subdir(output, name))
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True)):
            if info.is_file and info.base_name.startswith(TMP_PREFIX):
                fs.delete_file(info.path)
                removed += 1
    return removed


def write_batch(table: pa.Table, output: str, run_id: str, fingerprint: str, partition: str, board: Any = None,
                tags: dict[str, str] | None = None) -> pa.Table:
    """Ray Data UDF: persist one batch of finished rows; return a small progress table."""
    table = table.cast(RESULT_SCHEMA)
    for name, value in (("run_id", run_id), ("fingerprint", fingerprint)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array([value] * len(table), pa.string()))
    digest = hashlib.sha1("\n".join(sorted(table["id"].to_pylist())).encode()).hexdigest()[:20]
    atomic_write(table, f"{subdir(output, RESULTS_DIR)}/{partition}/part-{digest}.parquet")
    failed = table.filter(pc.equal(table["status"], FAILED))
    if len(failed):
        atomic_write(failed, f"{subdir(output, DEAD_LETTER_DIR)}/part-{run_id}-{digest}.parquet")
    if tags is not None:
        metrics = stage_metrics()
        metrics.items_processed.inc(len(table), tags=tags)
        for (error_type, stage), count in Counter(zip(failed["error_type"].to_pylist(), failed["stage"].to_pylist())).items():
            metrics.items_failed.inc(count, tags={**tags, "error_type": error_type or "unknown", "stage": stage or "unknown"})
    report(board, "write", len(table))
    return table.select(list(PROGRESS_COLUMNS))


def part_files(output: str, name: str) -> tuple[pafs.FileSystem, list[str]]:
    fs, path = resolve(subdir(output, name))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return fs, sorted(i.path for i in infos if i.is_file and i.base_name.startswith("part-") and i.path.endswith(".parquet"))


def quarantine(fs: pafs.FileSystem, path: str, output: str) -> None:
    _, target = resolve(subdir(output, QUARANTINE_DIR))
    fs.create_dir(target, recursive=True)
    fs.move(path, f"{target}/{'_'.join(path.rsplit('/', 2)[-2:])}")


def read_results(output: str, columns: list[str] | None = None, *, with_location: bool = False) -> pa.Table:
    """All result rows (of `columns` only, if given) from one listing; unreadable files are
    moved to quarantine so their ids get redone. Files are read concurrently.

    `with_location` adds `_file` and `_row` (position in that file), which is what a
    rewrite needs to remove exact rows.
    """
    fs, paths = part_files(output, RESULTS_DIR)
    names = columns or RESULT_SCHEMA.names

    def read(path: str) -> pa.Table | None:
        try:
            return pq.read_table(path, filesystem=fs, schema=RESULT_SCHEMA, columns=names)
        except (pa.ArrowInvalid, OSError):
            return None

    with ThreadPoolExecutor(READERS) as pool:
        read_back = list(pool.map(read, paths))
    tables = []
    for path, t in zip(paths, read_back):
        if t is None:
            quarantine(fs, path, output)
            continue
        if with_location:
            t = t.append_column("_file", pa.array([path] * len(t), pa.string()))
            t = t.append_column("_row", pa.array(range(len(t)), pa.int64()))
        tables.append(t)
    schema = pa.schema([RESULT_SCHEMA.field(n) for n in names])
    if with_location:
        schema = schema.append(pa.field("_file", pa.string())).append(pa.field("_row", pa.int64()))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_dead_letter(output: str) -> pa.Table:
    fs, paths = part_files(output, DEAD_LETTER_DIR)
    tables = [pq.read_table(p, filesystem=fs, schema=RESULT_SCHEMA) for p in paths]
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


def _drop_rows(output: str, rows: pa.Table) -> None:
    """Rewrite result files without the given rows (a `with_location` table)."""
    fs, _ = resolve(subdir(output, RESULTS_DIR))
    for path in set(rows["_file"].to_pylist()):
        gone = set(rows.filter(pc.equal(rows["_file"], path))["_row"].to_pylist())
        table = pq.read_table(path, filesystem=fs, schema=RESULT_SCHEMA)
        keep = [i for i in range(len(table)) if i not in gone]
        if keep:
            atomic_write(table.take(keep), path)
        else:
            fs.delete_file(path)


def reconcile(output: str, columns: tuple[str, ...] = ()) -> pa.Table:
    """Keep one row per id (ok over failed, then the highest attempt) and return the kept rows.

    The returned table has `id`, `status`, `attempt`, the extra `columns` and each row's
    location, so callers need not read the output again.
    """
    names = list(dict.fromkeys(("id", "status", "attempt", *columns)))
    table = read_results(output, names, with_location=True)
    if len(table) == pc.count_distinct(table["id"]).as_py():
        return table
    order, first = best_first(table)
    _drop_rows(output, order.filter(pc.invert(first)))
    return order.filter(first)


def best_first(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    """`table` sorted by id with each id's best row (ok over failed, then the highest attempt)
    first, and the mask of those best rows."""
    rank = pc.add(pc.multiply(pc.cast(pc.equal(table["status"], OK), pa.int64()), 2**32),
                  pc.cast(pc.fill_null(table["attempt"], 0), pa.int64()))
    order = table.append_column("_rank", rank).sort_by([("id", "ascending"), ("_rank", "descending")])
    ids = order["id"].to_pylist()
    first = pa.array([i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))])
    return order.drop_columns(["_rank"]), first


def plan_resume(output: str, manifest: pa.Table, fingerprint: str, retry_failed: bool) -> pa.Table:
    """Manifest rows still to do, each with its `attempt` number."""
    done = reconcile(output, ("fingerprint",))
    other = set(done["fingerprint"].to_pylist()) - {fingerprint, None}
    if other:
        raise FingerprintMismatchError(
            f"output {output!r} holds results of a run with a different configuration (fingerprint "
            f"{sorted(other)[0]}, this run {fingerprint}); write to a new --output instead of mixing them"
        )
    failed = done.filter(pc.equal(done["status"], FAILED))
    if retry_failed:
        _drop_rows(output, failed)
        done = done.filter(pc.equal(done["status"], OK))
    todo = manifest.filter(pc.invert(pc.is_in(manifest["id"], value_set=done["id"])))
    previous = dict(zip(failed["id"].to_pylist(), failed["attempt"].to_pylist()))
    attempts = [int(previous.get(i) or 0) + 1 for i in todo["id"].to_pylist()]
    return todo.append_column("attempt", pa.array(attempts, pa.int32()))


def fill_missing(output: str, manifest: pa.Table, present: pa.Array, run_id: str, fingerprint: str,
                 partition: str) -> int:
    """After a finished run, record any expected id not in `present` as failed, never silently missing.

    `manifest` holds the rows the output must have (`pipeline.plans.expected_rows`: a clip of
    a recorded plan that never came back is one of them)."""
    lost = manifest.filter(pc.invert(pc.is_in(manifest["id"], value_set=present)))
    if not len(lost):
        return 0
    rows = [{"id": r["id"], "uri": r["uri"], "media_type": r["media_type"], "status": FAILED, "stage": "pipeline",
             "error_type": "LostItem", "error": "the pipeline finished without a result for this id", "attempt": 1,
             "source_id": r.get("source_id") or r["id"], "clip_index": r.get("clip_index"),
             "start_s": r.get("start_s"), "end_s": r.get("end_s")}
            for r in lost.to_pylist()]
    write_batch(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), output, run_id, fingerprint, partition)
    return len(rows)


@dataclass(frozen=True)
class Summary:
    total: int
    ok: int
    failed: int
    errors: dict[str, int]


def summarise(table: pa.Table) -> Summary:
    ok = int(pc.sum(pc.equal(table["status"], OK)).as_py() or 0)
    errors = Counter(table.filter(pc.equal(table["status"], FAILED))["error_type"].to_pylist())
    return Summary(total=len(table), ok=ok, failed=len(table) - ok, errors=dict(errors))
