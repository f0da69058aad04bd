"""Index bookkeeping shared by the methods: top-k under a mask, padding, ordering."""

from __future__ import annotations

import torch
from torch import Tensor

from .request import Request


def keep_top(score: Tensor, req: Request) -> Tensor:
    """Each item's ``budget`` highest-scoring candidates as ``[B, width]``, -1 padded."""
    masked = score.float().masked_fill(~req.mask, float("-inf"))
    top = masked.topk(req.width, dim=-1).indices
    rank = torch.arange(req.width, device=score.device)
    return top.masked_fill(rank >= req.budget[:, None], -1)


def from_mask(selected: Tensor, width: int) -> Tensor:
    """The True positions of a ``[B, N]`` bool mask as ascending ``[B, width]``, -1 padded."""
    n = selected.shape[-1]
    position = torch.arange(n, device=selected.device).expand_as(selected)
    ordered = position.masked_fill(~selected, n).sort(dim=-1).values[:, :width]
    return ordered.masked_fill(ordered == n, -1)


def to_mask(indices: Tensor, tokens: int) -> Tensor:
    """``[B, N]`` bool mask of the valid entries of ``indices`` (-1 padding ignored)."""
    slots = indices.masked_fill(indices < 0, tokens)
    out = torch.zeros(indices.shape[0], tokens + 1, dtype=torch.bool, device=indices.device)
    return out.scatter_(1, slots, True)[:, :tokens]


def ascending(indices: Tensor, width: int, tokens: int) -> Tensor:
    """Sort valid entries ascending, move -1 padding to the end, pad or cut to ``width``."""
    key = indices.masked_fill(indices < 0, tokens).sort(dim=-1).values
    key = key.masked_fill(key == tokens, -1)
    if key.shape[1] >= width:
        return key[:, :width]
    pad = key.new_full((key.shape[0], width - key.shape[1]), -1)
    return torch.cat([key, pad], dim=1)


def rank_among(flags: Tensor) -> Tensor:
    """0-based position of each True entry among the True entries of its row (ordered along dim -1)."""
    return flags.long().cumsum(-1) - 1
