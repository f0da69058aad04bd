"""VisionZip-style dominant + contextual tokens (arXiv 2412.04467).

Official algorithm (dvlab-research/VisionZip): dominant tokens are the top
CLS→patch attention (summed over heads) at vision layer −2; the remaining tokens
are split into uniformly strided targets (``step = ⌊n_rest / n_ctx⌋``) and tokens to
merge, each merged token is assigned to its most key-cosine-similar target (keys
averaged over heads), and a contextual token is ``target + mean(assigned)``.
Defaults keep the official 54 : 10 dominant : contextual proportion.

Adaptation: Qwen2-VL's vision encoder has no CLS token, so "dominant" uses the
mean attention each token *receives*, averaged over all query rows and heads,
computed in row blocks from ``queries=[B, Hq, Nq, D]`` (the layer's queries) or,
when absent, from the keys themselves standing in for the queries (rows =
candidates). ``select`` returns dominant + target indices; callers who substitute
the merged features use ``merged_features`` (public as
``iwp_ops.visionzip_merged_features``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..indices import ascending, from_mask, keep_top, rank_among, to_mask
from ..request import Request, build

_BLOCK_ELEMENTS = 1 << 23
DOMINANT_RATIO = 54 / 64


def received_attention(keys: Tensor, mask: Tensor, queries: Tensor | None) -> Tensor:
    """Mean softmax attention each token receives ``[B, N]`` (keys restricted to candidates)."""
    b, h, n, d = keys.shape
    k = keys.float() * d ** -0.5
    q = keys.float() if queries is None else queries.float()
    group = q.shape[1] // h
    rows = q.shape[2]
    row_ok = mask if queries is None else torch.ones(b, rows, dtype=torch.bool, device=keys.device)
    block = max(1, _BLOCK_ELEMENTS // (b * group * n))
    total = keys.new_zeros(b, n, dtype=torch.float32)
    for head in range(h):
        qh = q[:, head * group:(head + 1) * group]
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            logits = qh[:, :, start:stop] @ k[:, head, None].transpose(-1, -2)
            attn = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
            total += (attn * row_ok[:, None, start:stop, None]).sum((1, 2))
    return total / (row_ok.sum(-1, keepdim=True).clamp(min=1) * h * group)


def _plan(req: Request, queries: Tensor | None, dominant_ratio: float) -> tuple[Tensor, Tensor]:
    """Boolean ``[B, N]`` masks of dominant tokens and of contextual targets."""
    dominant_ratio = validate.number("dominant_ratio", dominant_ratio, 0.0, 1.0)
    if queries is not None:
        queries = validate.queries(queries, req.keys)
    n_dom = torch.floor(req.budget * dominant_ratio + 0.5).long()
    top = keep_top(received_attention(req.keys, req.mask, queries),
                   Request(req.keys, req.values, req.mask, n_dom, req.width))
    dominant = to_mask(top, req.mask.shape[1])
    rest = req.mask & ~dominant
    n_ctx = (req.budget - n_dom)[:, None]
    step = (rest.sum(-1, keepdim=True) // n_ctx.clamp(min=1)).clamp(min=1)
    rank = rank_among(rest)
    target = rest & (rank % step == 0) & (rank // step < n_ctx)
    return dominant, target


def select(req: Request, *, queries: Tensor | None = None, dominant_ratio: float = DOMINANT_RATIO) -> Tensor:
    """Dominant indices plus the contextual targets' indices (``budget`` in all)."""
    dominant, target = _plan(req, queries, dominant_ratio)
    return from_mask(dominant | target, req.width)


def merged_features(keys: Tensor, values: Tensor, budget: int | Tensor, hidden: Tensor, *,
                    mask: Tensor | None = None, queries: Tensor | None = None,
                    dominant_ratio: float = DOMINANT_RATIO) -> tuple[Tensor, Tensor]:
    """Kept indices ``[B, W]`` (as ``select_tokens(method="visionzip")``) and their features ``[B, W, E]``.

    Dominant tokens keep their ``hidden`` row; each contextual target becomes
    ``hidden[target] + mean(hidden of the tokens assigned to it)``, as in the
    official code. Rows of -1 padding are 0.
    """
    req, out_width = build(keys, values, budget, mask)
    hidden = validate.token_features("hidden", hidden, req.keys)
    dominant, target = _plan(req, queries, dominant_ratio)
    b, n, e = hidden.shape
    metric = req.keys.float().mean(1)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    targets = from_mask(target, max(1, req.width))
    target_metric = metric.gather(1, targets.clamp(min=0)[..., None].expand(-1, -1, metric.shape[-1]))
    sim = (metric @ target_metric.transpose(1, 2)).masked_fill_((targets < 0)[:, None, :], float("-inf"))
    owner = targets.gather(1, sim.argmax(-1)).clamp(min=0)
    merge = (req.mask & ~dominant & ~target & (targets >= 0).any(-1, keepdim=True)).float()
    sums = torch.zeros(b, n, e, device=hidden.device).scatter_add_(
        1, owner[..., None].expand(-1, -1, e), hidden.float() * merge[..., None])
    counts = torch.zeros(b, n, device=hidden.device).scatter_add_(1, owner, merge)
    features = hidden.float() + sums / counts.clamp(min=1)[..., None]
    kept = ascending(from_mask(dominant | target, req.width), out_width, n)
    out = features.gather(1, kept.clamp(min=0)[..., None].expand(-1, -1, e)) * (kept >= 0)[..., None]
    return kept, out.to(hidden.dtype)
