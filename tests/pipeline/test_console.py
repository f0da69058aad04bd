"""The console shows our progress and summary; Ray's and the decoders' messages go to the run's log."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Each is printed on every such run: the driver's C++ core worker (the model actor's constructor
# arguments), Ray Data's executor, and the decoder failing on the broken file (in a Ray worker).
NOISE = ("core_worker.cc", "streaming_executor", "ERROR opening")


def run_cli(tmp_path, media, model_dir, *extra):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "uri": [str(media["video"]), str(media["corrupt"])]}), manifest)
    output = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--input", str(manifest), "--output", str(output),
                        "--model", str(model_dir), "--num-frames", "2", *extra],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "items: 2 (1 ok, 1 failed); 0 already done" in r.stdout
    assert "failed MediaError: 1" in r.stdout
    logs = list((output / "_runs").glob("*.log"))
    assert len(logs) == 1, logs
    return r.stdout + r.stderr, logs[0].read_text(errors="replace")


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_ray_and_decoder_messages_reach_the_console_only_with_verbose(tmp_path, media, tiny_model_dir, verbose):
    console, log = run_cli(tmp_path, media, tiny_model_dir, *(["--verbose"] if verbose else []))
    assert [n for n in NOISE if n not in log] == [], log[-3000:]
    on_console = [n for n in NOISE if n in console]
    assert on_console == (list(NOISE) if verbose else []), console[-3000:]
    assert "progress: 2/2 items" in console
