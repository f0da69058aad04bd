"""IWP scores: information magnitude (eq. 8/10) and information duplication (eq. 12).

Token i's rank-1 update of head h's implicit weight is ``ΔWᵢₕ = φ(kᵢₕ)ᵀvᵢₕ`` with
``⟨ΔWᵢₕ,ΔWⱼₕ⟩ = (vᵢₕ·vⱼₕ)·exp(kᵢₕ·kⱼₕ/√d)``. The exponentials overflow fp32 for
key norms of 40+, so everything is kept in log space, and pairwise terms are
written as ``cos(vᵢₕ,vⱼₕ)·exp(wᵢₕ + wⱼₕ − ‖k̂ᵢₕ − k̂ⱼₕ‖²/2)`` with ``k̂ = k/d^¼`` and
per-token log weights ``w`` chosen so that every exponent is <= 0. All arithmetic
is fp32 whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

HEAD_MODES = ("layer", "mean")
NORMALISATIONS = ("log_minmax", "max")
# Kernel terms at or below exp(-87), the bottom of fp32's normal range, are flushed to exactly 0
# (-inf log weights must give 0).
# Clamping first matters on CPU: torch's exp takes a slow path for inputs under about -87
# (7x slower on a 2-core x86 for a typical mix), and most pairs of far-apart keys land there.
_EXP_FLOOR = -87.0
_TINY = math.exp(_EXP_FLOOR) * (1 + 1e-6)


@dataclass(frozen=True)
class PairFeatures:
    """Per-token factors of the head-summed kernel ``Σ_h cos·exp(wᵢ + wⱼ − ‖k̂ᵢ − k̂ⱼ‖²/2)``.

    ``keys`` [B,H,N,D] are k/d^¼, ``half_sq`` [B,H,N] is ‖k̂‖²/2, ``units`` [B,H,N,Dv]
    are unit values (zero for zero values), ``logw`` [B,H,N] the log weights
    (-inf drops a token from every sum).
    """

    keys: Tensor
    half_sq: Tensor
    units: Tensor
    logw: Tensor

    def take(self, idx: Tensor) -> PairFeatures:
        """The features of tokens ``idx`` [B, C]; entries < 0 become tokens of weight zero."""
        safe = idx.clamp(min=0)[:, None, :]
        h = self.keys.shape[1]
        vec = safe[..., None].expand(-1, h, -1, 1)
        return PairFeatures(
            self.keys.gather(2, vec.expand(-1, -1, -1, self.keys.shape[-1])),
            self.half_sq.gather(2, safe.expand(-1, h, -1)),
            self.units.gather(2, vec.expand(-1, -1, -1, self.units.shape[-1])),
            self.logw.gather(2, safe.expand(-1, h, -1)).masked_fill(idx[:, None, :] < 0, float("-inf")),
        )

    def rows(self, start: int, stop: int) -> PairFeatures:
        return PairFeatures(*(t[:, :, start:stop] for t in (self.keys, self.half_sq, self.units, self.logw)))

    def with_logw(self, logw: Tensor) -> PairFeatures:
        return replace(self, logw=logw)

    def pair(self, other: PairFeatures) -> Tensor:
        """``[B, R, C]`` kernel between these R tokens and ``other``'s C tokens, summed over heads.

        All heads in one batched product: the selection loop calls this twice per step, and
        on a GPU its cost is the number of kernels launched, not their arithmetic.
        """
        expo = torch.matmul(self.keys, other.keys.transpose(-1, -2))
        expo.sub_(self.half_sq[..., :, None]).sub_(other.half_sq[..., None, :]).clamp_(max=0)
        expo.add_(self.logw[..., :, None]).add_(other.logw[..., None, :]).clamp_(min=_EXP_FLOOR).exp_()
        torch.nn.functional.threshold_(expo, _TINY, 0.0)
        return expo.mul_(torch.matmul(self.units, other.units.transpose(-1, -2))).sum(1)


def pair_features(keys: Tensor, values: Tensor, mask: Tensor | None = None) -> tuple[PairFeatures, Tensor]:
    """Kernel features with zero log weights, and the query-free log Mᵢₕ ``[B, H, N]`` (eq. 8).

    ``log Mᵢₕ = ‖kᵢₕ‖²/(2√d) + log‖vᵢₕ‖`` (-inf for zero values; RoPE is a rotation, so
    it leaves this unchanged). The kernel only needs key *differences*, so the keys
    are centred per head first: LLM keys share large offsets, and centring shrinks
    the fp32 cancellation in ``‖k̂ᵢ‖² + ‖k̂ⱼ‖² − 2k̂ᵢ·k̂ⱼ``. The centre is the mean over the
    candidates ``mask`` ``[B, N]`` (default: all tokens), so tokens that are not candidates
    (an item's text, a batch's left padding) cannot change an item's features.
    """
    k = keys.float() * keys.shape[-1] ** -0.25
    v = values.float()
    norm = v.norm(dim=-1)
    log_m = 0.5 * k.square().sum(-1) + norm.log()
    if mask is None:
        k -= k.mean(2, keepdim=True)
    else:
        weight = mask[:, None, :, None].to(k.dtype)
        k -= (k * weight).sum(2, keepdim=True) / weight.sum(2, keepdim=True).clamp(min=1)
    units = v / norm.clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    return PairFeatures(k, 0.5 * k.square().sum(-1), units, torch.zeros_like(norm)), log_m


def query_log_magnitude(keys: Tensor, values: Tensor, queries: Tensor) -> Tensor:
    """Query-aware per-head log score ``[B, H, N]`` (eq. 10): ``κ(q,kᵢ)‖vᵢ‖``.

    Combined over every query head of the KV head's group and every query token as
    the root mean square over query tokens of the root sum of squares over the
    group's query heads (the norm of token i's contribution to the concatenated
    head outputs).
    """
    b, h, n, d = keys.shape
    group = queries.shape[1] // h
    out = keys.new_empty(b, h, n, dtype=torch.float32)
    for head in range(h):
        q = queries[:, head * group:(head + 1) * group].float().flatten(1, 2)
        logits = torch.matmul(q, keys[:, head].float().transpose(1, 2)) * d ** -0.5
        out[:, head] = 0.5 * (torch.logsumexp(2 * logits, dim=1) - math.log(queries.shape[2]))
    return out + values.float().norm(dim=-1).log()


def combine_heads(log_m: Tensor) -> Tensor:
    """Whole-layer log magnitude: ``Mᵢ² = Σ_h Mᵢₕ²`` (block-diagonal implicit weight)."""
    return 0.5 * torch.logsumexp(2 * log_m, dim=1)


def normalise(log_m: Tensor, mask: Tensor, how: str) -> Tensor:
    """Map log magnitudes to [0, 1] over each row's candidates (last dim); 0 off-mask.

    ``log_minmax`` rescales log M linearly between the candidates' min and max, so
    the exponential spread of magnitudes does not squash all but the top tokens to
    zero; ``max`` is the plain ratio M / max M. Zero-magnitude tokens score 0, and
    rows whose candidates all share one magnitude score 1.
    """
    ok = mask & torch.isfinite(log_m)
    hi = log_m.masked_fill(~ok, float("-inf")).amax(-1, keepdim=True)
    if how == "max":
        out = (log_m - hi).exp()
    else:
        lo = log_m.masked_fill(~ok, float("inf")).amin(-1, keepdim=True)
        span = hi - lo
        out = torch.where(span > 0, (log_m - lo) / span, torch.ones_like(log_m))
    return torch.where(ok, out.clamp(0, 1), torch.zeros_like(log_m))


def relevance(
    keys: Tensor, values: Tensor, mask: Tensor, *, queries: Tensor | None, heads: str, how: str
) -> tuple[Tensor, PairFeatures, Tensor]:
    """Normalised magnitude m̂ ``[B, N]``, the duplication features behind ``S``, and
    ``informative`` ``[B, N]``: False for tokens whose ΔWᵢ is zero (zero values).

    ``heads="layer"``: m̂ from the whole-layer Mᵢ and
    ``Sᵢⱼ = Σ_h cos(vᵢₕ,vⱼₕ)·exp(log aᵢₕ + log aⱼₕ − ‖kᵢₕ−kⱼₕ‖²/(2√d))`` with
    ``aᵢₕ = Mᵢₕ/Mᵢ``, which equals ``⟨ΔWᵢ,ΔWⱼ⟩/(MᵢMⱼ)`` over the layer.
    ``heads="mean"``: per-head normalised magnitudes and per-head ``Sᵢⱼₕ`` averaged.
    The query-aware score (``queries``) changes m̂ only; ``S`` always uses the
    query-free magnitudes, as eq. 12 does.
    """
    base, free = pair_features(keys, values, mask)
    scored = free if queries is None else query_log_magnitude(keys, values, queries)
    layer = combine_heads(free)
    informative = torch.isfinite(layer)
    if heads == "mean":
        mhat = normalise(scored, mask[:, None, :], how).mean(1)
        return mhat, base.with_logw(torch.full_like(free, -0.5 * math.log(free.shape[1]))), informative
    share = torch.where(informative[:, None, :], free - layer[:, None, :], float("-inf"))
    return normalise(combine_heads(scored), mask, how), base.with_logw(share), informative
