"""Recorded clip plans: read back once per source, refused under another fingerprint, turned
into the expected rows that resume and fill_missing check, so no clip can go missing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.config import ClipsConfig, ModelConfig, PipelineConfig
from pipeline.fingerprint import run_fingerprint
from pipeline.manifest import ManifestError, validate_manifest
from pipeline.plans import check_clip_ids, expected_rows, read_plans, write_plans
from pipeline.sink import FingerprintMismatchError, fill_missing, plan_resume, read_results, write_batch
from pipeline.schema import RESULT_SCHEMA

REPO = Path(__file__).resolve().parents[2]


def manifest(*ids: str) -> pa.Table:
    return validate_manifest(pa.table({"id": list(ids), "uri": [f"/media/{i}.mp4" for i in ids]}))


def test_plans_read_back_one_per_source_in_time_order(tmp_path):
    out = str(tmp_path)
    write_plans([("a", 1, 10.0, 20.0), ("a", 0, 0.0, 10.0), ("b", 0, 0.0, 4.0)], out, "f", "run-1")
    write_plans([("b", 0, 0.0, 5.0), ("b", 1, 5.0, 9.0)], out, "f", "run-2")  # a retried batch's second plan of b
    plans = read_plans(out, "f")
    rows = list(zip(plans["source_id"].to_pylist(), plans["clip_index"].to_pylist(), plans["end_s"].to_pylist()))
    b_rows = [r for r in rows if r[0] == "b"]
    assert [r for r in rows if r[0] == "a"] == [("a", 0, 10.0), ("a", 1, 20.0)]
    assert len(set(plans.filter(pc.equal(plans["source_id"], "b"))["run_id"].to_pylist())) == 1  # one file's plan
    assert b_rows in ([("b", 0, 4.0)], [("b", 0, 5.0), ("b", 1, 9.0)])


def test_plans_of_another_configuration_refuse_the_run(tmp_path):
    write_plans([("a", 0, 0.0, 10.0)], str(tmp_path), "other", "run-1")
    with pytest.raises(FingerprintMismatchError, match="clip plans of a run with a different configuration"):
        read_plans(str(tmp_path), "mine")


def test_an_unreadable_plan_file_is_quarantined_and_its_sources_planned_again(tmp_path):
    (tmp_path / "_plans").mkdir()
    (tmp_path / "_plans" / "part-broken.parquet").write_bytes(b"not parquet")
    assert len(read_plans(str(tmp_path), "f")) == 0
    assert list((tmp_path / "quarantine").iterdir())


def test_expected_rows_are_planned_clips_and_unplanned_sources():
    plans = pa.table({"source_id": ["a", "a"], "clip_index": pa.array([1, 0], pa.int32()), "start_s": [10.0, 0.0],
                      "end_s": [20.0, 10.0]})
    rows = expected_rows(manifest("a", "b"), plans)
    assert rows["id"].to_pylist() == ["a#0", "a#1", "b"]
    assert rows["source_id"].to_pylist() == ["a", "a", None]  # b still has to be planned
    assert rows["start_s"].to_pylist() == [0.0, 10.0, None] and rows["uri"].to_pylist()[0] == "/media/a.mp4"
    unsplit = expected_rows(manifest("a", "b"), None)
    assert unsplit["source_id"].to_pylist() == ["a", "b"] and unsplit["clip_index"].null_count == 2


def test_a_clip_that_never_came_back_is_a_failed_row_and_the_rest_are_not_redone(tmp_path):
    out = str(tmp_path)
    write_plans([("a", 0, 0.0, 10.0), ("a", 1, 10.0, 20.0), ("a", 2, 20.0, 25.0)], out, "f", "run-1")
    expected = expected_rows(manifest("a"), read_plans(out, "f"))
    done = pa.Table.from_pylist([{"id": "a#0", "source_id": "a", "clip_index": 0, "status": "ok", "attempt": 1}],
                                schema=RESULT_SCHEMA)
    write_batch(done, out, "run-1", "f", "date=2026-12-04")
    todo = plan_resume(out, expected, "f", retry_failed=False)
    assert todo["id"].to_pylist() == ["a#1", "a#2"]  # only the missing clips run again
    assert fill_missing(out, expected, read_results(out)["id"], "run-2", "f", "date=2026-12-04") == 2
    lost = read_results(out).filter(pc.equal(read_results(out)["status"], "failed"))
    assert sorted(zip(lost["id"].to_pylist(), lost["clip_index"].to_pylist(), lost["error_type"].to_pylist())) == [
        ("a#1", 1, "LostItem"), ("a#2", 2, "LostItem")]
    assert lost["start_s"].to_pylist() in ([10.0, 20.0], [20.0, 10.0])


def test_ids_that_would_collide_with_clip_ids_are_refused():
    check_clip_ids(manifest("a#x", "b#1"))  # no row "b": no clash
    with pytest.raises(ManifestError, match=r"\['a#0'\] would collide with clip ids"):
        check_clip_ids(manifest("a", "a#0"))


def test_the_fingerprint_covers_the_clip_settings_but_not_the_timeout():
    base = dict(input="m.parquet", output="out", model=ModelConfig(path=str(REPO / "reference" / "model")))
    none, fixed = PipelineConfig(**base), PipelineConfig(**base, clips=ClipsConfig(length_s=10))
    assert len({run_fingerprint(c) for c in (none, fixed, PipelineConfig(**base, clips=ClipsConfig(length_s=5)),
                                             PipelineConfig(**base, clips=ClipsConfig(mode="shots")))}) == 4
    assert run_fingerprint(fixed) == run_fingerprint(PipelineConfig(**base, clips=ClipsConfig(length_s=10, plan_timeout_s=9)))


def test_a_clip_keeps_its_source_rows_own_settings():
    source = validate_manifest(pa.table({"id": ["a"], "uri": ["/media/a.mp4"], "prompt": ["what moves ?"],
                                         "max_new_tokens": [7]}))
    plans = pa.table({"source_id": ["a", "a"], "clip_index": pa.array([0, 1], pa.int32()), "start_s": [0.0, 5.0],
                      "end_s": [5.0, 9.0]})
    rows = expected_rows(source, plans).to_pylist()
    assert [(r["id"], r["prompt"], r["max_new_tokens"]) for r in rows] == [("a#0", "what moves ?", 7), ("a#1", "what moves ?", 7)]
