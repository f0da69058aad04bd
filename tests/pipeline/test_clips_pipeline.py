"""Clips through whole runs on a real local Ray: a row per clip with its window, bad sources as
one row each, and a driver SIGKILLed mid-run whose rerun does every clip exactly once without
probing again a source whose plan was written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ClipsConfig, GenerationConfig, ModelConfig, PipelineConfig
from pipeline.run import run_pipeline
from pipeline.runlog import read_records
from pipeline.sink import read_results
from scenes.media import write_image, write_scenes
from tests.pipeline.test_clips import zero_length_video
from tests.support.faults import kill_after_first_result


def _manifest(root: Path, rows: list[dict]) -> str:
    path = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"start_s": None, "end_s": None, **r} for r in rows]), path)
    return str(path)


def test_a_run_gives_a_row_per_clip_and_one_row_per_bad_source(tmp_path, media, tiny_model_dir, ray_local):
    write_scenes(tmp_path / "minute.mp4", [11.3, 23.71, 36.05, 47.9], 60, seed=5, size=(64, 96), fps=12)
    write_scenes(tmp_path / "short.mp4", [], 0.5, size=(64, 64), fps=8)
    write_image(tmp_path / "still.png", seed=3, size=(64, 64))
    manifest = _manifest(tmp_path, [
        {"id": "minute", "uri": str(tmp_path / "minute.mp4")},
        {"id": "middle", "uri": str(tmp_path / "minute.mp4"), "start_s": 25.0, "end_s": 45.0},
        {"id": "short", "uri": str(tmp_path / "short.mp4")},
        {"id": "zero", "uri": str(zero_length_video(tmp_path / "zero.mp4"))},
        {"id": "broken", "uri": str(media["corrupt"])},
        {"id": "still", "uri": str(tmp_path / "still.png")},
    ])
    cfg = PipelineConfig(input=manifest, output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)),
                         generation=GenerationConfig(max_new_tokens=4), clips=ClipsConfig(length_s=10, min_length_s=2))
    report = run_pipeline(cfg)
    rows = {r["id"]: r for r in read_results(cfg.output.path).to_pylist()}
    minute = [rows[f"minute#{i}"] for i in range(6)]
    assert [(r["source_id"], r["clip_index"], r["start_s"], r["end_s"], r["status"]) for r in minute] == [
        ("minute", i, 10.0 * i, 10.0 * i + 10, "ok") for i in range(6)]
    assert [(rows[f"middle#{i}"]["start_s"], rows[f"middle#{i}"]["end_s"]) for i in range(2)] == [(25, 35), (35, 45)]
    assert (rows["short#0"]["status"], rows["short#0"]["start_s"]) == ("ok", 0.0)  # shorter than min_length_s: one clip
    for bad in ("zero", "broken"):
        assert (rows[bad]["status"], rows[bad]["stage"], rows[bad]["clip_index"], rows[bad]["source_id"]) == (
            "failed", "plan", None, bad)
    assert (rows["still"]["status"], rows["still"]["source_id"], rows["still"]["clip_index"]) == ("ok", "still", None)
    assert len(rows) == 6 + 2 + 1 + 2 + 1
    assert (report.sources, report.sources_planned, report.clips) == (6, 5, 9)
    [record] = read_records(cfg.output.path)
    assert (record["sources"], record["sources_planned"], record["clips"], record["ok"], record["failed"]) == (6, 5, 9, 10, 2)

    again = run_pipeline(cfg)
    assert (again.this_run.total, again.skipped, again.sources_planned) == (0, 12, 0)


def _plan_rows(output: Path) -> list[tuple[str, int, str]]:
    rows = []
    for path in sorted((output / "_plans").glob("part-*.parquet")):
        t = pq.read_table(path)
        rows += zip(t["source_id"].to_pylist(), t["clip_index"].to_pylist(), t["run_id"].to_pylist())
    return rows


def test_killed_driver_rerun_does_every_clip_once_and_probes_no_planned_source_again(tmp_path, tiny_model_dir):
    sources = 6
    for i in range(sources):
        write_scenes(tmp_path / f"v{i}.mp4", [4.0, 9.0], 12, seed=i, size=(64, 64), fps=8)
    manifest = _manifest(tmp_path, [{"id": f"v{i}", "uri": str(tmp_path / f"v{i}.mp4")} for i in range(sources)])
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--input", manifest, "--output", str(output), "--model",
           str(tiny_model_dir), "--max-new-tokens", "24", "--clip-length", "2", "--rows-per-call", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    kill_after_first_result(cmd, env, output)
    planned_before = {(s, i): run for s, i, run in _plan_rows(output)}
    done_before = len(read_results(str(output)))
    assert planned_before and 0 < done_before < sources * 6

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    table = read_results(str(output))
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(f"v{s}#{c}" for s in range(sources) for c in range(6))  # every clip, exactly once
    assert set(table["status"].to_pylist()) == {"ok"}
    plans = _plan_rows(output)
    assert len(plans) == len({(s, i) for s, i, _ in plans}) == sources * 6  # no source has a second plan
    assert all(run == planned_before[(s, i)] for s, i, run in plans if (s, i) in planned_before)
    planned_sources_before = {s for s, _ in planned_before}
    record = max(read_records(str(output)), key=lambda r: r["run_id"])
    assert record["sources_planned"] == sources - len(planned_sources_before)
    assert record["skipped"] == done_before and record["clips"] == sources * 6
    assert f"{done_before} already done, skipped" in second.stdout
    for path in (output / "_runs").glob("*.json"):
        json.loads(path.read_text())  # each run log is whole
