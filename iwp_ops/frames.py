"""Per-frame budgets for video: frame ids, equal quotas, and quota bookkeeping."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import validate
from .indices import rank_among
from .request import Request


def resolve(frame_ids: Any, tokens_per_frame: Any, req: Request) -> Tensor | None:
    """Frame id ``[B, N]`` of every token, or ``None`` when no per-frame budget is asked.

    ``frame_ids`` gives ids directly (non-negative for candidates); ``tokens_per_frame``
    means each item's candidates are laid out frame after frame, that many per frame: frames
    are counted from the item's first candidate, so a text prefix or left padding before it
    (which differ from batch to batch) cannot shift them.
    """
    if frame_ids is not None and tokens_per_frame is not None:
        raise ValueError("pass either frame_ids or tokens_per_frame, not both")
    b, _, n, _ = req.shape
    device = req.keys.device
    if tokens_per_frame is not None:
        per = validate.positive_int("tokens_per_frame", tokens_per_frame)
        return (rank_among(req.mask) // per).clamp(min=0)
    if frame_ids is None:
        return None
    if not isinstance(frame_ids, Tensor) or frame_ids.dtype != torch.long or tuple(frame_ids.shape) != (b, n) \
            or frame_ids.device != device:
        raise ValueError(f"frame_ids must be a LongTensor of shape [{b}, {n}] on {device}")
    if bool((frame_ids[req.mask] < 0).any()):
        raise ValueError("frame_ids must be non-negative for candidate tokens")
    return frame_ids.clamp(min=0)


def quotas(frame_of: Tensor, mask: Tensor, budget: Tensor) -> Tensor:
    """Split each item's budget equally over its frames: ``LongTensor[B, F]``.

    Water-filling: every frame gets ``min(candidates, level)`` tokens for the largest
    level that fits; the remainder goes one each to the earliest frames that still
    have candidates, so the quotas sum exactly to the budget (budget <= candidates).
    """
    frames = int(frame_of.max()) + 1
    counts = torch.zeros(frame_of.shape[0], frames, dtype=torch.long, device=frame_of.device)
    counts.scatter_add_(1, frame_of, mask.long())
    top = int(counts.max()) + 1
    low = torch.zeros_like(budget)
    high = torch.full_like(budget, top)
    for _ in range(top.bit_length() + 1):
        mid = (low + high) // 2
        fits = counts.minimum(mid[:, None]).sum(-1) <= budget
        low = torch.where(fits, mid, low)
        high = torch.where(fits, high, mid)
    base = counts.minimum(low[:, None])
    spare = counts > low[:, None]
    extra = spare & (rank_among(spare) < (budget - base.sum(-1))[:, None])
    return base + extra.long()


class FrameQuota:
    """Running per-frame admission counts inside a greedy selection."""

    def __init__(self, frame_of: Tensor, mask: Tensor, budget: Tensor) -> None:
        self.frame_of = frame_of
        self.quota = quotas(frame_of, mask, budget)
        self.count = torch.zeros_like(self.quota)

    def open_tokens(self) -> Tensor:
        """``[B, N]``: True where the token's frame still has room."""
        return (self.count < self.quota).gather(1, self.frame_of)

    def admissible(self, ranked: Tensor, ok: Tensor) -> Tensor:
        """Restrict ranked admissible candidates ``[B, P]`` to what their frames' quotas allow."""
        frame = self.frame_of.gather(1, ranked)
        same = torch.nn.functional.one_hot(frame, self.quota.shape[1]).bool() & ok[..., None]
        before = (same.long().cumsum(1) * same).sum(-1) - 1
        room = (self.quota - self.count).gather(1, frame)
        return ok & (before < room)

    def admit(self, ranked: Tensor, admitted: Tensor) -> None:
        self.count.scatter_add_(1, self.frame_of.gather(1, ranked), admitted.long())
