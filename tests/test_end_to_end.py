"""The whole pipeline on a real local Ray instance, real media and a saved tiny model."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ModelConfig, PipelineConfig, SamplingConfig
from pipeline.manifest import ManifestError
from pipeline.run import OutputExistsError, run_pipeline
from pipeline.schema import RESULT_SCHEMA
from pipeline.sink import read_results


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
    return cfg, report, read_results(cfg.output)


def test_every_id_exactly_once(mixed_run):
    _, report, table = mixed_run
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(["v1", "v2", "img", "img-again", "empty", "corrupt", "missing", "bad-window"])
    assert len(ids) == len(set(ids))
    assert (report.summary.total, report.summary.ok, report.summary.failed) == (8, 4, 4)


def test_ok_rows_have_captions_and_token_counts(mixed_run):
    cfg, _, table = mixed_run
    assert table.schema.equals(RESULT_SCHEMA)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    for r in ok:
        assert r["caption"] and r["caption"].strip()
        assert r["error"] is None and r["error_type"] is None
        assert r["model"] == cfg.model.path and r["task"] == "caption"
        assert r["num_visual_tokens"] > 0 and r["num_kept_tokens"] == r["num_visual_tokens"]
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


def test_rerun_into_same_output_is_refused(mixed_run):
    cfg, _, _ = mixed_run
    with pytest.raises(OutputExistsError, match="already has results"):
        run_pipeline(cfg)


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
    assert "items: 2 (1 ok, 1 failed)" in r.stdout
    table = read_results(str(tmp_path / "o"))
    assert sorted(table["id"].to_pylist()) == ["a", "b"]
