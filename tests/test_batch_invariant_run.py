"""Through `iwp-annotate run` with the shipped model: the captions do not depend on the memory
budget or the batch caps, and a manifest's per-row `max_new_tokens` is each row's own limit (a
bad value fails its row only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.sample_data import make_sample_dataset
from pipeline.sink import read_results


def run(manifest: str, out: str, *flags: str) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--input", manifest, "--output", out, *flags],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {row["id"]: row for row in read_results(out).to_pylist()}


def test_captions_are_the_same_whatever_the_memory_budget_and_caps(tmp_path):
    manifest = make_sample_dataset(tmp_path / "data", videos=3, images=3, broken=False)
    table = pq.read_table(manifest)
    limits = pa.array([None, 3, None, 0, None, 5], pa.int64())  # video-1: 3 tokens, image-0: refused, image-2: 5
    pq.write_table(table.append_column("max_new_tokens", limits), manifest)
    roomy = run(str(manifest), str(tmp_path / "roomy"))
    tight = run(str(manifest), str(tmp_path / "tight"), "--max-batch-size", "1", "--memory-limit-mb", "64",
                "--rows-per-call", "2")
    assert roomy.keys() == tight.keys() and len(roomy) == 6
    assert {k: (r["status"], r["caption"]) for k, r in roomy.items()} == \
        {k: (r["status"], r["caption"]) for k, r in tight.items()}
    refused = roomy["image-0"]
    assert (refused["status"], refused["stage"], refused["error_type"]) == ("failed", "model", "ValueError")
    assert "max_new_tokens must be a whole number from 1 to 4096, got 0" in refused["error"]
    full = roomy["video-0"]["caption"].split()
    assert len(full) > 5 and roomy["video-1"]["status"] == "ok"
    assert len(roomy["video-1"]["caption"].split()) <= 3 and len(roomy["image-2"]["caption"].split()) <= 5
