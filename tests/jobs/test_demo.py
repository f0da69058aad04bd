import os
import subprocess
import sys

from pipeline.sink import read_results


def test_demo_builds_default_model_and_reports(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["IWP_ANNOTATE_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RANDOM weights" in r.stdout
    assert "items: 7 (6 ok, 1 failed); 0 already done" in r.stdout
    assert (tmp_path / "cache" / "models" / "tiny-random-qwen2_5_vl-v1" / "model.safetensors").exists()
    table = read_results(str(tmp_path / "demo" / "output"))
    assert sorted(table["id"].to_pylist()) == sorted(
        [f"video-{i}" for i in range(3)] + [f"image-{i}" for i in range(3)] + ["broken-0"]
    )
