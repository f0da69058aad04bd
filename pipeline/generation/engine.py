"""Continuous batching on transformers' own model classes: prefill in micro-batches, decode together.

`GenerationEngine.generate` takes every row of a call at once. Rows are prefilled in
micro-batches that fit the memory budget (vision encoder, layers < K, pruning at K, layers >= K
on the kept tokens), through transformers' `generate` for one step, so prefill inputs and
positions are exactly those of `generate()`. Their caches then join one decode batch. Each step
feeds every decoding row's last token through the model's `forward` with its own position; a
row that emits end-of-sequence or reaches its `max_new_tokens` leaves at once (its cache rows
are dropped), and rows prefilled meanwhile join while the others decode. Short captions never
wait for long ones, and a pruned row's smaller cache leaves room for more rows.

Memory (see `memory`): a row is admitted only when its whole cache, at its longest answer, fits
beside the rows already decoding; a row that cannot fit even alone fails as its own row
(`OutOfMemory`). An out-of-memory error anyway (the estimate was low) sends the newest rows
back to the queue and lowers the estimate; any other error is raised for the caller to isolate.

Greedy tokens equal `generate(do_sample=False, min_new_tokens=1, suppress_tokens=...)` for each
row alone (see `sampling`); positions of decode steps are each row's own (its M-RoPE offset
`rope_deltas` for the Qwen families, its real-token count for 1-D positions), so they stay right
when rows leave and join.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.collate import collate, stack_key
from pipeline.generation.decode_batch import DecodeBatch
from pipeline.generation.memory import MemoryBudget
from pipeline.generation.requests import GenerationRequest, GenerationResult, OutOfMemory
from pipeline.generation.sampling import Chooser

# A prefill micro-batch stops growing when padding would exceed this share of its real tokens:
# the queue is sorted by length, so images and short prompts are not padded to a video's length.
PAD_SLACK = 1.3


@dataclass
class EngineStats:
    """What the last `generate` call did: for metrics and benchmarks."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0  # real prompt tokens prefilled
    padded_prefill_tokens: int = 0
    decode_tokens: int = 0  # tokens generated
    micro_batches: int = 0
    micro_batch_rows: int = 0  # largest micro-batch
    decode_steps: int = 0
    row_steps: int = 0  # sum over steps of the rows decoding
    max_decode_batch: int = 0
    oom_retries: int = 0
    peak_memory: int = 0  # CUDA only

    @property
    def mean_decode_batch(self) -> float:
        return self.row_steps / self.decode_steps if self.decode_steps else 0.0


class GenerationEngine:
    """One loaded model (with its pruning handle, if any) and the memory it may use.

    `max_batch_size` caps the rows of a forward pass (prefill micro-batch and decode batch),
    `max_batch_tokens` the padded tokens of a prefill micro-batch; both optional, the memory
    budget decides otherwise.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pruning: Any = None, *, memory_utilization: float = 0.9,
                 memory_limit_bytes: int | None = None, max_batch_size: int | None = None,
                 max_batch_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.pruning = pruning
        self.device = model.device
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.budget = MemoryBudget.for_model(model, memory_utilization, memory_limit_bytes)
        self.layers = model.config.get_text_config().num_hidden_layers
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        self.eos_ids = sorted(set(eos if isinstance(eos, list) else [eos]))
        # Placeholders and padding are never valid answer words; end-of-sequence must stay.
        self.suppress = sorted(set(tokenizer.all_special_ids) - set(self.eos_ids))
        self.chooser = Chooser(torch.tensor(self.suppress, dtype=torch.long, device=self.device),
                               torch.tensor(self.eos_ids, dtype=torch.long, device=self.device))
        self.visual_ids = [getattr(model.config, n) for n in ("image_token_id", "video_token_id")
                           if getattr(model.config, n, None) is not None]
        self.last_run = EngineStats()
        self._row_cap: int | None = None
        # Called with (request indices, their steps, their scores [B, V]) before every choice; for
        # tools that inspect the choices (`jobs.margins`), off otherwise.
        self.observer: Callable[[list[int], Tensor, Tensor], None] | None = None

    # --- the loop -----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = [GenerationResult() for _ in requests]
        self.last_run = stats = EngineStats()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        order = sorted(range(len(requests)), key=lambda i: (stack_key(requests[i].inputs), requests[i].prompt_tokens))
        pending: deque[int] = deque(order)
        running: DecodeBatch | None = None
        drain = False  # a row ran out of memory beside others: let them finish before prefilling it
        self._row_cap = None  # rows decoding together, at most, after an out-of-memory error in this call
        sampling = any(r.temperature > 0 for r in requests)
        while pending or running is not None:
            if pending and not (drain and running is not None):
                drain = False
                group = self._admit(pending, requests, running)
                if not group and running is None:
                    i = pending.popleft()
                    results[i].error = OutOfMemory(self._too_big(requests[i]))
                    continue
                if group:
                    try:
                        joined = self._prefill(group, requests, results, sampling)
                    except torch.OutOfMemoryError:
                        self._release()
                        stats.oom_retries += 1
                        if len(group) == 1 and running is None:
                            results[group[0]].error = OutOfMemory(self._too_big(requests[group[0]], measured=True))
                        else:
                            pending.extendleft(reversed(group))
                            self.budget.prefill_per_token *= 2
                            drain = len(group) == 1
                        continue
                    running = DecodeBatch.merge(running, joined) if joined is not None else running
            if running is not None:
                try:
                    running = self._step(running, requests, results, sampling)
                except torch.OutOfMemoryError:
                    running = self._preempt(running, pending, results, requests)
        if self.device.type == "cuda":
            stats.peak_memory = torch.cuda.max_memory_allocated(self.device)
        return results

    # --- admission ----------------------------------------------------------------------------

    def _split(self) -> int:
        return self.pruning.settings.layer if self._pruning_on() else self.layers

    def _pruning_on(self) -> bool:
        return self.pruning is not None and self.pruning.enabled

    def _kept_estimate(self, request: GenerationRequest) -> int:
        """Prompt tokens that layers >= K will cache: the fixed budget where pruning has one."""
        length = request.prompt_tokens
        if not self._pruning_on():
            return length
        visual = int(np.isin(request.inputs["input_ids"], self.visual_ids).sum())
        budgets = self.pruning.settings.fixed_budgets([visual]) if visual else None
        return length if budgets is None else length - visual + budgets[0]

    def _batch_bytes(self, rows: int, below: int, above: int, growth: int) -> int:
        """A padded decode batch's whole cache, each row at its longest answer."""
        return rows * self.budget.row_bytes((below, above), self._split(), growth)

    def _admit(self, pending: deque[int], requests: list[GenerationRequest], running: DecodeBatch | None) -> list[int]:
        """The next rows in queue order whose prefill and merged cache fit the budget and the caps."""
        base_rows = running.size if running is not None else 0
        cap = min(c for c in (self.max_batch_size, self._row_cap, len(pending) + base_rows) if c is not None)
        below = running.below.shape[1] if running is not None else 0
        above = running.above.shape[1] if running is not None else 0
        growth = running.growth if running is not None else 0
        group: list[int] = []
        key, width, kept, longest, real = None, 0, 0, 0, 0
        for i in pending:
            r = requests[i]
            if group and stack_key(r.inputs) != key:
                break
            rows = len(group) + 1
            if base_rows + rows > cap:
                break
            new_width, new_kept = max(width, r.prompt_tokens), max(kept, self._kept_estimate(r))
            new_longest = max(longest, r.max_new_tokens)
            if self.max_batch_tokens is not None and group and new_width * rows > self.max_batch_tokens:
                break
            if group and new_width * rows > PAD_SLACK * (real + r.prompt_tokens):
                break
            need = self._batch_bytes(base_rows + rows, max(below, new_width), max(above, new_kept),
                                     max(growth, new_longest)) + self.budget.prefill_bytes(new_width * rows)
            if need > self.budget.limit:
                break
            group.append(i)
            key, width, kept, longest, real = stack_key(r.inputs), new_width, new_kept, new_longest, real + r.prompt_tokens
        for _ in group:
            pending.popleft()
        return group

    def need_alone(self, request: GenerationRequest) -> int:
        """Bytes this request needs decoding alone: its prefill and its cache at its longest answer."""
        return self._batch_bytes(1, request.prompt_tokens, self._kept_estimate(request), request.max_new_tokens) \
            + self.budget.prefill_bytes(request.prompt_tokens)

    def _too_big(self, request: GenerationRequest, measured: bool = False) -> str:
        need = self.need_alone(request)
        how = "ran out of device memory with this item alone" if measured else \
            f"this item needs about {need / 2**20:.1f} MiB for its prefill and cache"
        return (f"{how} ({request.prompt_tokens} prompt tokens, {request.max_new_tokens} new), more than the "
                f"engine's memory budget of {self.budget.limit / 2**20:.1f} MiB beyond the model's weights; raise "
                "batching.memory_utilization / memory_limit_mb, or lower sampling.max_pixels or max_new_tokens")

    # --- prefill ------------------------------------------------------------------------------

    def _prefill(self, group: list[int], requests: list[GenerationRequest], results: list[GenerationResult],
                 sampling: bool) -> DecodeBatch | None:
        """Prefill `group` through `generate` for one step; its first tokens; the rows still decoding."""
        stats = self.last_run
        batch = collate([requests[i].inputs for i in group], self.pad_id, self.device, self.model.dtype)
        cuda = self.device.type == "cuda"
        if cuda:
            held = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        out = self.model.generate(**batch, max_new_tokens=1, do_sample=False, return_dict_in_generate=True,
                                  output_logits=True, pad_token_id=self.pad_id)
        attention = batch["attention_mask"]
        real = attention.sum(-1)
        pruned = self.pruning.pruned_mask if self._pruning_on() else None
        deltas = getattr(getattr(self.model, "model", None), "rope_deltas", None)
        positions = real + (deltas.view(-1).to(real) if deltas is not None else 0)
        row = self._settings([requests[i] for i in group])
        steps = torch.zeros(len(group), dtype=torch.long, device=self.device)
        first = self._choose(list(group), out.logits[0], steps, row["temperature"], row["top_p"], row["seeds"],
                             row["eos_at"], sampling)
        decoding = DecodeBatch(cache=out.cache, split=self._split(), below=attention,
                               above=pruned if pruned is not None else attention.bool(), positions=positions,
                               last=first, steps=steps, tokens=steps.new_full((len(group), 0), self.pad_id),
                               rows=list(group), started=[0.0] * len(group),
                               host_steps=np.zeros(len(group), dtype=np.int64),
                               host_limits=np.array([requests[i].max_new_tokens for i in group]), **row)
        decoding.advance(first)
        if self._pruning_on():
            for i, item in zip(group, self.pruning.last_stats):
                results[i].stats = item
        elapsed = time.perf_counter() - started
        now = time.perf_counter()
        decoding.started = [now] * len(group)
        for i in group:
            results[i].prefill_s = elapsed / len(group)
        stats.prefill_s += elapsed
        stats.prefill_tokens += int(real.sum())
        stats.padded_prefill_tokens += attention.numel()
        stats.micro_batches += 1
        stats.micro_batch_rows = max(stats.micro_batch_rows, len(group))
        if cuda:
            self.budget.observe_prefill(attention.numel(), torch.cuda.max_memory_allocated(self.device) - held)
        self._observe_cache(decoding)
        return self._retire(decoding, results)

    def _settings(self, requests: list[GenerationRequest]) -> dict[str, Tensor]:
        def column(values: list, dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=self.device)

        return {"limits": column([r.max_new_tokens for r in requests], torch.long),
                "temperature": column([r.temperature for r in requests], torch.float32),
                "top_p": column([r.top_p for r in requests], torch.float32),
                "seeds": column([r.seed for r in requests], torch.long),
                "eos_at": column([-1 if r.eos_at is None else r.eos_at for r in requests], torch.long)}

    def _observe_cache(self, batch: DecodeBatch) -> None:
        if self.budget.kv_checked:
            return
        layers = batch.cache.layers
        sizes = [layer.keys.numel() * layer.keys.element_size() * 2 for layer in layers]
        tokens = [layer.keys.shape[0] * layer.keys.shape[2] for layer in layers]
        self.budget.observe_cache(sizes, tokens)

    # --- decode -------------------------------------------------------------------------------

    def _step(self, batch: DecodeBatch, requests: list[GenerationRequest], results: list[GenerationResult],
              sampling: bool) -> DecodeBatch | None:
        """One token for every decoding row; finished rows leave."""
        stats = self.last_run
        started = time.perf_counter()
        if self._pruning_on():
            self.pruning.continue_decoding(batch.above)
        mask = batch.below if batch.split > 0 else batch.above.long()
        attention = torch.cat([mask, mask.new_ones(batch.size, 1)], 1)
        out = self.model(input_ids=batch.last[:, None], attention_mask=attention, position_ids=batch.positions[:, None],
                         cache=batch.cache, use_cache=True, logits_to_keep=1)
        batch.cache = out.cache
        batch.fed()
        tokens = self._choose(batch.rows, out.logits[:, -1], batch.steps, batch.temperature, batch.top_p, batch.seeds,
                              batch.eos_at, sampling)
        batch.advance(tokens)
        stats.decode_steps += 1
        stats.row_steps += batch.size
        stats.max_decode_batch = max(stats.max_decode_batch, batch.size)
        remaining = self._retire(batch, results)
        stats.decode_s += time.perf_counter() - started
        return remaining

    def _choose(self, rows: list[int], logits: Tensor, steps: Tensor, temperature: Tensor, top_p: Tensor,
                seeds: Tensor, eos_at: Tensor, sampling: bool) -> Tensor:
        scores = self.chooser.scores(logits, steps, eos_at)
        if self.observer is not None:
            self.observer(rows, steps, scores)
        return self.chooser.pick(scores, steps, temperature, top_p, seeds, sampling)

    def _retire(self, batch: DecodeBatch, results: list[GenerationResult]) -> DecodeBatch | None:
        """Hand finished rows their answers; the batch of the others (None when none is left)."""
        done = torch.isin(batch.last, self.chooser.eos) | (batch.steps >= batch.limits)
        if not bool(done.any()):
            return batch
        flags = done.tolist()
        finished = [j for j, d in enumerate(flags) if d]
        rows = batch.tokens[finished].tolist()
        lengths = batch.steps[finished].tolist()
        now = time.perf_counter()
        answers = []
        for j, tokens, n in zip(finished, rows, lengths):
            tokens = tokens[:n]
            if tokens and tokens[-1] in self.eos_ids:
                tokens = tokens[:-1]
            result = results[batch.rows[j]]
            result.tokens = tokens
            result.decode_s = now - batch.started[j]
            answers.append(tokens)
            self.last_run.decode_tokens += n
        for j, text in zip(finished, self.tokenizer.batch_decode(answers, skip_special_tokens=True)):
            results[batch.rows[j]].text = text.strip()
        kept = [j for j, d in enumerate(flags) if not d]
        return batch.select(kept) if kept else None

    def _preempt(self, batch: DecodeBatch, pending: deque[int], results: list[GenerationResult],
                 requests: list[GenerationRequest]) -> DecodeBatch | None:
        """Out of memory while decoding: the newest half of the rows go back to the queue (they
        restart from their prompt; their tokens are the same, greedy or seeded), and for the rest
        of this call no more rows than the remaining half decode together."""
        self._release()
        self.last_run.oom_retries += 1
        if batch.size == 1:
            i = batch.rows[0]
            results[i].error = OutOfMemory(self._too_big(requests[i], measured=True))
            return None
        batch.restore()
        half = batch.size // 2
        for i in batch.rows[half:]:
            results[i] = GenerationResult()
        pending.extendleft(reversed(batch.rows[half:]))
        self._row_cap = half
        return batch.select(list(range(half)))

    def _release(self) -> None:
        """Free what a failed forward held before the next one runs."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
