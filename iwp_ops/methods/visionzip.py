"""VisionZip (arXiv 2412.04467): dominant tokens plus merged contextual tokens.

Official algorithm (dvlab-research/VisionZip, ``visionzip/clip_encoder.py``,
``CLIPVisionTower_VisionZip.forward``, with the key ``metric`` stored by
``visionzip/utils.py`` ``CLIPAttention_forward``): at the vision encoder's layer −2, dominant
tokens are the top CLS→patch attention summed over heads; the remaining tokens are split into
uniformly strided targets (``step = max(1, n_rest // n_ctx)``) and tokens to merge; each merged
token is assigned to its most key-cosine-similar target (keys averaged over heads), and a
contextual token is ``target + mean(assigned)``. The official split keeps 54 dominant and 10
contextual tokens for 64.

What our setting forces: Qwen2-VL's vision encoder has no CLS token, and pruning runs at
decoder layer K, not inside the vision encoder. So "dominant" is the attention each candidate
*receives* at layer K, from layer K's real queries of all tokens (``queries`` ``[B, Hq, N, D]``;
with fewer rows they are the last ones): each real query row's softmax over the candidates'
keys (as the CLS row is a distribution over the patches), averaged over rows and query heads;
``attention_mask`` marks a batch's left padding, whose rows count for nothing. The rows are
not restricted causally: in the decoder's causal map every later row sees the first visual
tokens, which would then dominate for their position alone (the choice between the two was
made on validation images; docs/accuracy.md). The contextual tokens replace their targets in
the sequence: the pruning hook calls ``select_and_merge`` and writes each target's merged row
into layer K's input hidden states, so the layers after K see them (``merged_features`` gives
the same rows to a caller of the public API). No official variant can run on this model: it
has no CLS row to read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..indices import ascending, from_mask, keep_top, rank_among, to_mask
from ..request import Request, build

_BLOCK_ELEMENTS = 1 << 23
DOMINANT_RATIO = 54 / 64


def received_attention(keys: Tensor, queries: Tensor, mask: Tensor, real: Tensor) -> Tensor:
    """Mean attention each candidate receives ``[B, N]``: every real query row's softmax over
    the candidates' keys only, averaged over rows and query heads."""
    b, h, n, d = keys.shape
    k = keys.float() * d ** -0.5
    q = queries.float()
    group, rows = q.shape[1] // h, q.shape[2]
    row_ok = real[:, n - rows:]
    block = max(1, _BLOCK_ELEMENTS // (b * group * n))
    total = keys.new_zeros(b, n, dtype=torch.float32)
    for head in range(h):
        qh = q[:, head * group:(head + 1) * group]
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            logits = qh[:, :, start:stop] @ k[:, head, None].transpose(-1, -2)
            attn = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1).nan_to_num(0.0)
            total += (attn * row_ok[:, None, start:stop, None]).sum((1, 2))
    return total / (row_ok.sum(-1, keepdim=True).clamp(min=1) * h * group)


def _plan(req: Request, queries: Tensor, attention_mask: Tensor | None, dominant_ratio: float) -> tuple[Tensor, Tensor]:
    """Boolean ``[B, N]`` masks of dominant tokens and of contextual targets."""
    dominant_ratio = validate.number("dominant_ratio", dominant_ratio, 0.0, 1.0)
    queries = validate.queries(queries, req.keys)
    if queries.shape[2] > req.shape[2]:
        raise ValueError(f"queries have {queries.shape[2]} rows for {req.shape[2]} tokens")
    real = validate.padding_mask(attention_mask, req.keys)
    n_dom = torch.floor(req.budget * dominant_ratio + 0.5).long()
    top = keep_top(received_attention(req.keys, queries, req.mask, real),
                   Request(req.keys, req.values, req.mask, n_dom, req.width))
    dominant = to_mask(top, req.mask.shape[1])
    rest = req.mask & ~dominant
    n_ctx = (req.budget - n_dom)[:, None]
    step = (rest.sum(-1, keepdim=True) // n_ctx.clamp(min=1)).clamp(min=1)
    rank = rank_among(rest)
    target = rest & (rank % step == 0) & (rank // step < n_ctx)
    return dominant, target


def select(req: Request, *, queries: Tensor, attention_mask: Tensor | None = None,
           dominant_ratio: float = DOMINANT_RATIO) -> Tensor:
    """Dominant indices plus the contextual targets' indices (``budget`` in all)."""
    dominant, target = _plan(req, queries, attention_mask, dominant_ratio)
    return from_mask(dominant | target, req.width)


def _merge(req: Request, hidden: Tensor, dominant: Tensor, target: Tensor) -> Tensor:
    """``hidden`` ``[B, N, E]`` with each contextual target's row ``target + mean(assigned)``."""
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
    merged = hidden.float() + sums / counts.clamp(min=1)[..., None]
    return torch.where(target[..., None], merged, hidden.float()).to(hidden.dtype)


def select_and_merge(req: Request, hidden: Tensor, *, queries: Tensor, attention_mask: Tensor | None = None,
                     dominant_ratio: float = DOMINANT_RATIO) -> tuple[Tensor, Tensor]:
    """``select``'s indices and ``hidden`` with the contextual targets' rows merged (one plan for both)."""
    hidden = validate.token_features("hidden", hidden, req.keys)
    dominant, target = _plan(req, queries, attention_mask, dominant_ratio)
    return from_mask(dominant | target, req.width), _merge(req, hidden, dominant, target)


def merged_features(keys: Tensor, values: Tensor, budget: int | Tensor, hidden: Tensor, *, queries: Tensor,
                    mask: Tensor | None = None, attention_mask: Tensor | None = None,
                    dominant_ratio: float = DOMINANT_RATIO) -> tuple[Tensor, Tensor]:
    """Kept indices ``[B, W]`` (as ``select_tokens(method="visionzip")``) and their features ``[B, W, E]``.

    Dominant tokens keep their ``hidden`` row; each contextual target becomes
    ``hidden[target] + mean(hidden of the tokens assigned to it)``, as in the
    official code. Rows of -1 padding are 0.
    """
    req, out_width = build(keys, values, budget, mask)
    selected, features = select_and_merge(req, hidden, queries=queries, attention_mask=attention_mask,
                                          dominant_ratio=dominant_ratio)
    kept = ascending(selected, out_width, req.shape[2])
    e = features.shape[-1]
    out = features.gather(1, kept.clamp(min=0)[..., None].expand(-1, -1, e)) * (kept >= 0)[..., None]
    return kept, out
