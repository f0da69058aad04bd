"""`iwp-annotate`: run the annotation pipeline, or the self-contained demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import BatchingConfig, GenerationConfig, ModelConfig, PipelineConfig, SamplingConfig


def _config_from_args(args: argparse.Namespace, model_path: str) -> PipelineConfig:
    return PipelineConfig(
        input=args.input,
        output=args.output,
        task=args.task,
        model=ModelConfig(path=model_path, device=args.device, dtype=args.dtype),
        sampling=SamplingConfig(num_frames=args.num_frames, max_side=args.max_side),
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens),
        batching=BatchingConfig(max_batch_size=args.max_batch_size, max_batch_tokens=args.max_batch_tokens),
        model_actors=(1, args.model_actors),
        gpus_per_actor=args.gpus_per_actor,
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["caption"], default="caption")
    p.add_argument("--model", help="local model directory (default: the embedded default model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly per video")
    p.add_argument("--max-side", type=int, default=448, help="longest frame side after decode")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--model-actors", type=int, default=1, help="upper bound of the autoscaling model actor pool")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iwp-annotate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="annotate the media listed in a Parquet manifest")
    run.add_argument("--input", required=True, help="manifest Parquet file (local path or pyarrow URI)")
    run.add_argument("--output", required=True, help="output directory; results land in OUTPUT/results")
    _add_run_options(run)
    demo = sub.add_parser("demo", help="make sample media and run the job on the embedded default model")
    demo.add_argument("--workdir", default="demo-output", help="where sample media and results go")
    return p


def resolve_model(model: str | None) -> str:
    from jobs.default_model import DEFAULT_MODEL_NOTE, default_model_path

    if model is None:
        print(DEFAULT_MODEL_NOTE, flush=True)
        return str(default_model_path())
    if not os.path.isdir(model):
        raise FileNotFoundError(f"--model {model!r} is not a local model directory")
    return os.path.abspath(model)


def print_report(report) -> None:
    s = report.summary
    print(f"items: {s.total} ({s.ok} ok, {s.failed} failed)")
    for name, count in sorted(s.errors.items()):
        print(f"  failed {name}: {count}")
    print(f"time: {report.seconds:.1f} s, {report.items_per_s:.2f} items/s")
    print(f"results: {report.results}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pipeline.manifest import ManifestError
    from pipeline.run import OutputExistsError, run_pipeline

    try:
        if args.command == "demo":
            from jobs.demo import run_demo

            run_demo(Path(args.workdir))
            return 0
        cfg = _config_from_args(args, resolve_model(args.model))
        print_report(run_pipeline(cfg))
        return 0
    except (ManifestError, FileNotFoundError, OutputExistsError) as exc:
        print(f"iwp-annotate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
