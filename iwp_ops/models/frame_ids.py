"""Each visual token's frame within its own batch item, from the Qwen families' grids.

Per-frame budgets must count an item's own frames: the frame of a token is fixed by the media
it belongs to, never by its position in a padded batch. The model scatters its visual features
into the placeholder tokens in batch order (row after row, left to right), one grid row per
image or video, so the k-th placeholder of a kind belongs to the grid row that covers k.
"""

from __future__ import annotations

import torch
from torch import Tensor


def frame_ids(input_ids: Tensor, visual: Tensor, grids: list[tuple[int, Tensor | None]], merge: int) -> Tensor:
    """``[B, L]``: images one frame each, videos one per temporal patch, numbered from 0 at each
    item's first visual token (images before videos where an item has both); 0 off the visual tokens.

    ``grids``: (placeholder token id, its ``*_grid_thw`` ``[M, 3]`` or None) per kind; ``merge``:
    the vision config's ``spatial_merge_size`` (tokens per temporal patch = h·w / merge²).
    """
    out = torch.zeros_like(input_ids)
    offset = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    for token_id, grid in grids:
        where = visual & (input_ids == token_id)
        if grid is None or not bool(where.any()):
            continue
        grid = grid.to(input_ids.device).long()
        per = grid[:, 1] * grid[:, 2] // merge ** 2
        sizes = grid[:, 0] * per
        first_token = torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
        first_frame = torch.repeat_interleave(grid[:, 0].cumsum(0) - grid[:, 0], sizes)
        within = torch.arange(int(sizes.sum()), device=input_ids.device) - first_token
        ids = torch.zeros_like(input_ids)
        ids[where] = first_frame + within // torch.repeat_interleave(per, sizes)
        start = ids.masked_fill(~where, int(ids.max()) + 1).amin(-1, keepdim=True)
        local = torch.where(where, ids - start + offset[:, None], 0)
        out = torch.where(where, local, out)
        offset = torch.where(where.any(-1), local.amax(-1) + 1, offset)
    return out
