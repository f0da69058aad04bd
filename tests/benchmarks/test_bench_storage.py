"""`python -m benchmarks.bench_storage` and `bench_decoders` run, and report what they measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out}" in r.stdout
    return json.loads(out.read_text())


def test_bench_storage_measures_fetch_and_resume(tmp_path):
    report = run("benchmarks.bench_storage", tmp_path / "s.json", "--sizes-mb", "5,12", "--rows", "500", "--files", "20")
    assert [round(r["object_mb"]) for r in report["fetch"]] == [5, 12]
    for row in report["fetch"]:
        assert 1.0 <= row["bytes_fetched_over_size"] <= 1.05  # each object once
        assert row["frames"] == [8, 336, 448, 3] and row["decode_peak_rss_mb"] > 0 and row["fetch_mb_per_s"] > 0
    assert report["resume"]["rows"] == 500 and report["resume"]["files"] == 20
    assert report["resume"]["listing_s"] >= 0 and report["resume"]["plan_resume_s"] > 0


def test_bench_decoders_times_each_decoder_and_says_which_cannot(tmp_path):
    report = run("benchmarks.bench_decoders", tmp_path / "d.json", "--seconds", "2", "--repeats", "1")
    got = {(r["codec"], r["decoder"]): r["seconds"] for r in report["rows"]}
    cli = {(codec, "ffmpeg-cli") for codec in ("h264", "av1")} if shutil.which("ffmpeg") else set()
    assert set(got) == {("h264", "decord"), ("h264", "pyav"), ("av1", "decord"), ("av1", "pyav")} | cli
    assert all(got[key] > 0 for key in cli)
    assert got[("h264", "decord")] > 0 and got[("h264", "pyav")] > 0 and got[("av1", "pyav")] > 0
    assert report["decord"].startswith("decord ")
