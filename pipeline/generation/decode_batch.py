"""The rows that decode together, and the three things continuous batching does to them.

Each row's cache is left-padded to the batch's length, with a padding mask; layers below the
pruning layer K hold every prompt token (`below`), layers from K on only the kept ones
(`above`; without pruning both masks describe the same full-length cache). Rows that finish
leave (`select`: the cache rows are gathered and the padding columns no remaining row needs are
cut), rows just prefilled join (`merge`: both sides left-padded to a common length), and every
step appends one token to every row (`advance`). Padded cache entries are masked out, so a row's
attention sees exactly its own tokens, whatever rows share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache


@dataclass
class DecodeBatch:
    cache: DynamicCache
    split: int  # layers < split use `below`, layers >= split use `above`
    below: Tensor  # [B, Tb] int64 padding mask (1: a real token), as generate() extends it
    above: Tensor  # [B, Ta] bool
    positions: Tensor  # [B] position of the next token fed
    last: Tensor  # [B] the token fed next
    steps: Tensor  # [B] tokens generated so far
    tokens: Tensor  # [B, W] tokens generated so far, padded
    limits: Tensor  # [B] max_new_tokens
    temperature: Tensor
    top_p: Tensor
    seeds: Tensor
    eos_at: Tensor  # [B] forced length, -1: free
    rows: list[int]  # the request index of each batch row
    started: list[float]  # when each row's first token came
    # Host copies of `steps` and `limits`, so sizing a batch never waits on the device.
    host_steps: np.ndarray
    host_limits: np.ndarray

    # Per-row tensors, gathered on select and concatenated on merge (the masks and cache need padding).
    _ROW_FIELDS = ("positions", "last", "steps", "limits", "temperature", "top_p", "seeds", "eos_at")

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def growth(self) -> int:
        """Most tokens any row may still add to the cache."""
        return int((self.host_limits - self.host_steps).max())

    def mask_for(self, layer: int) -> Tensor:
        return self.below if layer < self.split else self.above

    def advance(self, tokens: Tensor) -> None:
        """Record this step's token of every row; the next step feeds it."""
        self.tokens = _widen(self.tokens, int(self.host_steps.max()) + 1)
        self.tokens.scatter_(1, self.steps[:, None], tokens[:, None])
        self.last = tokens
        self.steps = self.steps + 1
        self.host_steps = self.host_steps + 1

    def fed(self) -> None:
        """The model has cached `last` for every row: masks and positions grow by one."""
        self.below = torch.cat([self.below, self.below.new_ones(self.size, 1)], 1)
        self.above = torch.cat([self.above, self.above.new_ones(self.size, 1)], 1)
        self.positions = self.positions + 1

    def restore(self) -> None:
        """After a step that failed midway: drop what some layers cached of it, past the masks."""
        for i, layer in enumerate(self.cache.layers):
            length = self.mask_for(i).shape[1]
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]

    def select(self, kept: list[int]) -> DecodeBatch:
        """Only the batch rows at `kept` (positions in this batch, in order), with the padding no
        remaining row needs cut."""
        keep = torch.tensor(kept, device=self.steps.device)
        below, above = self.below[keep], self.above[keep]
        cut_below, cut_above = (int(v) for v in torch.stack([_lead(below), _lead(above)]).tolist())
        cache = self.cache
        for i, layer in enumerate(cache.layers):
            cut = cut_below if i < self.split else cut_above
            layer.keys = layer.keys[keep, :, cut:]
            layer.values = layer.values[keep, :, cut:]
        picked = {name: getattr(self, name)[keep] for name in self._ROW_FIELDS}
        return replace(self, cache=cache, below=below[:, cut_below:], above=above[:, cut_above:],
                       tokens=self.tokens[keep], rows=[self.rows[i] for i in kept],
                       started=[self.started[i] for i in kept], host_steps=self.host_steps[kept],
                       host_limits=self.host_limits[kept],
                       **picked)

    @staticmethod
    def merge(a: DecodeBatch | None, b: DecodeBatch) -> DecodeBatch:
        """`a`'s rows then `b`'s, in one batch."""
        if a is None:
            return b
        for la, lb in zip(a.cache.layers, b.cache.layers):
            width = max(la.keys.shape[2], lb.keys.shape[2])
            la.keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)])
            la.values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)])
        width = max(a.tokens.shape[1], b.tokens.shape[1])
        joined = {name: torch.cat([getattr(a, name), getattr(b, name)]) for name in DecodeBatch._ROW_FIELDS}
        return replace(a, below=_cat_masks(a.below, b.below), above=_cat_masks(a.above, b.above),
                       tokens=torch.cat([_widen(a.tokens, width), _widen(b.tokens, width)]),
                       rows=a.rows + b.rows, started=a.started + b.started,
                       host_steps=np.concatenate([a.host_steps, b.host_steps]),
                       host_limits=np.concatenate([a.host_limits, b.host_limits]), **joined)


def _lead(mask: Tensor) -> Tensor:
    """Leading padding columns that every row has."""
    return mask.to(torch.int8).argmax(-1).min()


def _pad_left(x: Tensor, width: int, dim: int) -> Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    spec = [0, 0] * (x.dim() - dim - 1) + [missing, 0]
    return F.pad(x, spec)


def _cat_masks(a: Tensor, b: Tensor) -> Tensor:
    width = max(a.shape[1], b.shape[1])
    return torch.cat([_pad_left(a, width, 1), _pad_left(b, width, 1)])


def _widen(tokens: Tensor, width: int) -> Tensor:
    """Room for `width` tokens per row (right side; the values past a row's steps are never read)."""
    missing = width - tokens.shape[1]
    return tokens if missing <= 0 else F.pad(tokens, (0, max(missing, tokens.shape[1])))

