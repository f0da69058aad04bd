"""The model stage: a Ray actor that holds one VLM and annotates batches of ready inputs.

Follows the stage contract (resources at construction, setup once, process a batch): the
actor loads the model once, packs its rows into token-budgeted model batches, and splits a
batch that fails (out of memory or otherwise) until the single culprit is marked failed.
An item that kills or hangs the actor itself is found the same way across actor restarts,
with the driver's `pipeline.quarantine.CrashLedger`.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pipeline import failpoints
from pipeline.batching import pack_by_tokens
from pipeline.collate import collate, stack_key
from pipeline.config import PipelineConfig, PruningConfig
from pipeline.metrics import labels, stage_metrics
from pipeline.preprocess import load_processor
from pipeline.progress import report
from pipeline.quarantine import CrashLog, Deadline, ModelBroken
from pipeline.schema import OK, mark_failed, to_result_table
from pipeline.tags import parse_tags
from pipeline.tensors import unpack
from pipeline.token_grid import grid_of, kept_tokens_value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def enable(model, cfg: PruningConfig):
    """Turn on visual-token pruning in the loaded model, unless the job asks for none."""
    if cfg.method == "none":
        return None
    from iwp_ops import enable_pruning

    return enable_pruning(
        model, method=cfg.method, keep_ratio=cfg.keep_ratio, layer=cfg.layer,
        fidelity_target=cfg.fidelity_target, **cfg.options,
    )


def load_model(cfg: PipelineConfig):
    """`from_pretrained` on a local directory: no network, remote code only if asked."""
    from transformers import AutoModelForImageTextToText

    from iwp_ops import compile_vision_blocks, flatten_patch_embedding, pack_vision_attention
    from iwp_ops.models.vision_compile import compile_wanted

    device = resolve_device(cfg.model.device)
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.model.path,
        dtype=resolve_dtype(cfg.model.dtype, device),
        local_files_only=True,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    pack_vision_attention(model)
    flatten_patch_embedding(model)
    if compile_wanted(cfg.model.compile_vision, device):
        compile_vision_blocks(model)
    return model.to(device).eval()


class OutOfMemory(RuntimeError):
    """The model ran out of device memory on this item alone."""


class _FirstStepClock(LogitsProcessor):
    """Notes when generation's first step runs, which splits prefill time from decode time."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.at is None:
            self.at = time.perf_counter()
        return scores


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
        self.model = load_model(cfg)
        self.device = self.model.device
        self.pruning = enable(self.model, cfg.pruning)
        if self.pruning is not None:
            self.pruning.record_kept_tokens = cfg.output.record_kept_tokens
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        # Placeholders and padding are never valid caption words; end-of-sequence must stay.
        self.suppress = sorted(set(tok.all_special_ids) - eos_ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = _rows(batch)
        key = uuid.uuid4().hex
        if self.board is not None:
            self.board.started.remote(key, "model")
        ready = [r for r in rows if r["status"] == OK]
        inputs = [unpack(r["inputs"]) for r in ready]
        now = time.time()
        for r in ready:
            if r.get("ready_at"):
                self.metrics.queue_wait.observe(max(0.0, now - r["ready_at"]), tags=self.tags)
        packs = pack_by_tokens(
            [len(x["input_ids"]) for x in inputs],
            self.cfg.batching.max_batch_size,
            self.cfg.batching.max_batch_tokens,
            groups=[stack_key(x) for x in inputs],
        )
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

    def _guarded(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> list[str]:
        """`_generate`, announced to the ledger and under the batch deadline when there is one."""
        if self.ledger is None:
            return self._generate(inputs)
        ray.get(self.ledger.begin.remote(self.actor, [r["id"] for r in rows]))
        self.deadline.start()
        try:
            uris = [r["uri"] for r in rows]
            failpoints.crash_if_named("model", uris)
            failpoints.hang_if_named(uris)
            return self._generate(inputs)
        finally:  # an exception is this batch's own failure row; the actor lived
            self.deadline.stop()
            ray.get(self.ledger.end.remote(self.actor))

    def _release(self) -> None:
        """Free what a failed batch held before its halves run: otherwise they inherit its memory."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> None:
        """Generate for one model batch; on failure split it so only the culprit fails."""
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            texts = self._guarded(rows, inputs)
        except Exception as exc:  # OOM or a model error: isolate the item that causes it
            failure = exc
            # The traceback holds the failed batch's frames, and through them its tensors.
            failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        if failure is not None:
            self._release()
            if len(rows) == 1:
                if isinstance(failure, torch.OutOfMemoryError):
                    failure = OutOfMemory(f"out of device memory with this item alone: {len(inputs[0]['input_ids'])} "
                                          f"tokens ({rows[0]['num_visual_tokens']} visual); {str(failure)[:300]}")
                mark_failed(rows[0], "model", failure)
                return
            half = len(rows) // 2
            self._run(rows[:half], inputs[:half])
            self._run(rows[half:], inputs[half:])
            return
        elapsed = time.perf_counter() - started
        self.metrics.stage_latency.observe(elapsed, tags={**self.tags, "stage": "model"})
        stats = self.pruning.last_stats if self.pruning is not None else []
        for i, (row, text) in enumerate(zip(rows, texts)):
            row["latency_s"] += elapsed
            row["num_kept_tokens"] = stats[i].visual_after if stats else row["num_visual_tokens"]
            row["weight_fidelity"] = stats[i].fidelity if stats else None
            if self.cfg.output.record_kept_tokens:
                row["kept_token_indices"] = kept_tokens_value(grid_of(inputs[i], self.model.config, self.processor),
                                                              stats[i].kept if stats else None, row["num_visual_tokens"])
            self.metrics.visual_tokens.inc(row["num_visual_tokens"], tags={**self.tags, "phase": "before"})
            self.metrics.visual_tokens.inc(row["num_kept_tokens"], tags={**self.tags, "phase": "after"})
            if not text:
                mark_failed(row, "model", ValueError("model produced an empty answer"))
            elif self.cfg.task.kind == "tag":
                row["tags"], row["tags_unknown"] = parse_tags(text, self.cfg.tag_vocabulary)
                row["answer"] = text
            else:
                row["caption"] = text

    @torch.inference_mode()
    def _generate(self, inputs: list[dict[str, np.ndarray]]) -> list[str]:
        batch = collate(inputs, self.pad_id, self.device, self.model.dtype)
        clock = _FirstStepClock()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        out = self.model.generate(
            **batch,
            max_new_tokens=self.cfg.generation.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            suppress_tokens=self.suppress,
            pad_token_id=self.pad_id,
            logits_processor=LogitsProcessorList([clock]),
        )
        finished = time.perf_counter()
        new = out[:, batch["input_ids"].shape[1]:]
        self._record(batch, new, started, clock.at or finished, finished)
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def _record(self, batch: dict[str, torch.Tensor], new: torch.Tensor, started: float, first: float, finished: float) -> None:
        size, width = batch["input_ids"].shape
        prefill_tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else size * width
        decode_tokens = int((new != self.pad_id).sum())
        m, tags = self.metrics, self.tags
        m.batch_size.observe(size, tags=tags)
        m.batch_tokens.observe(size * width, tags=tags)
        m.prefill_tokens.inc(prefill_tokens, tags=tags)
        m.decode_tokens.inc(decode_tokens, tags=tags)
        m.prefill_tps.set(prefill_tokens / max(first - started, 1e-9), tags=tags)
        m.decode_tps.set(decode_tokens / max(finished - first, 1e-9), tags=tags)
        if self.device.type == "cuda":
            m.gpu_memory.set(torch.cuda.max_memory_allocated(self.device), tags=tags)


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
