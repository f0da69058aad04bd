"""The whole pipeline on a real local Ray instance, real media and a saved tiny model."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ModelConfig, PipelineConfig, PruningConfig, SamplingConfig, TagTask
from pipeline.manifest import ManifestError
from pipeline.lock import OutputLockedError, output_lock
from pipeline.run import run_pipeline
from pipeline.runlog import read_records
from pipeline.schema import RESULT_SCHEMA
from pipeline.sink import FingerprintMismatchError, read_dead_letter, read_results


def write_manifest(path, rows):
    schema = pa.schema([(k, pa.string()) for k in ("id", "uri", "prompt")] + [("start_s", pa.float64()), ("end_s", pa.float64())])
    full = [{"prompt": None, "start_s": None, "end_s": None, **r} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return str(path)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, media, tiny_model_dir, ray_local):
    root = tmp_path_factory.mktemp("e2e")
    rows = [
        {"id": "v1", "uri": str(media["video"])},
        {"id": "v2", "uri": str(media["video_long"]), "start_s": 1.0, "end_s": 4.0, "prompt": "what is in this clip ?"},
        {"id": "img", "uri": str(media["image"])},
        {"id": "img-again", "uri": str(media["image"]), "prompt": "list the objects ."},
        {"id": "empty", "uri": str(media["empty"])},
        {"id": "corrupt", "uri": str(media["corrupt"])},
        {"id": "missing", "uri": str(root / "nowhere.mp4")},
        {"id": "bad-window", "uri": str(media["video"]), "start_s": 50.0},
    ]
    cfg = PipelineConfig(
        input=write_manifest(root / "manifest.parquet", rows),
        output=str(root / "out"),
        model=ModelConfig(path=str(tiny_model_dir)),
        sampling=SamplingConfig(num_frames=4),
    )
    report = run_pipeline(cfg)
    return cfg, report, read_results(cfg.output.path)


def test_every_id_exactly_once(mixed_run):
    _, report, table = mixed_run
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(["v1", "v2", "img", "img-again", "empty", "corrupt", "missing", "bad-window"])
    assert len(ids) == len(set(ids))
    assert (report.this_run.total, report.this_run.ok, report.this_run.failed) == (8, 4, 4)
    assert report.skipped == 0 and report.output == report.this_run


def test_ok_rows_have_captions_and_token_counts(mixed_run):
    cfg, _, table = mixed_run
    assert table.schema.equals(RESULT_SCHEMA)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    for r in ok:
        assert r["caption"] and r["caption"].strip()
        assert r["error"] is None and r["error_type"] is None
        assert r["model"] == cfg.model.path and r["task"] == "caption"
        assert r["num_visual_tokens"] > 0
        assert r["num_kept_tokens"] == max(1, round(0.222 * r["num_visual_tokens"]))
        assert 0.0 < r["weight_fidelity"] <= 1.0 + 1e-6
        assert r["latency_s"] > 0
    by_id = {r["id"]: r for r in ok}
    assert by_id["v1"]["num_frames"] == 4 and by_id["img"]["num_frames"] == 1
    # 4 frames of 224x224 at 14px patches, 2x2 merge, 2-frame temporal patches: 2*8*8 tokens.
    assert by_id["v1"]["num_visual_tokens"] == 128


def test_failed_rows_say_why(mixed_run):
    _, _, table = mixed_run
    failed = {r["id"]: r for r in table.to_pylist() if r["status"] == "failed"}
    assert failed["empty"]["error_type"] == "MediaError" and "empty file" in failed["empty"]["error"]
    assert failed["corrupt"]["error_type"] == "MediaError"
    assert failed["missing"]["error_type"] == "FileNotFoundError"
    assert "clip window" in failed["bad-window"]["error"]
    assert all(r["stage"] == "decode" and r["caption"] is None for r in failed.values())


def test_no_pruning_keeps_every_visual_token(tmp_path, media, tiny_model_dir, ray_local):
    cfg = PipelineConfig(
        input=write_manifest(tmp_path / "m.parquet", [{"id": "v", "uri": str(media["video"])}]),
        output=str(tmp_path / "out"),
        model=ModelConfig(path=str(tiny_model_dir)),
        sampling=SamplingConfig(num_frames=4),
        pruning=PruningConfig(method="none"),
    )
    run_pipeline(cfg)
    (row,) = read_results(cfg.output.path).to_pylist()
    assert row["status"] == "ok"
    assert row["num_kept_tokens"] == row["num_visual_tokens"] == 128 and row["weight_fidelity"] is None


@pytest.mark.parametrize("arch,video_tokens", [("qwen3_vl", 98), ("llava_onevision", 17)])
def test_other_families_run_the_whole_pipeline_pruned(tmp_path, media, ray_local, arch, video_tokens):
    """Qwen3-VL: its own processor (video timestamps, 32-px visual tokens) and DeepStack through
    the same stages, pruned at K=1 so DeepStack's later layers run on the kept tokens.
    LLaVA-OneVision: its image sizes and crop stacks through `pipeline.collate` (padding crop stacks
    of different counts is tested in tests/pipeline/test_collate.py)."""
    from tests.support.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path / arch, arch=arch)
    cfg = PipelineConfig(
        input=write_manifest(tmp_path / "m.parquet", [{"id": "v", "uri": str(media["video"])},
                                                     {"id": "img", "uri": str(media["image"])}]),
        output=str(tmp_path / "out"),
        model=ModelConfig(path=str(model)),
        sampling=SamplingConfig(num_frames=4),
        pruning=PruningConfig(layer=1),
    )
    run_pipeline(cfg)
    rows = {r["id"]: r for r in read_results(cfg.output.path).to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}, [r["error"] for r in rows.values()]
    # Qwen3-VL: 4 frames of 224x224 at 16 px patches, 2x2 merge, 2-frame temporal patches: 2 * 7 * 7.
    # LLaVA-OneVision: 4 frames, each 2x2 tokens after its 2x pooling of the 4x4 patch grid, + 1 newline
    assert rows["v"]["num_visual_tokens"] == video_tokens
    for r in rows.values():
        assert r["caption"].strip() and r["num_kept_tokens"] == round(0.222 * r["num_visual_tokens"])
        assert 0.0 < r["weight_fidelity"] <= 1.0 + 1e-6


def test_tagging_keeps_only_vocabulary_words(tmp_path, media, tiny_model_dir, ray_local):
    vocabulary = ("red", "green", "blue", "circle", "square", "two", "moving", "you", "the", "a")
    cfg = PipelineConfig(
        input=write_manifest(tmp_path / "m.parquet", [{"id": "v", "uri": str(media["video"])},
                                                       {"id": "i", "uri": str(media["image"])}]),
        output=str(tmp_path / "out"),
        model=ModelConfig(path=str(tiny_model_dir)),
        task=TagTask(kind="tag", vocabulary=vocabulary),
    )
    run_pipeline(cfg)
    rows = read_results(cfg.output.path).to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "ok" and row["task"] == "tag" and row["caption"] is None
        assert row["answer"] and set(row["tags"]) <= set(vocabulary)
        assert row["tags_unknown"] >= 0
        assert len(row["tags"]) == len(set(row["tags"]))


def test_tag_task_needs_a_vocabulary(tiny_model_dir):
    with pytest.raises(ValueError, match="task.tag.vocabulary\n  Field required"):
        PipelineConfig(input="m", output="o", model=ModelConfig(path=str(tiny_model_dir)), task={"kind": "tag"})


def test_unknown_pruning_method_is_refused():
    with pytest.raises(ValueError, match="unknown pruning method 'fast'"):
        PruningConfig(method="fast")


def test_rerun_resumes_and_retries_failed_only_when_asked(mixed_run):
    cfg, first, table = mixed_run
    again = run_pipeline(cfg)
    assert again.skipped == 8 and again.this_run.total == 0
    assert read_results(cfg.output.path).sort_by("id").equals(table.sort_by("id"))
    retried = run_pipeline(cfg, retry_failed=True)
    assert retried.skipped == 4 and retried.this_run.total == 4 and retried.this_run.failed == 4
    after = read_results(cfg.output.path)
    assert sorted(after["id"].to_pylist()) == sorted(table["id"].to_pylist())
    attempts = {r["id"]: r["attempt"] for r in after.to_pylist()}
    assert attempts["corrupt"] == 2 and attempts["v1"] == 1
    dead = read_dead_letter(cfg.output.path)
    assert sorted(dead.filter(pa.compute.equal(dead["id"], "corrupt"))["attempt"].to_pylist()) == [1, 2]
    assert set(dead["run_id"].to_pylist()) == {first.run_id, retried.run_id}


def test_resume_does_only_missing_ids(mixed_run, tmp_path):
    cfg, _, table = mixed_run
    partial = cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": str(tmp_path / "out")})})
    run_pipeline(partial.model_copy(update={"input": write_manifest(tmp_path / "first.parquet", [
        {"id": "v1", "uri": table.filter(pa.compute.equal(table["id"], "v1"))["uri"][0].as_py()}])}))
    report = run_pipeline(partial)
    assert report.skipped == 1 and report.this_run.total == 7
    assert sorted(read_results(partial.output.path)["id"].to_pylist()) == sorted(table["id"].to_pylist())


def test_results_are_date_partitioned_and_runs_logged(mixed_run):
    cfg, first, _ = mixed_run
    out = Path(cfg.output.path)
    partitions = {p.parent.name for p in (out / "results").rglob("part-*.parquet")}
    assert len(partitions) == 1 and re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", partitions.pop())
    records = {r["run_id"]: r for r in read_records(cfg.output.path)}
    mine = records[first.run_id]
    assert (mine["status"], mine["todo"], mine["skipped"], mine["ok"], mine["failed"]) == ("succeeded", 8, 0, 4, 4)
    assert mine["started"] <= mine["ended"] and mine["fingerprint"] == first.fingerprint
    assert not (out / "_lock.json").exists()


def test_a_second_run_on_a_busy_output_refuses(mixed_run):
    cfg, _, _ = mixed_run
    with output_lock(cfg.output.path, "someone-else"):
        with pytest.raises(OutputLockedError, match="being written by run someone-else"):
            run_pipeline(cfg)
    stale = Path(cfg.output.path) / "_lock.json"
    stale.write_text(json.dumps({"run_id": "crashed", "pid": 2**22 + 7, "host": socket.gethostname()}))
    assert run_pipeline(cfg).skipped == 8
    assert not stale.exists()


def test_different_configuration_is_not_mixed_in(mixed_run):
    cfg, _, _ = mixed_run
    changed = cfg.model_copy(update={"pruning": PruningConfig(keep_ratio=0.5)})
    with pytest.raises(FingerprintMismatchError, match="different configuration"):
        run_pipeline(changed)


def test_bad_manifest_is_refused_before_work(tmp_path, tiny_model_dir):
    path = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "x.mp4"}, {"id": "a", "uri": "y.mp4"}])
    cfg = PipelineConfig(input=path, output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)))
    with pytest.raises(ManifestError, match="duplicate id"):
        run_pipeline(cfg)
    assert not (tmp_path / "out").exists()


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_cli_errors_are_clear(tmp_path, tiny_model_dir):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "x.mp4"}])
    r = cli("run", "--input", manifest, "--output", str(tmp_path / "o"), "--model", str(tmp_path / "no-model"))
    assert r.returncode == 2 and "is not a local model directory" in r.stderr
    r = cli("run", "--input", str(tmp_path / "none.parquet"), "--output", str(tmp_path / "o"), "--model", str(tiny_model_dir))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_run_on_a_local_model(tmp_path, media, tiny_model_dir):
    """The console entry point end to end, in its own process with its own Ray instance."""
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": str(media["video"])}, {"id": "b", "uri": str(media["corrupt"])}])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = cli("run", "--input", manifest, "--output", str(tmp_path / "o"), "--model", str(tiny_model_dir), "--num-frames", "2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "items: 2 (1 ok, 1 failed); 0 already done" in r.stdout
    table = read_results(str(tmp_path / "o"))
    assert sorted(table["id"].to_pylist()) == ["a", "b"]
