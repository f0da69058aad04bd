"""Build the Ray Data pipeline for one validated config and execute it."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from pipeline.config import PipelineConfig
from pipeline.decode import decode_row
from pipeline.engine import ModelEngine
from pipeline.manifest import ManifestError, read_manifest
from pipeline.preprocess import preprocess_row
from pipeline.sink import Summary, results_uri, summarise
from pipeline.storage import resolve


class OutputExistsError(FileExistsError):
    """The output already holds results; refusing to mix runs silently."""


@dataclass(frozen=True)
class RunReport:
    summary: Summary
    seconds: float
    results: str

    @property
    def items_per_s(self) -> float:
        return self.summary.total / self.seconds if self.seconds > 0 else 0.0


def ensure_ray() -> None:
    """Join the cluster in RAY_ADDRESS if set, else start a private local instance."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def check_output(output: str) -> None:
    fs, path = resolve(results_uri(output))
    if fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        raise OutputExistsError(f"output {output!r} already has results; choose a new output directory")


def blocks_of(manifest: pa.Table, target_blocks: int = 200, max_rows: int = 64) -> list[pa.Table]:
    """Slice the manifest so decode work spreads over many tasks, even for tiny manifests."""
    rows = max(1, min(max_rows, math.ceil(len(manifest) / target_blocks)))
    return [manifest.slice(i, rows) for i in range(0, len(manifest), rows)]


def build_dataset(cfg: PipelineConfig, manifest: pa.Table) -> ray.data.Dataset:
    # A remote-args function keeps Ray Data from fusing the CPU stages into the model
    # actor, so decoding scales on its own task pool instead of stalling the model.
    cpu_stage = {"ray_remote_args_fn": lambda: {"num_cpus": cfg.cpus_per_decode_task}}
    ds = ray.data.from_arrow(blocks_of(manifest))
    ds = ds.map(decode_row, fn_kwargs={"cfg": cfg.sampling}, **cpu_stage)
    ds = ds.map(
        preprocess_row,
        fn_kwargs={"model_path": cfg.model.path, "gen": cfg.generation, "trust_remote_code": cfg.model.trust_remote_code},
        **cpu_stage,
    )
    return ds.map_batches(
        ModelEngine,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=cfg.batching.rows_per_call,
        batch_format="numpy",
        concurrency=cfg.model_actors,
        num_cpus=cfg.cpus_per_model_actor,
        num_gpus=cfg.gpus_per_actor,
    )


def run_pipeline(cfg: PipelineConfig) -> RunReport:
    """Validate the manifest, stream every row to Parquet, and summarise the written output."""
    if not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model directory {cfg.model.path!r} does not exist")
    manifest = read_manifest(cfg.input)
    if len(manifest) == 0:
        raise ManifestError(f"manifest {cfg.input!r} has no rows")
    check_output(cfg.output)
    ensure_ray()
    started = time.perf_counter()
    ds = build_dataset(cfg, manifest)
    fs, path = resolve(results_uri(cfg.output))
    ds.write_parquet(path, filesystem=fs)
    seconds = time.perf_counter() - started
    return RunReport(summary=summarise(cfg.output), seconds=seconds, results=results_uri(cfg.output))
