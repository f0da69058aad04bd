"""`iwp-annotate`: run the annotation pipeline (from a job spec or flags), submit it to a Ray
cluster, or run the self-contained demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jobs.default_model import resolve_model
from jobs.flags import add_job_flags, given_flags, overlay
from jobs.spec import JobSpec, load_spec_data, spec_from_data
from jobs.summary import print_report

EXIT_MODEL_BROKEN = 5  # the model actor died on every recent batch (pipeline.quarantine)


class UsageError(ValueError):
    """The command line itself is inconsistent."""


def job_config(args: argparse.Namespace) -> JobSpec:
    """The run's configuration: the spec file's mapping (or none) with the given flags laid over
    it, validated once as a `JobSpec` (the pipeline's configuration)."""
    try:
        flags = given_flags(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.spec:
        data, source = load_spec_data(args.spec), str(args.spec)
        if flags:
            source += " with the command line's flags"
    else:
        missing = [f"--{n}" for n, path in (("input", "input"), ("output", "output.path")) if path not in flags]
        if missing:
            raise UsageError(f"give a job spec (iwp-annotate run SPEC.yaml) or {' and '.join(missing)}")
        data, source = {}, "the command line's flags"
        if os.environ.get("IWP_PUSHGATEWAY_URL"):
            data["metrics"] = {"pushgateway": os.environ["IWP_PUSHGATEWAY_URL"]}
    if "model.path" in flags or not args.spec:
        flags["model.path"] = resolve_model(flags.get("model.path"))
    cfg = spec_from_data(overlay(data, flags), source)
    if not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model.path {cfg.model.path!r} in {source} is not a local model directory")
    return cfg


VERBOSE_HELP = "also show Ray's, the decoders' and transformers' messages here (always in OUTPUT/_runs/<run id>.log)"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="YAML job spec (see examples/job.yaml); flags given beside it override "
                                           "its values, and without one the flags describe the whole job")
    p.add_argument("--retry-failed", action="store_true", help="also redo ids whose earlier attempt failed")
    p.add_argument("--metrics-port", type=int, help="Ray metrics export port of a local Ray instance")
    add_job_flags(p.add_argument_group("job settings (each a field of the job spec; default from the spec model)"))
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def parser() -> argparse.ArgumentParser:
    from jobs.submit import add_submit_commands

    p = argparse.ArgumentParser(prog="iwp-annotate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_options(sub.add_parser("run", help="annotate the media listed in a Parquet manifest"))
    demo = sub.add_parser("demo", help="make sample media and run the job on the embedded default model")
    demo.add_argument("--workdir", default="demo-output", help="where sample media and results go")
    demo.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    rep = sub.add_parser("report", help="write a static HTML report of a job's output (open DIR/index.html)")
    rep.add_argument("output", help="the job's output directory (local path or s3:// URI)")
    rep.add_argument("--out", required=True, help="folder for the site (local or s3://); pictures already there are reused")
    rep.add_argument("--page-size", type=int, default=50, help="gallery items per page")
    ev = sub.add_parser("eval", help="accuracy of every pruning method on held-out generated scenes")
    ev.add_argument("--model", default=None, help="local model directory (default: the shipped reference model)")
    ev.add_argument("--out", default="reports/eval", help="folder for results.json, report.md and plots")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--images", type=int, default=100, help="scenes per modality (each captioned and tagged)")
    ev.add_argument("--videos", type=int, default=50)
    ev.add_argument("--first-scene", type=int, default=0, help="scene index of the split to start at (a fresh slice)")
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

    import iwp_ops

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    unknown = [m for m in methods or () if m not in iwp_ops.METHODS]
    if unknown:
        raise UsageError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(iwp_ops.METHODS)}")
    if args.first_scene < 0:
        raise UsageError("--first-scene must be >= 0")
    ratios = tuple(float(r) for r in args.keep_ratios.split(","))
    results = evaluate(resolve_model(args.model), split=args.split, images=args.images, videos=args.videos,
                       first_scene=args.first_scene, methods=methods, keep_ratios=ratios, layer=args.layer,
                       media_types=tuple(m.strip() for m in args.media.split(",")),
                       partial=Path(args.out) / "rows.partial.json", tune_images=args.tune_images,
                       tune_videos=args.tune_videos, tune_ratios=tuple(float(r) for r in args.tune_ratios.split(",")),
                       threads=args.threads)
    print(f"report: {write_report(results, args.out)}")
    (Path(args.out) / "rows.partial.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import ray

    from jobs.submit import SUBMIT_COMMANDS, run_submit_command
    from pipeline.run import stop_ray

    if args.command in SUBMIT_COMMANDS:
        return run_submit_command(args)
    caller_has_ray = ray.is_initialized()
    try:
        return _dispatch(args)
    finally:
        if not caller_has_ray:  # the Ray this command started ends with it: now, not in the slower exit hook
            stop_ray()


def _dispatch(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from jobs.spec import SpecError
    from pipeline.lock import OutputLockedError
    from pipeline.manifest import ManifestError
    from pipeline.preemption import EXIT_PREEMPTED, Preempted
    from pipeline.progress import StallError
    from pipeline.quarantine import ModelBroken
    from pipeline.run import run_pipeline
    from pipeline.sink import FingerprintMismatchError
    from pipeline.storage import OutputStorageError, StorageUnavailableError

    try:
        if args.command == "demo":
            from jobs.demo import run_demo

            run_demo(Path(args.workdir), verbose=args.verbose)
            return 0
        if args.command == "eval":
            run_eval(args)
            return 0
        if args.command == "report":
            from jobs.report import write_report

            if args.page_size < 1:
                raise UsageError("--page-size must be at least 1")
            print(f"report: {write_report(args.output, args.out, args.page_size)}")
            return 0
        cfg = job_config(args)
        print_report(run_pipeline(cfg, retry_failed=args.retry_failed, metrics_port=args.metrics_port,
                                  console="verbose" if args.verbose else "quiet"))
        return 0
    except OutputStorageError as exc:
        print(f"iwp-annotate: output storage error: {exc}; results written so far are kept, free space or fix "
              "the mount and rerun the same command to finish", file=sys.stderr)
        return 4
    except (UsageError, SpecError, ManifestError, FileNotFoundError, FingerprintMismatchError, OutputLockedError,
            StorageUnavailableError) as exc:
        print(f"iwp-annotate: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"iwp-annotate: error: invalid option: {problems}", file=sys.stderr)
        return 2
    except ModelBroken as exc:
        print(f"iwp-annotate: model broken: {exc}", file=sys.stderr)
        return EXIT_MODEL_BROKEN
    except StallError as exc:
        print(f"iwp-annotate: stalled: {exc}", file=sys.stderr)
        return 3
    except Preempted as exc:
        print(f"iwp-annotate: preempted: {exc}; results written so far are kept, rerun the same command to finish",
              file=sys.stderr, flush=True)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
