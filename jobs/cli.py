"""`iwp-annotate`: run the annotation pipeline (from a job spec or flags), submit it to a Ray
cluster, or run the self-contained demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import (BatchingConfig, DecodeIsolationConfig, GenerationConfig, ModelConfig, PipelineConfig,
                             PruningConfig, SamplingConfig)

# Flags that describe the job; in the spec form the spec holds them instead.
CONFIG_FLAGS = ("input", "output", "name", "task", "tag_vocabulary", "model", "device", "dtype", "num_frames",
                "fps", "max_side", "max_new_tokens", "prune", "keep_ratio", "prune_layer", "fidelity_target",
                "max_batch_size", "max_batch_tokens", "model_actors", "gpus_per_actor", "pushgateway", "stall_timeout",
                "grace_period", "decode_timeout", "decode_attempts", "no_decode_isolation")


def _given(args: argparse.Namespace, name: str, default):
    value = getattr(args, name)
    return default if value is None else value


def config_from_flags(args: argparse.Namespace) -> PipelineConfig:
    """The flag form: the same PipelineConfig a job spec produces, with the same defaults."""
    missing = [f"--{n}" for n in ("input", "output") if getattr(args, n) is None]
    if missing:
        raise UsageError(f"give a job spec (iwp-annotate run SPEC.yaml) or {' and '.join(missing)}")
    vocabulary = tuple(w.strip() for w in (args.tag_vocabulary or "").split(",") if w.strip())
    pruning = PruningConfig()
    return PipelineConfig(
        name=_given(args, "name", "iwp-annotate"),
        input=args.input,
        output=args.output,
        task=_given(args, "task", "caption"),
        tag_vocabulary=vocabulary,
        model=ModelConfig(path=resolve_model(args.model), device=_given(args, "device", "auto"),
                          dtype=_given(args, "dtype", "auto")),
        sampling=SamplingConfig(num_frames=_given(args, "num_frames", SamplingConfig().num_frames),
                                max_side=_given(args, "max_side", SamplingConfig().max_side), fps=args.fps),
        generation=GenerationConfig(max_new_tokens=_given(args, "max_new_tokens", GenerationConfig().max_new_tokens)),
        pruning=PruningConfig(method=_given(args, "prune", pruning.method), keep_ratio=_given(args, "keep_ratio", pruning.keep_ratio),
                              layer=_given(args, "prune_layer", pruning.layer), fidelity_target=args.fidelity_target),
        batching=BatchingConfig(max_batch_size=_given(args, "max_batch_size", BatchingConfig().max_batch_size),
                                max_batch_tokens=_given(args, "max_batch_tokens", BatchingConfig().max_batch_tokens)),
        model_actors=(1, _given(args, "model_actors", 1)),
        gpus_per_actor=_given(args, "gpus_per_actor", 0.0),
        pushgateway=args.pushgateway or os.environ.get("IWP_PUSHGATEWAY_URL"),
        stall_timeout_s=_given(args, "stall_timeout", 900.0),
        grace_period_s=_given(args, "grace_period", PipelineConfig.model_fields["grace_period_s"].default),
        decode_isolation=DecodeIsolationConfig(
            enabled=not args.no_decode_isolation,
            timeout_s=_given(args, "decode_timeout", DecodeIsolationConfig().timeout_s),
            max_attempts=_given(args, "decode_attempts", DecodeIsolationConfig().max_attempts)),
    )


def config_from_spec(args: argparse.Namespace) -> PipelineConfig:
    from jobs.spec import load_spec

    clashing = [f"--{n.replace('_', '-')}" for n in CONFIG_FLAGS if getattr(args, n) is not None]
    if clashing:
        raise UsageError(f"{', '.join(clashing)} cannot be combined with a job spec: set them in {args.spec}")
    cfg = load_spec(args.spec).to_pipeline_config()
    if not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model.path {cfg.model.path!r} in {args.spec} is not a local model directory")
    return cfg


class UsageError(ValueError):
    """The command line itself is inconsistent."""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="YAML job spec (see examples/job.yaml); or describe the job with flags")
    p.add_argument("--input", help="manifest Parquet file (local path or pyarrow URI)")
    p.add_argument("--output", help="output directory; results land in OUTPUT/results")
    p.add_argument("--retry-failed", action="store_true", help="also redo ids whose earlier attempt failed")
    p.add_argument("--metrics-port", type=int, help="Ray metrics export port of a local Ray instance")
    p.add_argument("--name", help="job name: metrics label and Pushgateway group (default iwp-annotate)")
    p.add_argument("--task", choices=["caption", "tag"])
    p.add_argument("--tag-vocabulary", help="comma-separated closed vocabulary for --task tag")
    p.add_argument("--model", help="local model directory (default: the embedded default model)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--num-frames", type=int, help="frames sampled uniformly per video (default 8)")
    p.add_argument("--fps", type=float, help="sample frames at this rate (capped by --num-frames) instead of by count")
    p.add_argument("--max-side", type=int, help="longest frame side after decode (default 448)")
    p.add_argument("--max-new-tokens", type=int, help="default 32")
    p.add_argument("--prune", help="visual-token pruning method, or 'none' (default: iwp)")
    p.add_argument("--keep-ratio", type=float, help="share of visual tokens kept (default 0.222)")
    p.add_argument("--prune-layer", type=int, help="decoder layer where tokens are pruned (default 2)")
    p.add_argument("--fidelity-target", type=float, help="adaptive budget: keep the fewest tokens reaching this weight fidelity")
    p.add_argument("--max-batch-size", type=int, help="items per forward pass (default 8)")
    p.add_argument("--max-batch-tokens", type=int, help="padded tokens per forward pass (default 16384)")
    p.add_argument("--model-actors", type=int, help="upper bound of the autoscaling model actor pool (default 1)")
    p.add_argument("--gpus-per-actor", type=float, help="default 0")
    p.add_argument("--pushgateway", help="Pushgateway URL for the run summary (default: $IWP_PUSHGATEWAY_URL)")
    p.add_argument("--stall-timeout", type=float, help="fail when no item finishes for this many seconds (default 900)")
    p.add_argument("--grace-period", type=float, help="on SIGTERM, exit (code 143) within this many seconds (default 25)")
    p.add_argument("--decode-timeout", type=float, help="an item still decoding after this many seconds fails (default 120)")
    p.add_argument("--decode-attempts", type=int, help="tries for an item whose decoder process crashes (default 3)")
    p.add_argument("--no-decode-isolation", action="store_true", default=None,
                   help="decode inside the Ray worker instead of a child process per worker")


def parser() -> argparse.ArgumentParser:
    from jobs.submit import add_submit_commands

    p = argparse.ArgumentParser(prog="iwp-annotate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_options(sub.add_parser("run", help="annotate the media listed in a Parquet manifest"))
    demo = sub.add_parser("demo", help="make sample media and run the job on the embedded default model")
    demo.add_argument("--workdir", default="demo-output", help="where sample media and results go")
    ev = sub.add_parser("eval", help="accuracy of every pruning method on held-out generated scenes")
    ev.add_argument("--model", default=None, help="local model directory (default: the shipped reference model)")
    ev.add_argument("--out", default="reports/eval", help="folder for results.json, report.md and plots")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--images", type=int, default=100, help="scenes per modality (each captioned and tagged)")
    ev.add_argument("--videos", type=int, default=50)
    ev.add_argument("--methods", default=None, help="comma-separated pruning methods (default: all)")
    ev.add_argument("--keep-ratios", default="0.353,0.222,0.111,0.056")
    ev.add_argument("--layer", type=int, default=2, help="decoder layer K that prunes")
    ev.add_argument("--media", default="image,video", help="modalities to evaluate")
    ev.add_argument("--tune-images", type=int, default=40, help="validation scenes per modality that choose each "
                    "method's knob (0 with --tune-videos 0: no tuning)")
    ev.add_argument("--tune-videos", type=int, default=16)
    ev.add_argument("--tune-ratios", default="0.111,0.056", help="keep ratios at which knobs are compared")
    ev.add_argument("--threads", type=int, default=2, help="torch threads (pinned: results depend on it)")
    add_submit_commands(sub)
    return p


def run_eval(args: argparse.Namespace) -> None:
    from jobs.eval import evaluate
    from jobs.eval_report import write_report

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    ratios = tuple(float(r) for r in args.keep_ratios.split(","))
    results = evaluate(resolve_model(args.model), split=args.split, images=args.images, videos=args.videos,
                       methods=methods, keep_ratios=ratios, layer=args.layer,
                       media_types=tuple(m.strip() for m in args.media.split(",")),
                       partial=Path(args.out) / "rows.partial.json", tune_images=args.tune_images,
                       tune_videos=args.tune_videos, tune_ratios=tuple(float(r) for r in args.tune_ratios.split(",")),
                       threads=args.threads)
    print(f"report: {write_report(results, args.out)}")
    (Path(args.out) / "rows.partial.json").unlink(missing_ok=True)


def resolve_model(model: str | None) -> str:
    from jobs.default_model import DEFAULT_MODEL_NOTE, default_model_path

    if model is None:
        print(DEFAULT_MODEL_NOTE, flush=True)
        return str(default_model_path())
    if not os.path.isdir(model):
        raise FileNotFoundError(f"--model {model!r} is not a local model directory")
    return os.path.abspath(model)


def print_report(report) -> None:
    s = report.this_run
    print(f"run {report.run_id} (fingerprint {report.fingerprint})")
    print(f"items: {s.total} ({s.ok} ok, {s.failed} failed); {report.skipped} already done, skipped")
    for name, count in sorted(s.errors.items()):
        print(f"  failed {name}: {count}")
    print(f"time: {report.seconds:.1f} s, {report.items_per_s:.2f} items/s")
    o = report.output
    print(f"output now holds {o.total} ids ({o.ok} ok, {o.failed} failed): {report.results}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pydantic import ValidationError

    from jobs.spec import SpecError
    from jobs.submit import SUBMIT_COMMANDS, run_submit_command
    from pipeline.lock import OutputLockedError
    from pipeline.manifest import ManifestError
    from pipeline.preemption import EXIT_PREEMPTED, Preempted
    from pipeline.progress import StallError
    from pipeline.run import run_pipeline
    from pipeline.sink import FingerprintMismatchError
    from pipeline.storage import OutputStorageError

    if args.command in SUBMIT_COMMANDS:
        return run_submit_command(args)
    try:
        if args.command == "demo":
            from jobs.demo import run_demo

            run_demo(Path(args.workdir))
            return 0
        if args.command == "eval":
            run_eval(args)
            return 0
        cfg = config_from_spec(args) if args.spec else config_from_flags(args)
        print_report(run_pipeline(cfg, retry_failed=args.retry_failed, metrics_port=args.metrics_port))
        return 0
    except OutputStorageError as exc:
        print(f"iwp-annotate: output storage error: {exc}; results written so far are kept, free space or fix "
              "the mount and rerun the same command to finish", file=sys.stderr)
        return 4
    except (UsageError, SpecError, ManifestError, FileNotFoundError, FingerprintMismatchError, OutputLockedError) as exc:
        print(f"iwp-annotate: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"iwp-annotate: error: invalid option: {problems}", file=sys.stderr)
        return 2
    except StallError as exc:
        print(f"iwp-annotate: stalled: {exc}", file=sys.stderr)
        return 3
    except Preempted as exc:
        print(f"iwp-annotate: preempted: {exc}; results written so far are kept, rerun the same command to finish",
              file=sys.stderr, flush=True)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
