"""The next token of every decoding row at once: greedy, or sampled reproducibly per row.

Greedy matches `generate(do_sample=False, suppress_tokens=..., min_new_tokens=1)` exactly: the
same float32 logits, the same banned ids, the same first-index argmax. Sampling draws with the
Gumbel-max trick from noise that is a hash of (row seed, step, token id), so a row's draws do
not depend on which rows share its batch or in what order: a job's sampled captions are
reproducible whatever the batching, and no per-row generator loop runs on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finaliser; int64 products wrap on every torch device."""
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    return x ^ _shift(x, 31)


def uniform_noise(seeds: Tensor, steps: Tensor, vocab: int) -> Tensor:
    """[B, vocab] uniforms in (0, 1), a pure function of each row's seed and step."""
    row = _mix(seeds * _GOLDEN + steps)
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _shift(_mix(row[:, None] + ids[None, :] * _GOLDEN), 11)
    return (bits.double() + 0.5) / float(1 << 53)


@dataclass
class Chooser:
    """The rules that hold for every row: ids never generated, the end ids, the first-step ban on them."""

    suppress: Tensor  # token ids that are never generated (placeholders, padding)
    eos: Tensor  # end-of-sequence ids; banned at the first step (at least one new token)

    def scores(self, logits: Tensor, steps: Tensor, eos_at: Tensor) -> Tensor:
        """float32 scores [B, V] for logits [B, V] at each row's step (tokens it has so far), with the
        banned ids at -inf. `eos_at` < 0: free length; else end-of-sequence is banned before that
        step and forced at it."""
        scores = logits.float()
        scores[:, self.suppress] = -torch.inf
        banned = (steps == 0) | ((eos_at >= 0) & (steps < eos_at))
        scores[:, self.eos] = scores[:, self.eos].masked_fill(banned[:, None], -torch.inf)
        forced = (eos_at >= 0) & (steps >= eos_at)
        return torch.where(forced[:, None], _only(self.eos[0], scores), scores)

    @staticmethod
    def pick(scores: Tensor, steps: Tensor, temperature: Tensor, top_p: Tensor, seeds: Tensor,
             sampling: bool) -> Tensor:
        """Tokens [B]: the best score, or for rows with a temperature a seeded draw."""
        best = scores.argmax(-1)
        if not sampling:
            return best
        greedy = temperature <= 0
        scaled = _top_p(scores / torch.where(greedy, 1.0, temperature)[:, None], top_p)
        gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, scores.shape[-1]))).float()
        return torch.where(greedy, best, (scaled + gumbel).argmax(-1))


def _only(token: Tensor, scores: Tensor) -> Tensor:
    out = torch.full_like(scores, -torch.inf)
    out[:, token] = 0.0
    return out


def _top_p(scores: Tensor, top_p: Tensor) -> Tensor:
    """Nucleus filter per row: keep the most likely tokens until their mass reaches the row's top_p."""
    ordered, order = scores.sort(-1, descending=True)
    probs = ordered.softmax(-1)
    drop = (probs.cumsum(-1) - probs) > top_p[:, None]
    drop[:, 0] = False
    return scores.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), -torch.inf)
