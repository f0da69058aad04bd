"""The validated selection request that every method receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import validate


@dataclass(frozen=True)
class Request:
    """Inputs of one batched selection, already checked.

    ``budget`` is the per-item number of tokens to keep, already capped at the
    item's candidate count; ``width`` (a host int, at most N) bounds it, so
    methods can size their outputs without a device-to-host sync.
    """

    keys: Tensor
    values: Tensor
    mask: Tensor
    budget: Tensor
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, h, n, d = self.keys.shape
        return b, h, n, d


def build(keys: Any, values: Any, budget: Any, mask: Any) -> tuple[Request, int]:
    """Validate the common arguments; return the request and the output width (max budget)."""
    keys, values = validate.keys_values(keys, values)
    b, _, n, _ = keys.shape
    cand = validate.mask(mask, b, n, keys.device)
    asked = validate.budget(budget, b, keys.device)
    out_width = int(asked.max())
    effective = torch.minimum(asked, cand.sum(-1))
    return Request(keys, values, cand, effective, min(out_width, n)), out_width
