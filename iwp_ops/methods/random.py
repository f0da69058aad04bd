"""Random: a uniformly random subset of the candidates (the floor every method must beat).

Each candidate's score is a hash of the seed and its rank among its item's candidates, not a
draw from a generator over the batch's ``[B, N]`` layout: a draw would give an item other
tokens when its batch, its row in the batch or its padding changed, and an item must keep the
same tokens alone and in any batch. Items with the same number of candidates therefore get the
same random pattern for one seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..indices import rank_among
from ..request import Request

_MASK = (1 << 62) - 1


def _mix(x: Tensor) -> Tensor:
    """A 64-bit integer mixer (SplitMix64's finaliser; int64 products wrap as on unsigned)."""
    x = x ^ (x >> 31 & 0x1FFFFFFFF)
    x = x * -4658895280553007687  # 0xbf58476d1ce4e5b9 as a signed 64-bit integer
    x = x ^ (x >> 27 & 0x1FFFFFFFFF)
    x = x * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ (x >> 31 & 0x1FFFFFFFF)


def select(req: Request, *, seed: int = 0) -> Tensor:
    """Random ``budget`` candidates; the same ``seed`` gives an item the same tokens in any batch."""
    seed = validate.non_negative_int("seed", seed)
    rank = rank_among(req.mask).clamp(min=0)
    score = (_mix(_mix(torch.full_like(rank, seed)) + rank) & _MASK).masked_fill(~req.mask, -1)
    top = score.topk(req.width, dim=-1).indices
    return top.masked_fill(torch.arange(req.width, device=top.device) >= req.budget[:, None], -1)
