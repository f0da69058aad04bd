"""Random: a uniformly random subset of the candidates (the floor every method must beat)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..indices import keep_top
from ..request import Request


def select(req: Request, *, seed: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Random ``budget`` candidates; ``seed`` or ``generator`` (on the keys' device) makes it repeatable."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device=req.keys.device).manual_seed(validate.non_negative_int("seed", seed))
    b, _, n, _ = req.shape
    return keep_top(torch.rand(b, n, generator=generator, device=req.keys.device), req)
