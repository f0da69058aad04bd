"""DivPrune (arXiv 2503.02175): greedy max–min diversity on visual embeddings.

Official algorithm (vbdi/divprune ``DivPrune``): distance ``1 − cos`` between the
post-projector visual embeddings; the first token is the one whose nearest
neighbour is farthest; each next token maximises its minimal distance to the
tokens already kept; the kept set is restored to token order.

Adapted for memory: instead of materialising the N×N distance matrix, the
nearest-neighbour distances are computed in row blocks and a running minimum
distance to the kept set is updated against each newly kept token. Kept tokens
are excluded explicitly (the official code can re-pick one when all remaining
distances are 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..request import Request

_BLOCK_ELEMENTS = 1 << 23


def _unit(x: Tensor) -> Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)


def nearest_neighbour_distance(units: Tensor, mask: Tensor) -> Tensor:
    """``1 − max_{j≠i, j candidate} cos(xᵢ, xⱼ)`` for every token, in row blocks."""
    b, n, _ = units.shape
    block = max(1, _BLOCK_ELEMENTS // (b * n))
    out = units.new_empty(b, n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        cos = units[:, start:stop] @ units.transpose(1, 2)
        cos.masked_fill_(~mask[:, None, :], float("-inf"))
        rows = torch.arange(start, stop, device=units.device)
        cos[:, rows - start, rows] = float("-inf")
        out[:, start:stop] = 1 - cos.amax(-1)
    return out


def select(req: Request, *, embeddings: Tensor) -> Tensor:
    """``budget`` tokens by greedy max–min cosine distance; ``embeddings`` is ``[B, N, E]``."""
    units = _unit(validate.token_features("embeddings", embeddings, req.keys))
    b, n, _ = units.shape
    available = req.mask.clone()
    score = nearest_neighbour_distance(units, req.mask)
    kept = torch.full((b, req.width), -1, dtype=torch.long, device=units.device)
    rows = torch.arange(b, device=units.device)
    for step in range(req.width):
        pick = score.masked_fill(~available, float("-inf")).argmax(-1)
        active = step < req.budget
        kept[:, step] = torch.where(active, pick, -1)
        available[rows, pick] &= ~active
        distance = 1 - (units @ units[rows, pick][:, :, None]).squeeze(-1)
        score = distance if step == 0 else torch.minimum(score, distance)
    return kept
