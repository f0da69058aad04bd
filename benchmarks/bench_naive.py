"""The whole job against the script a user would write without this project, as whole processes.

On generated media (the demo's scenes, `jobs.sample_data`: H.264 mp4s of 8 frames and PNGs,
392 x 448, held-out split) and the shipped model (`reference/model`), this times, as the
operating system sees them, from process start to exit:

- ours: ``python -m jobs.cli run --input MANIFEST --output FRESH_DIR`` (`iwp-annotate run` as a
  new user types it: default settings, so IWP pruning on, decode and preprocess isolation on, the
  crash ledger, the progress board, metrics, the run log and record);
- naive: ``python -m benchmarks.naive_pipeline`` (read_parquet, a decord/PIL decode map_batches,
  one actor running the unpruned model's `generate()` on fixed 8-row batches, write_parquet).

Both write a fresh output per run, get the same prompt, max_new_tokens and dtype, and must
caption every item (a run that does not fails the benchmark). The two run in turn, A B then B A,
after one uncounted warm-up pair; quoted: the median over pairs of ours' wall time over the naive
script's (target <= 0.9), and beside it the same ratio of the CPU seconds of all the processes of
each run (Ray's included), which other load on the machine moves far less. The captions of the last pair are compared (pruning on against off).

Each run is its own session; the next run starts only once every process of the last one has
ended (Ray's workers outlive their driver by a moment), so no run pays for the one before.

Then the start-up parts, each its own process timed the same way (median of --part-runs, round
by round): the bare interpreter, the driver's imports, a local Ray started and stopped as
`iwp-annotate` does it and with the stock exit-time shutdown, the model actor's set-up
(`ModelEngine` built alone: torch, transformers, processor, model, pruning) and the naive
actor's, and the preprocess child's processor load. They overlap inside a job, and other work
on a 2-core machine slows them all, so they explain the total, not sum to it.

Usage: ``python -m benchmarks.bench_naive [--videos 30] [--images 15] [--pairs 3] [--workdir DIR]
[--out PATH]`` (about 6 minutes on 2 cores). Prints a table and writes JSON to
benchmarks/results/cpu/naive.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.harness.processes import paired, run_process
from benchmarks.harness.report import RESULTS, now, table, write_json
from jobs.default_model import default_model_path
from jobs.sample_data import make_sample_dataset

TARGET_RATIO = 0.9
REPO = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 32  # GenerationConfig's default, which ours runs with


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=30)
    p.add_argument("--images", type=int, default=15)
    p.add_argument("--pairs", type=int, default=3, help="counted pairs (one warm-up pair runs first)")
    p.add_argument("--warmup-pairs", type=int, default=1)
    p.add_argument("--part-runs", type=int, default=3, help="runs of each start-up part (0: skip them)")
    p.add_argument("--workdir", type=Path, help="keep media, outputs and logs here instead of a temp dir")
    p.add_argument("--out", type=Path, default=RESULTS / "cpu" / "naive.json")
    return p.parse_args(argv)


def _env() -> dict[str, str]:
    """This checkout first on the path, for both commands and every Ray worker they start."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def commands(manifest: Path, work: Path, model: Path) -> dict:
    def ours(tag: str):
        return [sys.executable, "-m", "jobs.cli", "run", "--input", str(manifest), "--output",
                str(work / "ours" / tag)], work / "logs" / f"ours-{tag}.log"

    def naive(tag: str):
        return [sys.executable, "-m", "benchmarks.naive_pipeline", "--input", str(manifest), "--output",
                str(work / "naive" / tag), "--model", str(model), "--max-new-tokens", str(MAX_NEW_TOKENS)], \
            work / "logs" / f"naive-{tag}.log"

    return {"ours": ours, "naive": naive}


def captions(work: Path, name: str, tag: str) -> dict[str, str]:
    """id -> caption of one run's output; ours keeps only ok rows (a failed row has no caption)."""
    path = work / name / tag / ("results" if name == "ours" else "")
    rows = pq.read_table(path).to_pylist()
    return {r["id"]: r["caption"] for r in rows if name == "naive" or r["status"] == "ok"}


def checker(work: Path, items: int):
    def check(name: str, run: dict) -> None:
        if run["returncode"] != 0:
            raise RuntimeError(f"{name} exited {run['returncode']}; see {run['log']}")
        done = len(captions(work, name, Path(run["log"]).stem.split("-", 1)[1]))
        if done != items:
            raise RuntimeError(f"{name} captioned {done} of {items} items; see {run['log']}")
    return check


def parts(model: Path, work: Path, runs: int) -> list[dict]:
    """The start-up pieces, each as a whole process."""
    m = repr(str(model))
    engine = ("from pipeline.config import PipelineConfig; from pipeline.engine import ModelEngine; "
              f"ModelEngine(PipelineConfig(input='unused', output='unused', model={{'path': {m}}}))")
    naive = ("import torch; from transformers import AutoModelForImageTextToText, AutoProcessor; "
             f"AutoProcessor.from_pretrained({m}); AutoModelForImageTextToText.from_pretrained({m}, dtype=torch.float32)")
    pieces = [
        ("interpreter", "python -c pass", "pass"),
        ("driver imports", "import jobs.cli, pipeline.run (what ours loads before Ray starts)",
         "import jobs.cli, pipeline.run"),
        ("ray start + stop", "pipeline.run.ensure_ray() then stop_ray() (a local instance, no dashboard)",
         "from pipeline.run import ensure_ray, stop_ray; ensure_ray(); stop_ray()"),
        ("ray start + exit", "ensure_ray(), then the stock shutdown at interpreter exit",
         "from pipeline.run import ensure_ray; ensure_ray()"),
        ("model actor set-up", "ModelEngine(cfg) alone: imports, processor, model, pruning hooks", engine),
        ("naive actor set-up", "the naive Captioner's imports, processor and model", naive),
        ("processor load", "the preprocess child's: transformers and the model's processor",
         f"from pipeline.preprocess import load_processor; load_processor({m})"),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in pieces}
    for i in range(runs):  # round by round, so drift in the machine's load hits every part alike
        for name, _, code in pieces:
            run = run_process([sys.executable, "-c", code], work / "logs" / f"part-{name.replace(' ', '_')}-{i}.log",
                              env=_env(), cwd=REPO)
            if run["returncode"] != 0:
                raise RuntimeError(f"start-up part {name!r} exited {run['returncode']}; see {run['log']}")
            walls[name].append(run["wall_s"])
    return [{"part": name, "what": what, "median_wall_s": statistics.median(walls[name]), "walls_s": walls[name]}
            for name, what, _ in pieces]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-naive-"))
    for stale in ("ours", "naive", "logs"):
        shutil.rmtree(work / stale, ignore_errors=True)
    manifest = make_sample_dataset(work / "data", videos=args.videos, images=args.images, broken=False)
    items = args.videos + args.images
    model = default_model_path()
    print(f"{items} items ({args.videos} videos, {args.images} images) in {manifest}; model {model}")
    load_before = os.getloadavg()
    pairs = paired(commands(manifest, work, model), args.pairs, args.warmup_pairs, checker(work, items),
                   env=_env(), cwd=REPO)
    load_after = os.getloadavg()
    last = f"pair{args.pairs - 1}"
    ours, naive = captions(work, "ours", last), captions(work, "naive", last)
    same = sum(ours[i] == naive[i] for i in naive) / items
    pieces = parts(model, work, args.part_runs) if args.part_runs else []

    ratio = pairs["median_ratio"]
    print()
    print(table([("command", -8), ("median wall s", 14), ("median CPU s, all processes", 28),
                 ("processes gone after s", 23), ("walls s", -30)],
                [(n, f"{pairs['median_wall_s'][n]:.1f}", f"{pairs['median_session_cpu_s'][n]:.1f}",
                  f"{pairs['median_linger_s'][n]:.1f}", " ".join(f"{r['wall_s']:.1f}" for r in pairs["runs"][n]))
                 for n in ("ours", "naive")]))
    print(f"ours / naive wall time: median {ratio:.2f} over {args.pairs} pairs "
          f"(range {pairs['ratio_range'][0]:.2f}-{pairs['ratio_range'][1]:.2f}); "
          f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'} target <= {TARGET_RATIO}")
    cpu = [r for r in pairs["cpu_ratios"] if r is not None]
    cpu_ratio = statistics.median(cpu)
    print(f"ours / naive CPU seconds of all their processes: median {cpu_ratio:.2f} (range "
          f"{min(cpu):.2f}-{max(cpu):.2f}); other load moves this far less than wall time")
    print(f"captions equal to the naive script's (pruning on vs off): {same:.0%} of {items}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other work slows both commands)")
    if pieces:
        print()
        print(table([("start-up part", -20), ("median wall s", 14), ("what", -70)],
                    [(p["part"], f"{p['median_wall_s']:.2f}", p["what"]) for p in pieces]))
    result = {
        "benchmark": "bench_naive",
        "date": now(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"videos": args.videos, "images": args.images, "pairs": args.pairs,
                   "warmup_pairs": args.warmup_pairs, "max_new_tokens": MAX_NEW_TOKENS, "model": "reference/model",
                   "ours": "python -m jobs.cli run --input MANIFEST --output FRESH (defaults)",
                   "naive": "python -m benchmarks.naive_pipeline --input MANIFEST --output FRESH"},
        "load_average": {"before": load_before, "after": load_after},
        "pairs": pairs,
        "captions_equal_share": same,
        "startup_parts": pieces,
        "ours_over_naive_cpu_median": cpu_ratio,
        "targets": {"ours_over_naive_wall": {"target": f"<= {TARGET_RATIO}", "value": ratio,
                                             "met": ratio <= TARGET_RATIO}},
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
