"""Build the Ray Data pipeline for one validated config and execute it, resumably."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline import preemption
from pipeline.config import PipelineConfig
from pipeline.console import Console, captured
from pipeline.decode import decode_row
from pipeline.fingerprint import new_run_id, run_fingerprint
from pipeline.manifest import ManifestError, read_manifest
from pipeline.lock import output_lock
from pipeline.metrics import labels
from pipeline.plans import check_clip_ids, expected_rows, plan_batch, read_plans
from pipeline.preprocess import preprocess_row
from pipeline.progress import ProgressBoard, ProgressDisplay, StallError, diagnose, rows_expected, watched
from pipeline.pushgateway import JobSummary, push_summary
from pipeline.quarantine import CrashLedger, ModelBroken, crash_dir
from pipeline.runlog import RunRecord, write_record
from pipeline.sink import (RESULTS_DIR, Summary, fill_missing, plan_resume, read_results, reconcile, subdir, summarise,
                           sweep_temporary, write_batch)
from pipeline.storage import OutputStorageError, probe, storage_error
from pipeline.stages import ModelStage, run_stages


class RunObserver(Protocol):
    """Optional hooks for a caller that times a run from outside it (the pipeline benchmark); called
    on the driver, and must return at once. `started` gets the run's `RunBook` actor before the
    first batch (its ``snapshot`` gives the rows each stage has finished); `delivered` gets each
    output batch's row count as it reaches the driver."""

    def started(self, board: Any) -> None: ...

    def delivered(self, rows: int) -> None: ...


@dataclass(frozen=True)
class RunReport:
    run_id: str
    fingerprint: str
    this_run: Summary
    output: Summary
    skipped: int
    seconds: float
    results: str
    sources: int = 0  # manifest rows
    sources_planned: int = 0  # videos this run cut into clip plans
    clips: int = 0  # clip rows the output holds (0 without clips)

    @property
    def items_per_s(self) -> float:
        return self.this_run.total / self.seconds if self.seconds > 0 else 0.0


class RunBook(ProgressBoard, CrashLedger):
    """The run's bookkeeping in one Ray actor: the progress board and the crash ledger.

    Each is a few dicts that the driver owns for the run; as two actors they cost a second worker
    process at start-up, while the decode tasks and the model actor wait for worker processes.
    """

    def __init__(self, model: str, attempts: int, breaker: int) -> None:
        ProgressBoard.__init__(self)
        CrashLedger.__init__(self, model, attempts, breaker)


def ensure_ray(metrics_port: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS if set, else start a private local instance."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, _metrics_export_port=metrics_port)


def stop_ray() -> None:
    """Shut down this process's Ray instance now, a second and a half sooner than at interpreter exit.

    For a command-line run, whose process ends with the run; library callers keep their Ray.
    `ray.shutdown()` at exit first sleeps 0.5 s, and it stops the local instance's processes one by
    one, the autoscaler monitor after the GCS: the monitor's SIGTERM handler then waits for the dead
    GCS until Ray's one-second grace ends and Ray kills it (ray 2.60). The monitor keeps no state
    for a single machine, so it is killed first, as Ray would a second later; the rest stop as Ray
    stops them. An instance this process only connected to (RAY_ADDRESS) is left running.
    """
    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)
    for info in getattr(node, "all_processes", {}).get(ray._private.ray_constants.PROCESS_TYPE_MONITOR, []):
        info.process.kill()
        info.process.wait()
    ray.shutdown()


def blocks_of(manifest: pa.Table, target_blocks: int = 200, max_rows: int = 64, max_blocks: int = 1000) -> list[pa.Table]:
    """Slice the manifest so decode work spreads over many tasks, even for tiny manifests.

    At most `max_blocks`: each block costs the driver a few ms to hand to Ray before
    anything runs (a 1M-row manifest in 64-row blocks took a minute to plan).
    """
    rows = max(1, min(max_rows, math.ceil(len(manifest) / target_blocks)), math.ceil(len(manifest) / max_blocks))
    return [manifest.slice(i, rows) for i in range(0, len(manifest), rows)]


def build_dataset(cfg: PipelineConfig, todo: pa.Table, run_id: str, fingerprint: str, partition: str,
                  board: Any, ledger: Any = None) -> ray.data.Dataset:
    tags = labels(cfg.name, cfg.task.kind, cfg.pruning.method)
    min_actors, max_actors = cfg.resources.model_actors
    # A remote-args function keeps Ray Data from fusing the CPU stages into the model
    # actor, so decoding scales on its own task pool instead of stalling the model.
    cpu_stage = {"ray_remote_args_fn": lambda: {"num_cpus": cfg.resources.cpus_per_decode_task}, "batch_format": "pyarrow",
                 "batch_size": cfg.batching.rows_per_decode_batch}
    ds = ray.data.from_arrow(blocks_of(todo))
    if cfg.clips.enabled:
        ds = ds.map_batches(plan_batch, fn_kwargs={"clips": cfg.clips, "max_bytes": cfg.sampling.max_media_bytes,
                                                   "output": cfg.output.path, "fingerprint": fingerprint, "run_id": run_id,
                                                   "isolation": cfg.decode_isolation, "board": board, "tags": tags},
                            **cpu_stage)
        # Streamed, no barrier: a long video's clips leave in small blocks that spread over the decode tasks.
        ds = ds.repartition(target_num_rows_per_block=cfg.batching.rows_per_decode_batch)
    steps = [("decode", decode_row, {"cfg": cfg.sampling, "isolation": cfg.decode_isolation}),
             ("preprocess", preprocess_row, {"model_path": cfg.model.path, "gen": cfg.generation,
                                             "trust_remote_code": cfg.model.trust_remote_code,
                                             "task_prompt": cfg.task_prompt, "isolation": cfg.fault_tolerance})]
    ds = ds.map_batches(run_stages, fn_kwargs={"steps": steps, "board": board, "tags": tags}, **cpu_stage)
    ds = ds.map_batches(
        ModelStage,
        fn_constructor_kwargs={"cfg": cfg, "board": board, "ledger": ledger},
        batch_size=cfg.batching.rows_per_call,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_cpus=cfg.resources.cpus_per_model_actor,
        num_gpus=cfg.resources.gpus_per_actor,
    )
    return ds.map_batches(
        write_batch,
        fn_kwargs={"output": cfg.output.path, "run_id": run_id, "fingerprint": fingerprint, "partition": partition,
                   "board": board, "tags": tags},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0,  # I/O only; must never wait behind the model actor and decode tasks for a CPU
    )


def _execute(cfg: PipelineConfig, todo: pa.Table, run_id: str, fingerprint: str, partition: str,
             metrics_port: int | None, progress_stream, observer: RunObserver | None) -> dict[str, int]:
    """Stream `todo` through the stages; returns the rows each stage finished (the board's count)."""
    ensure_ray(metrics_port)
    preemption.install(cfg.grace_period_s)  # again: ray.init replaced our SIGTERM handler with its own
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours shows items, with the ETA
    ctx.raise_original_map_exception = True  # keeps e.g. OutputStorageError recognisable at the driver
    faults = cfg.fault_tolerance
    # On the driver's node: a worker node that dies must not take the run's bookkeeping with it (the
    # model actors' set-up waits on it); the driver's node dying ends the run anyway.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    board = ledger = ray.remote(num_cpus=0, max_restarts=-1)(RunBook).options(scheduling_strategy=here).remote(
        cfg.model.path, faults.model_attempts, faults.max_consecutive_model_crashes)
    if observer is not None:
        observer.started(board)
    display = ProgressDisplay(len(todo), stream=progress_stream, unit="clip" if cfg.clips.enabled else "item")
    batches = build_dataset(cfg, todo, run_id, fingerprint, partition, board, ledger).iter_batches(
        batch_size=None, batch_format="pyarrow")
    try:
        for batch in watched(batches, cfg.stall_timeout_s, lambda s: diagnose(board, display.total, s)):
            if cfg.clips.enabled:  # sources still to plan count one row until they are cut into clips
                display.set_total(rows_expected(board, len(todo)))
            display.update(len(batch))
            if observer is not None:
                observer.delivered(len(batch))
        return ray.get(board.snapshot.remote(), timeout=30)[0]
    except preemption.Preempted:
        # Stop in-flight tasks while the output lock is still held; the rerun redoes their items.
        ray.shutdown()
        raise
    finally:
        display.close()
        if ray.is_initialized():
            ray.kill(board)
            shutil.rmtree(crash_dir(ray.get_runtime_context().get_job_id()), ignore_errors=True)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, preemption.Preempted):
        return "preempted"
    return "stalled" if isinstance(exc, StallError) else "failed"


def _broken(output: str, items: int, exc: ModelBroken) -> ModelBroken:
    """The breaker's message with what the output holds, for the operator deciding what to do next."""
    held = summarise(reconcile(output, ("error_type",)))
    why = str(exc.args[0] if exc.args else exc).splitlines()[0]  # Ray Data appends its retry advice
    return ModelBroken(f"{why}; the output holds {held.total} of {items} ids ({held.ok} ok, {held.failed} failed), "
                       "every file whole: fix the model and rerun the same command to do the rest")


def _try_write_record(output: str, record: RunRecord) -> None:
    """Record how the run ended if the storage still allows it; never hide the run's own error."""
    try:
        write_record(output, record)
    except OutputStorageError as exc:
        logging.getLogger("iwp_annotate").warning("%s", exc)


def job_summary(cfg: PipelineConfig, run: pa.Table, seconds: float) -> JobSummary:
    ok = run.filter(pc.equal(run["status"], "ok"))
    fidelity = pc.mean(ok["weight_fidelity"]).as_py() if len(ok) else None
    return JobSummary(
        job=cfg.name,
        succeeded=True,
        items_ok=len(ok),
        items_failed=len(run) - len(ok),
        duration_s=seconds,
        visual_tokens_before=int(pc.sum(ok["num_visual_tokens"]).as_py() or 0),
        visual_tokens_after=int(pc.sum(ok["num_kept_tokens"]).as_py() or 0),
        weight_fidelity_mean=fidelity,
    )


def run_pipeline(cfg: PipelineConfig, *, retry_failed: bool = False, metrics_port: int | None = None,
                 progress_stream=None, console: Console = "inherit", observer: RunObserver | None = None) -> RunReport:
    """Validate, skip ids already done under the same fingerprint, stream the rest to Parquet.

    `console` "quiet" or "verbose" sends what Ray, the decoders and transformers print to the
    run's log file (see pipeline.console), "verbose" to the console as well.

    Pushes a summary to the Pushgateway at the end (success) or on any failure. SIGTERM
    raises `preemption.Preempted` (see there); a failed write to the output raises
    OutputStorageError naming the path, also when a Ray task hit it. `observer` (see RunObserver)
    sees the run's progress as it happens.
    """
    started = time.perf_counter()
    restore = preemption.install(cfg.grace_period_s)
    try:
        return _run(cfg, retry_failed, metrics_port, progress_stream, console, observer, started)
    except BaseException as exc:
        push_summary(cfg.metrics.pushgateway, JobSummary(job=cfg.name, succeeded=False, duration_s=time.perf_counter() - started))
        cause = storage_error(exc)
        if cause is not None and cause is not exc:
            raise OutputStorageError(str(cause)) from exc
        raise
    finally:
        restore()


def _run(cfg: PipelineConfig, retry_failed: bool, metrics_port: int | None, progress_stream, console: Console,
         observer: RunObserver | None, started: float) -> RunReport:
    if not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model directory {cfg.model.path!r} does not exist")
    probe(cfg.input, "manifest")
    probe(cfg.output.path, "output")
    manifest = read_manifest(cfg.input)
    if len(manifest) == 0:
        raise ManifestError(f"manifest {cfg.input!r} has no rows")
    if cfg.clips.enabled:
        check_clip_ids(manifest)
    fingerprint, run_id = run_fingerprint(cfg), new_run_id()
    partition = "date=" + time.strftime("%Y-%m-%d", time.gmtime())
    with output_lock(cfg.output.path, run_id):
        record = RunRecord(run_id=run_id, fingerprint=fingerprint, input=cfg.input, partition=partition,
                           settings=cfg.model_dump(mode="json"))
        try:
            sweep_temporary(cfg.output.path)
            expected = _expected(cfg, manifest, fingerprint)
            todo = plan_resume(cfg.output.path, expected, fingerprint, retry_failed)
            record.todo, record.skipped, record.sources = len(todo), len(expected) - len(todo), len(manifest)
            write_record(cfg.output.path, record)
            done: dict[str, int] = {}
            if len(todo):
                with captured(cfg.output.path, run_id, console) as terminal:
                    done = _execute(cfg, todo, run_id, fingerprint, partition, metrics_port, progress_stream or terminal,
                                    observer)
            expected = _expected(cfg, manifest, fingerprint)  # with the plans this run made
            fill_missing(cfg.output.path, expected, reconcile(cfg.output.path)["id"], run_id, fingerprint, partition)
            record.sources_planned = done.get("plan", 0)
            record.clips = len(expected) - expected["clip_index"].null_count if cfg.clips.enabled else 0
        except BaseException as exc:
            error = _broken(cfg.output.path, len(manifest), exc) if isinstance(exc, ModelBroken) else exc
            record.finish(_outcome(error), error=f"{type(error).__name__}: {error}"[:2000])
            _try_write_record(cfg.output.path, record)
            if error is not exc:
                raise error from None
            raise
        seconds = time.perf_counter() - started
        table = read_results(cfg.output.path)
        mine = table.filter(pc.equal(table["run_id"], run_id))
        summary = summarise(mine)
        record.finish("succeeded", ok=summary.ok, failed=summary.failed)
        write_record(cfg.output.path, record)
    push_summary(cfg.metrics.pushgateway, job_summary(cfg, mine, seconds))
    return RunReport(
        run_id=run_id,
        fingerprint=fingerprint,
        this_run=summary,
        output=summarise(table),
        skipped=record.skipped,
        seconds=seconds,
        results=subdir(cfg.output.path, RESULTS_DIR),
        sources=record.sources,
        sources_planned=record.sources_planned,
        clips=record.clips,
    )


def _expected(cfg: PipelineConfig, manifest: pa.Table, fingerprint: str) -> pa.Table:
    """The rows the output must hold, from the clip plans recorded so far (see pipeline.plans)."""
    return expected_rows(manifest, read_plans(cfg.output.path, fingerprint) if cfg.clips.enabled else None)
