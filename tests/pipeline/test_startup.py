"""What a run's start-up and shutdown leave out: torch in the driver, and Ray's processes after the CLI ends."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

import numpy as np

from tests.support.faults import cli_env


def _python(code: str, ray_tmp: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=cli_env(RAY_TMPDIR=ray_tmp),
                          capture_output=True, text=True, timeout=300)


def test_the_driver_builds_a_dataset_without_importing_torch_or_transformers(tmp_path):
    """The driver only names the model actor's class; torch and transformers load in the actor."""
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        r = _python(f"""
        import sys
        import pyarrow as pa
        from jobs.cli import main
        from pipeline.config import PipelineConfig
        from pipeline.run import build_dataset
        cfg = PipelineConfig(input="m.parquet", output={str(tmp_path)!r}, model={{"path": {str(tmp_path)!r}}})
        build_dataset(cfg, pa.table({{"id": ["a"], "uri": ["a.png"]}}), "run", "fp", "date=x", None)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """, ray_tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_model_stage_builds_the_engine_in_its_own_process_and_hands_it_each_batch(tiny_model_dir, monkeypatch):
    from jobs.spec import parse_spec
    from pipeline.engine import ModelEngine
    from pipeline.stages import ModelStage

    cfg = parse_spec(f"input: m\noutput: o\nmodel: {{path: {tiny_model_dir}, device: cpu}}\npruning: {{method: none}}\n")
    seen = []
    monkeypatch.setattr(ModelEngine, "__call__", lambda self, batch: seen.append((self, batch)) or "table")
    stage = ModelStage(cfg=cfg)
    batch = {"id": np.array(["a"])}
    assert isinstance(stage.engine, ModelEngine) and stage.engine.cfg is cfg
    assert stage(batch) == "table" and seen == [(stage.engine, batch)]


def test_stop_ray_ends_every_process_of_the_local_instance():
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        r = _python("""
            import psutil, ray
            from pipeline.run import ensure_ray, stop_ray
            ensure_ray()
            started = psutil.Process().children(recursive=True)
            assert len(started) >= 3, started  # gcs_server, raylet, monitor, ...
            stop_ray()
            alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            print("initialized:", ray.is_initialized(), "alive:", [p.name() for p in alive])
        """, ray_tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialized: False alive: []" in r.stdout, r.stdout


def test_the_cli_leaves_a_callers_ray_running(ray_local, tmp_path):
    from jobs.cli import main

    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert ray_local.is_initialized()


def test_one_run_book_keeps_the_board_and_the_ledger_apart():
    """Progress and crash bookkeeping share one actor process; neither may see the other's batches."""
    from pipeline.run import RunBook

    book = RunBook("m", attempts=3, breaker=10)
    book.started("batch-1", "model")
    book.begin("actor-1", ["a", "b"])
    book.finished("decode", 4)
    book.restarted("actor-1", "SIGSEGV")  # the actor died with a and b in its batch
    done, running = book.snapshot()
    assert done == {"decode": 4} and [stage for stage, _ in running] == ["model"]
    batches, failed, broken = book.plan([["a", "b", "c", "d"]])
    assert batches == [["a"], ["b"], ["c", "d"]] and not failed and broken is None
    book.finished("model", 4, "batch-1")
    assert book.snapshot()[1] == []
