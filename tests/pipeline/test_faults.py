"""Faults on a real Ray cluster: a second node, a killed model actor, a killed driver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import GenerationConfig, ModelConfig, PipelineConfig
from pipeline.run import run_pipeline
from pipeline.sink import read_results
from tests.support.faults import MODEL_WORKER, kill_after_first_result, media_manifest, result_files, stage_workers, wait_for


def image_manifest(root: Path, count: int) -> str:
    return media_manifest(root, count, video_every=0)


def assert_exactly_once(output: Path, count: int) -> pa.Table:
    table = read_results(str(output))
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == count
    return table


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


@pytest.fixture()
def two_node_cluster(ray_cluster):
    return ray_cluster(nodes=2)


def test_job_on_a_two_node_cluster_through_ray_address(two_node_cluster, tmp_path, tiny_model_dir):
    address, env = two_node_cluster
    manifest = image_manifest(tmp_path, 6)
    status = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert status.stdout.strip().splitlines()[-1] == "2", status.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--input", manifest, "--output", str(tmp_path / "out"),
                        "--model", str(tiny_model_dir), "--max-new-tokens", "4"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "items: 6 (6 ok, 0 failed)" in r.stdout
    assert_exactly_once(tmp_path / "out", 6)


def test_killed_model_actor_is_restarted_and_its_items_redone(tmp_path, tiny_model_dir, ray_local):
    count = 48
    cfg = PipelineConfig(input=image_manifest(tmp_path, count), output=str(tmp_path / "out"),
                         model=ModelConfig(path=str(tiny_model_dir)), generation=GenerationConfig(max_new_tokens=24))
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(report=run_pipeline(cfg)), daemon=True)
    runner.start()
    wait_for(lambda: result_files(tmp_path / "out"), 300, "the first result file")
    # Ray titles actor processes "ray::MapWorker(MapBatches(ModelStage))..."; only this session's
    # Ray (started by this process) is searched, never other jobs on the machine.
    victims = [proc for _, proc in stage_workers(os.getpid(), (MODEL_WORKER,))]
    assert victims, "no live model actor process found"
    for proc in victims:
        proc.kill()
    runner.join(timeout=600)
    assert "report" in outcome, "the run did not finish after its actor was killed"
    table = assert_exactly_once(tmp_path / "out", count)
    assert set(table["status"].to_pylist()) == {"ok"}
    assert outcome["report"].this_run.ok == count


def test_killed_driver_rerun_resumes_without_loss_or_duplicates(tmp_path, tiny_model_dir):
    count = 48
    manifest, output = image_manifest(tmp_path, count), tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--input", manifest, "--output", str(output),
           "--model", str(tiny_model_dir), "--max-new-tokens", "24"]
    kill_after_first_result(cmd, cli_env(), output)
    done_before = len(read_results(str(output)))
    assert 0 < done_before < count
    second = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done_before} already done, skipped" in second.stdout
    table = assert_exactly_once(output, count)
    assert set(table["status"].to_pylist()) == {"ok"}
    assert not list((output / "results").rglob(".tmp-*"))
