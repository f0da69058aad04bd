"""The model stage: a Ray actor that holds one VLM and annotates batches of ready inputs.

Follows the stage contract (resources at construction, setup once, process a batch): the
actor loads the model once and hands each call's rows to the generation engine
(`pipeline.generation`), which prefills them in micro-batches that fit its memory budget and
decodes them with continuous batching. A row that cannot fit in memory fails alone; any
other model error splits the rows until the single culprit is marked failed.
An item that kills or hangs the actor itself is found the same way across actor restarts,
with the driver's `pipeline.quarantine.CrashLedger`.
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from pipeline import failpoints
from pipeline.config import MAX_NEW_TOKENS, BatchingConfig, PipelineConfig
from pipeline.generation import (EngineStats, GenerationEngine, GenerationRequest, GenerationResult, enable_job_pruning,
                                 load_model)
from pipeline.metrics import labels, stage_metrics
from pipeline.preprocess import load_processor
from pipeline.progress import report
from pipeline.quarantine import CrashLog, Deadline, ModelBroken
from pipeline.schema import OK, is_present, mark_failed, to_result_table
from pipeline.tags import parse_tags
from pipeline.tensors import unpack
from pipeline.token_grid import grid_of, kept_tokens_value


class ModelEngine:
    """Callable class for `map_batches`: one loaded model per actor, reused for every batch."""

    def __init__(self, cfg: PipelineConfig, board: Any = None, ledger: Any = None):
        self.cfg = cfg
        self.board = board
        self.ledger = ledger
        if ledger is not None:  # first, so a death during loading is not blamed on a batch
            context = ray.get_runtime_context()
            self.actor = context.get_actor_id()
            crash_log = CrashLog(self.actor, context.get_job_id())
            ray.get(ledger.restarted.remote(self.actor, crash_log.previous()))
            crash_log.arm()
            self.deadline = Deadline(cfg.fault_tolerance.model_batch_timeout_s, self._expire)
        self.tags = labels(cfg.name, cfg.task.kind, cfg.pruning.method)
        self.metrics = stage_metrics()
        self.processor = load_processor(cfg.model.path, cfg.model.trust_remote_code)
        self.model = load_model(cfg.model)
        self.device = self.model.device
        self.pruning = enable_job_pruning(self.model, cfg.pruning)
        if self.pruning is not None:
            self.pruning.record_kept_tokens = cfg.output.record_kept_tokens
        self.engine = job_engine(self.model, self.processor.tokenizer, self.pruning, cfg.batching)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = _rows(batch)
        key = uuid.uuid4().hex
        if self.board is not None:
            self.board.started.remote(key, "model")
        for r in rows:
            problem = limit_problem(r.get("max_new_tokens")) if r["status"] == OK else None
            if problem:
                mark_failed(r, "model", ValueError(problem))
        ready = [r for r in rows if r["status"] == OK]
        inputs = [unpack(r["inputs"]) for r in ready]
        now = time.time()
        for r in ready:
            if r.get("ready_at"):
                self.metrics.queue_wait.observe(max(0.0, now - r["ready_at"]), tags=self.tags)
        packs = [list(range(len(ready)))] if ready else []
        if self.ledger is not None:
            packs = self._planned(ready, packs)
        for group in packs:
            self._run([ready[i] for i in group], [inputs[i] for i in group])
        for r in rows:
            r.update(model=self.cfg.model.path, task=self.cfg.task.kind)
        report(self.board, "model", len(rows), key)
        return to_result_table(rows)

    def _planned(self, ready: list[dict], packs: list[list[int]]) -> list[list[int]]:
        """The ledger's split of these model batches after crashes; marks the items it quarantines."""
        at = {r["id"]: i for i, r in enumerate(ready)}
        batches, failed, broken = ray.get(self.ledger.plan.remote([[ready[i]["id"] for i in g] for g in packs]))
        if broken is not None:
            raise ModelBroken(broken)
        for item, exc in failed.items():
            mark_failed(ready[at[item]], "model", exc)
        return [[at[i] for i in batch] for batch in batches]

    def _expire(self) -> None:
        """The batch deadline passed: record it, then end this process so Ray restarts the actor."""
        ray.get(self.ledger.timed_out.remote(self.actor, self.cfg.fault_tolerance.model_batch_timeout_s))
        os.kill(os.getpid(), signal.SIGKILL)

    def _requests(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> list[GenerationRequest]:
        gen = self.cfg.generation
        return [GenerationRequest(x, max_new_tokens=row_limit(r, gen.max_new_tokens), temperature=gen.temperature,
                                  top_p=gen.top_p, seed=row_seed(gen.seed, r["id"])) for r, x in zip(rows, inputs)]

    def _guarded(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> list[GenerationResult]:
        """The engine on these rows, announced to the ledger and under the batch deadline when there is one."""
        requests = self._requests(rows, inputs)
        if self.ledger is None:
            return self.engine.generate(requests)
        ray.get(self.ledger.begin.remote(self.actor, [r["id"] for r in rows]))
        self.deadline.start()
        try:
            uris = [r["uri"] for r in rows]
            failpoints.crash_if_named("model", uris)
            failpoints.hang_if_named(uris)
            return self.engine.generate(requests)
        finally:  # an exception is this batch's own failure row; the actor lived
            self.deadline.stop()
            ray.get(self.ledger.end.remote(self.actor))

    def _release(self) -> None:
        """Free what a failed batch held before its halves run: otherwise they inherit its memory."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> None:
        """Generate for these rows; on an error the engine could not pin on one row, split them so
        only the culprit fails (the engine itself fails a row that cannot fit in memory, and retries
        out-of-memory errors with fewer rows)."""
        failure: Exception | None = None
        try:
            results = self._guarded(rows, inputs)
        except Exception as exc:  # a model error: isolate the item that causes it
            failure = exc
            # The traceback holds the failed batch's frames, and through them its tensors.
            failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        if failure is not None:
            self._release()
            if len(rows) == 1:
                mark_failed(rows[0], "model", failure)
                return
            half = len(rows) // 2
            self._run(rows[:half], inputs[:half])
            self._run(rows[half:], inputs[half:])
            return
        self._record(self.engine.last_run)
        for row, x, result in zip(rows, inputs, results):
            self._finish(row, x, result)

    def _finish(self, row: dict, inputs: dict[str, np.ndarray], result: GenerationResult) -> None:
        if result.error is not None:
            mark_failed(row, "model", result.error)
            return
        stats = result.stats
        row["latency_s"] += result.prefill_s + result.decode_s
        row["num_kept_tokens"] = stats.visual_after if stats else row["num_visual_tokens"]
        row["weight_fidelity"] = stats.fidelity if stats else None
        if self.cfg.output.record_kept_tokens:
            row["kept_token_indices"] = kept_tokens_value(grid_of(inputs, self.model.config, self.processor),
                                                          stats.kept if stats else None, row["num_visual_tokens"])
        self.metrics.visual_tokens.inc(row["num_visual_tokens"], tags={**self.tags, "phase": "before"})
        self.metrics.visual_tokens.inc(row["num_kept_tokens"], tags={**self.tags, "phase": "after"})
        text = result.text
        if not text:
            mark_failed(row, "model", ValueError("model produced an empty answer"))
        elif self.cfg.task.kind == "tag":
            row["tags"], row["tags_unknown"] = parse_tags(text, self.cfg.tag_vocabulary)
            row["answer"] = text
        else:
            row["caption"] = text

    def _record(self, run: EngineStats) -> None:
        m, tags = self.metrics, self.tags
        m.stage_latency.observe(run.prefill_s + run.decode_s, tags={**tags, "stage": "model"})
        if run.decode_steps:
            m.batch_size.observe(run.mean_decode_batch, tags=tags)
        if run.micro_batches:
            m.batch_tokens.observe(run.padded_prefill_tokens / run.micro_batches, tags=tags)
        if run.prefill_tokens:
            m.prefill_tokens.inc(run.prefill_tokens, tags=tags)
        if run.decode_tokens:
            m.decode_tokens.inc(run.decode_tokens, tags=tags)
        if run.prefill_s > 0:
            m.prefill_tps.set(run.prefill_tokens / run.prefill_s, tags=tags)
        if run.decode_s > 0:
            m.decode_tps.set(run.decode_tokens / run.decode_s, tags=tags)
        if run.peak_memory:
            m.gpu_memory.set(run.peak_memory, tags=tags)


def job_engine(model, tokenizer, pruning, batching: BatchingConfig) -> GenerationEngine:
    """The engine with the job's memory budget and caps."""
    limit = None if batching.memory_limit_mb is None else int(batching.memory_limit_mb * 2**20)
    return GenerationEngine(model, tokenizer, pruning, memory_utilization=batching.memory_utilization,
                            memory_limit_bytes=limit, max_batch_size=batching.max_batch_size,
                            max_batch_tokens=batching.max_batch_tokens)


def row_limit(row: dict, default: int) -> int:
    """The row's own `max_new_tokens` (an optional manifest column), else the job's."""
    value = row.get("max_new_tokens")
    return int(value) if is_present(value) else default


def limit_problem(value: Any) -> str | None:
    """Why a manifest row's `max_new_tokens` cannot be used, or None (absent or fine)."""
    if not is_present(value):
        return None
    if not float(value).is_integer() or not 1 <= int(value) <= MAX_NEW_TOKENS:
        return f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, got {value!r}"
    return None


def row_seed(seed: int, item_id: str) -> int:
    """A row's sampling seed: the job's seed and the row's id, so a row draws the same tokens in any
    batch, on any actor, in any rerun."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _scalar(batch[k][i]) for k in keys} for i in range(n)]


def _scalar(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
