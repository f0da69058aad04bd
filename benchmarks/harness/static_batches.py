"""The static-batch path the generation engine replaced, kept as the throughput benchmark's baseline.

Items are packed into model batches by padded token count (longest first keeps padding low: a
batch's cost is its longest sequence times its size), and each batch is one `generate()` call
that does the prefill and every decode step, so every row waits for the batch's longest answer.
`pack_by_tokens` is pure Python, tested without torch.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


def pack_by_tokens(lengths: list[int], max_batch_size: int, max_batch_tokens: int,
                   groups: list[Hashable] | None = None) -> list[list[int]]:
    """Group item indices so each group's `max(length) * len(group)` fits the token budget.

    With `groups`, only items of equal group share a batch (inputs that cannot be stacked
    together, e.g. LLaVA-OneVision videos of different frame counts). An item longer than the
    budget on its own still gets a batch of one, since it has to run somewhere; the caller's
    out-of-memory handling is the last line of defence.
    """
    if max_batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("max_batch_size and max_batch_tokens must be positive")
    if groups is not None:
        members: dict[Hashable, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        return [[idx[j] for j in batch] for idx in members.values()
                for batch in pack_by_tokens([lengths[i] for i in idx], max_batch_size, max_batch_tokens)]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1 > max_batch_size or longest * (len(current) + 1) > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class ForcedLengths:
    """A logits processor for `generate()`: row i ends after exactly `lengths[i]` tokens (EOS banned
    before, forced then), as `GenerationRequest.eos_at` does in the engine."""

    def __init__(self, lengths: list[int], prompt_width: int, eos: int):
        import torch

        self.lengths = torch.tensor(lengths)
        self.width, self.eos = prompt_width, eos

    def __call__(self, input_ids, scores):
        import torch

        step = input_ids.shape[1] - self.width
        lengths = self.lengths.to(scores.device)
        scores[:, self.eos] = torch.where(step < lengths, -torch.inf, scores[:, self.eos])
        forced = step >= lengths
        scores[forced] = torch.where(torch.arange(scores.shape[1], device=scores.device) == self.eos, 0.0, -torch.inf)
        return scores


def static_generate(model: Any, tokenizer: Any, requests: list[Any], max_batch_size: int, max_batch_tokens: int) -> int:
    """Greedy answers for `requests` (`GenerationRequest`s) in static `generate()` batches; returns the
    tokens generated, end-of-sequence included as the engine counts it."""
    import torch
    from transformers import LogitsProcessorList

    from pipeline.collate import collate, stack_key

    eos = model.generation_config.eos_token_id
    suppress = sorted(set(tokenizer.all_special_ids) - {eos})
    packs = pack_by_tokens([r.prompt_tokens for r in requests], max_batch_size, max_batch_tokens,
                           groups=[stack_key(r.inputs) for r in requests])
    generated = 0
    with torch.inference_mode():
        for pack in packs:
            batch = collate([requests[i].inputs for i in pack], tokenizer.pad_token_id, model.device, model.dtype)
            width = batch["input_ids"].shape[1]
            lengths = [requests[i].eos_at if requests[i].eos_at is not None else requests[i].max_new_tokens for i in pack]
            out = model.generate(**batch, max_new_tokens=max(requests[i].max_new_tokens for i in pack), min_new_tokens=1,
                                 do_sample=False, suppress_tokens=suppress, pad_token_id=tokenizer.pad_token_id,
                                 logits_processor=LogitsProcessorList([ForcedLengths(lengths, width, eos)]))
            ends = out[:, width:] == eos
            generated += int((ends.int().cumsum(1) - ends.int() == 0).sum())  # up to each row's first EOS
    return generated
