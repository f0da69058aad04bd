"""`iwp-annotate demo`: sample media, one run on the default model, a short summary."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from jobs.cli import print_report, resolve_model
from jobs.sample_data import make_sample_dataset
from pipeline.config import ModelConfig, PipelineConfig
from pipeline.run import run_pipeline
from pipeline.sink import read_results


def run_demo(workdir: Path) -> None:
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    manifest = make_sample_dataset(workdir)
    print(f"sample data: {manifest} (3 videos, 3 images, 1 deliberately broken file)")
    cfg = PipelineConfig(
        input=str(manifest),
        output=str(workdir / "output"),
        model=ModelConfig(path=resolve_model(None)),
    )
    report = run_pipeline(cfg)
    print_report(report)
    for row in read_results(cfg.output).sort_by("id").to_pylist():
        text = row["caption"] if row["status"] == "ok" else f"{row['error_type']}: {row['error']}"
        tokens = f"{row['num_visual_tokens'] or 0:>4} -> {row['num_kept_tokens'] or 0:>3}"
        print(f"  {row['id']:<10} {row['status']:<6} visual tokens {tokens}  {text[:64]}")
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
