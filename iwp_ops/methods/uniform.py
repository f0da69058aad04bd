"""Uniform stride: evenly spaced candidates in token order (spatial, or temporal per frame).

Token order is raster order within a frame and frame after frame, so an even stride
over it is a regular spatial grid, and with ``frame_ids``/``tokens_per_frame`` the
budget is first split equally over frames and strided within each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import frames
from ..request import Request


def select(req: Request, *, frame_ids: Tensor | None = None, tokens_per_frame: int | None = None) -> Tensor:
    """In each frame with n candidates and quota q, keep candidate ranks ``⌊(2j+1)·n/(2q)⌋``, j < q."""
    b, _, n, _ = req.shape
    device = req.keys.device
    frame_of = frames.resolve(frame_ids, tokens_per_frame, req)
    if frame_of is None:
        frame_of = torch.zeros(b, n, dtype=torch.long, device=device)
    quota = frames.quotas(frame_of, req.mask, req.budget)
    count = torch.zeros_like(quota).scatter_add_(1, frame_of, req.mask.long())
    # Candidates sorted by (frame, position): frame f occupies [start_f, start_f + count_f).
    position = torch.arange(n, device=device)
    key = torch.where(req.mask, frame_of * n + position, quota.shape[1] * n + position)
    by_frame = key.argsort(dim=-1)
    start = count.cumsum(-1) - count
    slot = torch.arange(int(quota.max()), device=device)
    pick = start[..., None] + (2 * slot + 1) * count[..., None] // (2 * quota[..., None]).clamp(min=1)
    chosen = slot < quota[..., None]
    picked = by_frame.gather(1, pick.masked_fill(~chosen, 0).flatten(1))
    picked = picked.masked_fill(~chosen.flatten(1), -1)
    compact = (picked >= 0).to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :req.width]
    return picked.gather(1, compact)
