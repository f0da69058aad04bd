"""Chaos: model and decode worker processes SIGKILLed at random, several times in one run; the
output still holds every id exactly once, all ok (Ray retries the tasks, restarts the actor)."""

from __future__ import annotations

import os
import random
import threading

from pipeline.config import GenerationConfig, ModelConfig, PipelineConfig
from pipeline.run import run_pipeline
from tests.support.faults import kill_random_worker, media_manifest, tally

KILLS = 5


def test_random_worker_kills_lose_and_duplicate_nothing(tmp_path, tiny_model_dir, ray_local):
    count = 48
    manifest, output = media_manifest(tmp_path, count), tmp_path / "out"
    cfg = PipelineConfig(input=manifest, output=str(output), model=ModelConfig(path=str(tiny_model_dir)),
                         generation=GenerationConfig(max_new_tokens=24), stall_timeout_s=180)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = run_pipeline(cfg)
        except BaseException as exc:  # re-checked below with the message
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    rng, killed = random.Random(10), []
    while len(killed) < KILLS and runner.is_alive():
        victim = kill_random_worker(rng, os.getpid())  # ray_local's processes are this process's children
        if victim:
            killed.append(victim)
        runner.join(timeout=rng.uniform(1.0, 3.0))
    runner.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert "report" in outcome, "the run did not finish"
    assert len(killed) >= 3, f"only {len(killed)} workers were killed before the run ended: {killed}"
    final = tally(output, manifest)
    assert (final.lost, final.duplicated, final.failed, final.rows) == (0, 0, 0, count), killed
