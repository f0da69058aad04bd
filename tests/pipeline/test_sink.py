"""The sink's bookkeeping without Ray: duplicates left by retries, and what a rerun still has to do."""

import pyarrow as pa

from pipeline.schema import RESULT_SCHEMA
from pipeline.sink import plan_resume, read_results, reconcile, write_batch


def rows(*specs):
    return pa.Table.from_pylist([{"id": i, "status": s, "attempt": a} for i, s, a in specs], schema=RESULT_SCHEMA)


def test_reconcile_keeps_one_row_per_id_preferring_ok_then_latest_attempt(tmp_path):
    out = str(tmp_path)
    write_batch(rows(("a", "failed", 1), ("b", "ok", 1), ("c", "failed", 1)), out, "r1", "fp", "date=2026-01-01")
    write_batch(rows(("a", "ok", 1), ("c", "failed", 2)), out, "r2", "fp", "date=2026-01-02")
    write_batch(rows(("b", "ok", 1), ("d", "ok", 1)), out, "r2", "fp", "date=2026-01-02")
    kept = reconcile(out)
    assert sorted(zip(kept["id"].to_pylist(), kept["status"].to_pylist(), kept["attempt"].to_pylist())) == [
        ("a", "ok", 1), ("b", "ok", 1), ("c", "failed", 2), ("d", "ok", 1)]
    on_disk = read_results(out)
    assert sorted(on_disk["id"].to_pylist()) == ["a", "b", "c", "d"]
    assert {r["id"]: r["attempt"] for r in on_disk.to_pylist()}["c"] == 2
    assert len(reconcile(out)) == 4


def test_plan_resume_skips_done_ids_and_counts_attempts(tmp_path):
    out = str(tmp_path)
    write_batch(rows(("a", "ok", 1), ("b", "failed", 2)), out, "r1", "fp", "date=2026-01-01")
    manifest = pa.table({"id": ["a", "b", "c"], "uri": ["x", "y", "z"]})
    todo = plan_resume(out, manifest, "fp", retry_failed=False)
    assert todo["id"].to_pylist() == ["c"] and todo["attempt"].to_pylist() == [1]
    todo = plan_resume(out, manifest, "fp", retry_failed=True)
    assert todo["id"].to_pylist() == ["b", "c"] and todo["attempt"].to_pylist() == [3, 1]
    assert read_results(out)["id"].to_pylist() == ["a"]


def test_temporary_leftovers_are_never_taken_as_done_and_are_swept(tmp_path):
    """A writer killed between write and rename leaves `.tmp-*`: readers skip it, the next run deletes it."""
    import pyarrow.parquet as pq

    from pipeline.sink import sweep_temporary

    out = str(tmp_path)
    write_batch(rows(("a", "ok", 1)), out, "r1", "fp", "date=2026-01-01")
    partition = tmp_path / "results" / "date=2026-01-01"
    pq.write_table(rows(("a", "ok", 1), ("b", "ok", 1)), partition / ".tmp-0123abcd")
    (tmp_path / "dead_letter").mkdir()
    (tmp_path / "dead_letter" / ".tmp-4567").write_bytes(b"PAR1 half a file")
    assert read_results(out)["id"].to_pylist() == ["a"]
    assert reconcile(out)["id"].to_pylist() == ["a"]
    manifest = pa.table({"id": ["a", "b"], "uri": ["x", "y"]})
    assert plan_resume(out, manifest, "fp", retry_failed=False)["id"].to_pylist() == ["b"]
    assert sweep_temporary(out) == 2
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_failed_write_names_the_path_and_leaves_no_file(tmp_path):
    import pytest

    from pipeline.storage import OutputStorageError

    (tmp_path / "results").write_text("a file where the results folder should be")
    with pytest.raises(OutputStorageError, match=f"cannot write {tmp_path}/results/date=d/part-"):
        write_batch(rows(("a", "ok", 1)), str(tmp_path), "r1", "fp", "date=d")
