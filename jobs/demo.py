"""`iwp-annotate demo`: generated scenes, one run on the default model, captions checked against the truth."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from jobs.default_model import resolve_model
from jobs.sample_data import demo_scenes, make_sample_dataset
from jobs.summary import print_report
from jobs.report import write_report
from pipeline.config import ModelConfig, OutputConfig, PipelineConfig
from pipeline.run import run_pipeline
from pipeline.sink import read_results
from scenes.grading import caption_scores


def run_demo(workdir: Path, verbose: bool = False) -> None:
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    manifest = make_sample_dataset(workdir)
    truth = demo_scenes()
    print(f"sample data: {manifest} (3 videos, 3 images of held-out generated scenes, 1 deliberately broken file)")
    cfg = PipelineConfig(
        input=str(manifest),
        output=OutputConfig(path=str(workdir / "output"), record_kept_tokens=True),
        model=ModelConfig(path=resolve_model(None)),
    )
    report = run_pipeline(cfg, console="verbose" if verbose else "quiet")
    print_report(report)
    exact = 0
    for row in read_results(cfg.output.path).sort_by("id").to_pylist():
        text = row["caption"] if row["status"] == "ok" else f"{row['error_type']}: {row['error']}"
        tokens = f"{row['num_visual_tokens'] or 0:>4} -> {row['num_kept_tokens'] or 0:>3}"
        print(f"  {row['id']:<10} {row['status']:<6} visual tokens {tokens}  {text[:100]}")
        scene = truth.get(row["id"])
        if scene is not None and row["status"] == "ok":
            score = caption_scores(scene, row["caption"])
            exact += int(score["exact"])
            print(f"  {'':<10} truth:{'':<25}{scene.caption()}  (attributes right: {score['attribute_accuracy']:.0%})")
    print(f"captions exactly right: {exact} of {len(truth)}")
    print(f"report: {write_report(cfg.output.path, str(workdir / 'report'))} (open it in a browser)")
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
