"""Weight fidelity: how much of the implicit weight ``W_N = Σᵢ ΔWᵢ`` the kept tokens preserve.

``fidelity = ⟨W_N, W_S⟩ / (‖W_N‖‖W_S‖)`` in the Frobenius inner product, summed over
heads, from Gram terms ``⟨ΔWᵢ,ΔWⱼ⟩ = (vᵢ·vⱼ)·exp(kᵢ·kⱼ/√d)``. The cosine, unlike the
residual ‖W_N − W_S‖, ignores the scale of W_S, which softmax renormalises anyway.
Every Gram term is shifted by one per-item constant (it cancels in the cosine)
so that all exponents are <= 0, and Gram blocks are formed a few rows at a time, so
memory stays O(N·block) whatever N is. Time is O(N²·H·d): ‖W_N‖² needs every pair (the
Gram's symmetry halves that), and ⟨W_N, W_S⟩ is read off the same pass's column totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import validate
from .scoring import PairFeatures, pair_features

KERNELS = ("softmax", "linear")
_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class LinearFeatures:
    """Factors of the linear-attention Gram ``Σ_h (vᵢₕ·vⱼₕ)(kᵢₕ·kⱼₕ)``, rescaled to norms <= 1."""

    keys: Tensor
    values: Tensor

    def take(self, idx: Tensor) -> LinearFeatures:
        safe = idx.clamp(min=0)[:, None, :, None]
        h = self.keys.shape[1]
        values = self.values.gather(2, safe.expand(-1, h, -1, self.values.shape[-1]))
        return LinearFeatures(self.keys.gather(2, safe.expand(-1, h, -1, self.keys.shape[-1])),
                              values * (idx >= 0)[:, None, :, None])

    def rows(self, start: int, stop: int) -> LinearFeatures:
        return LinearFeatures(self.keys[:, :, start:stop], self.values[:, :, start:stop])

    def pair(self, other: LinearFeatures) -> Tensor:
        dot_k = torch.matmul(self.keys, other.keys.transpose(-1, -2))
        return dot_k.mul_(torch.matmul(self.values, other.values.transpose(-1, -2))).sum(1)


Features = PairFeatures | LinearFeatures


def gram_features(keys: Tensor, values: Tensor, mask: Tensor, kernel: str) -> Features:
    """Gram factors in which non-candidate tokens weigh nothing."""
    if kernel == "linear":
        k, v = keys.float(), values.float() * mask[:, None, :, None]
        scale_k = k.norm(dim=-1).amax((1, 2), keepdim=True).clamp(min=1e-30)[..., None]
        scale_v = v.norm(dim=-1).amax((1, 2), keepdim=True).clamp(min=1e-30)[..., None]
        return LinearFeatures(k / scale_k, v / scale_v)
    base, log_m = pair_features(keys, values, mask)
    log_m = log_m.masked_fill(~mask[:, None, :], float("-inf"))
    shift = log_m.amax((1, 2), keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return base.with_logw(log_m - shift)


def _blocks(count: int, per_row: int, batch: int, parts: int = 1) -> list[tuple[int, int]]:
    """Row ranges of at most ``parts`` blocks of equal size (more where the memory cap needs it)."""
    step = max(1, min(_BLOCK_ELEMENTS // max(1, batch * per_row), -(-count // parts)))
    return [(start, min(count, start + step)) for start in range(0, count, step)]


def column_totals(features: Features) -> Tensor:
    """``cⱼ = Σᵢ G[i, j]`` over all tokens, ``[B, N]`` in float64.

    G is symmetric, so only the blocks of rows against the columns from their own first row
    on are formed (with 8 equal blocks, 56 % of the pairs): each adds its column sums to its
    columns and, right of the diagonal, its row sums to its own rows.
    """
    b, _, n, _ = features.keys.shape
    total = torch.zeros(b, n, dtype=torch.float64, device=features.keys.device)
    for start, stop in _blocks(n, n, b, parts=8):
        block = features.rows(start, stop).pair(features.rows(start, n)).double()
        total[:, start:] += block.sum(1)
        total[:, start:stop] += block[:, :, stop - start:].sum(-1)
    return total


def kept_totals(totals: Tensor, indices: Tensor) -> Tensor:
    """``totals`` at ``indices`` ``[B, K]``; -1 entries give 0."""
    return totals.gather(1, indices.clamp(min=0)) * (indices >= 0)


def cosine(inner: Tensor, norm_a: Tensor, norm_b: Tensor) -> Tensor:
    denom = (norm_a * norm_b).clamp(min=0).sqrt()
    return torch.where(denom > 0, inner / denom.clamp(min=1e-300), torch.zeros_like(inner))


def weight_fidelity(keys: Any, values: Any, indices: Any, *, mask: Tensor | None = None,
                    kernel: str = "softmax") -> Tensor:
    """Cosine between the full and the kept implicit weight per item, ``Tensor[B]`` (float32).

    ``indices`` ``[B, K]`` as returned by ``select_tokens`` (-1 entries are ignored);
    ``mask`` restricts the full weight to candidate tokens (kept non-candidates count
    for nothing). ``kernel="linear"`` uses ``(vᵢ·vⱼ)(kᵢ·kⱼ)``, for which the result is
    the cosine of the explicit matrices ``W = Σ kᵢᵀvᵢ``. Items whose weight is zero give 0.
    """
    keys, values = validate.keys_values(keys, values)
    b, _, n, _ = keys.shape
    cand = validate.mask(mask, b, n, keys.device)
    kept_idx = validate.indices(indices, b, n, keys.device)
    return unchecked_fidelity(keys, values, kept_idx, cand, validate.choice("kernel", kernel, KERNELS))


def unchecked_fidelity(keys: Tensor, values: Tensor, indices: Tensor, mask: Tensor, kernel: str = "softmax") -> Tensor:
    """`weight_fidelity` without its checks, for inputs already known good (a model's keys and a
    selection's indices): those checks each read a value back from the device."""
    features = gram_features(keys, values, mask, kernel)
    totals = column_totals(features)
    inner = kept_totals(totals, indices).sum(-1)
    return cosine(inner, totals.sum(-1), column_totals(features.take(indices)).sum(-1)).float()


def prefix_fidelity(features: Features, order: Tensor) -> Tensor:
    """Fidelity of every prefix of an admission order ``[B, K]`` (-1 padded): ``[B, K]`` float64.

    Uses ``‖W_{S+j}‖² = ‖W_S‖² + 2Σ_{i∈S}G[i,j] + G[j,j]`` over the order, one block of
    rows at a time, so all K prefixes cost one K×K Gram pass instead of K fidelities.
    """
    kept = features.take(order)
    totals = column_totals(features)
    inner = kept_totals(totals, order).cumsum(-1)
    b, k = order.shape
    lower = torch.zeros(b, k, dtype=torch.float64, device=order.device)
    for start, stop in _blocks(k, k, b):
        block = kept.rows(start, stop).pair(kept).double()
        rows = torch.arange(start, stop, device=order.device)
        below = torch.arange(k, device=order.device)[None, :] < rows[:, None]
        lower[:, start:stop] = 2 * (block * below).sum(-1) + block[:, rows - start, rows]
    return cosine(inner, totals.sum(-1, keepdim=True), lower.cumsum(-1))
