"""Pack items into model batches by padded token count instead of a fixed row count.

Pure Python so it is tested without Ray or torch. Longest-first packing keeps padding low:
a batch's cost is its longest sequence times its size, which is what the model computes.
"""

from __future__ import annotations

from collections.abc import Hashable


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
