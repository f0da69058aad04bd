"""FastV (arXiv 2403.06764): keep the image tokens that receive the most attention.

Official rule (pkunlp-icler/FastV): at layer K (default K=2, drop R=50 %), take the
attention map of layer K−1, average it over heads, read the last token's row and
keep the top image tokens. Here that one row is computed from ``queries`` (the
last token's query, ``queries[:, :, -1]``) and the keys, so the model can keep
using SDPA/FlashAttention. The softmax runs over every key passed; pass the whole
sequence's keys with ``mask`` marking the image tokens to match FastV's
normalisation exactly (only the head average depends on it).
"""

from __future__ import annotations

from torch import Tensor

from .. import validate
from ..indices import keep_top
from ..request import Request


def select(req: Request, *, queries: Tensor) -> Tensor:
    """Top-``budget`` candidates by head-averaged attention from the last query token."""
    q = validate.queries(queries, req.keys)[:, :, -1].float()
    b, h, n, d = req.shape
    q = q.view(b, h, q.shape[1] // h, d)
    logits = (q @ req.keys.float().transpose(-1, -2)) * d ** -0.5
    received = logits.softmax(-1).mean((1, 2))
    return keep_top(received, req)
