"""DART (arXiv 2502.11494): keep the tokens least duplicated with a few pivots.

Official rule (the authors' ZichenWen1/DART could not be read here; its port in ModelTC/llmc,
``llmc/compression/token_reduction/dart.py``, ``get_retained_image_token`` with the hooks
``get_any_states_hook`` and ``pruning_hook`` of ``DART.register_reduction_modules``): at layer
K (default 2), pivots are the 4 image tokens and the 4 text tokens *after the image* of largest
key L1 norm, keys taken from layer K−1's attention after the rotary embedding with heads
concatenated; for each pivot in turn, keep the not-yet-kept image tokens least cosine-similar
to it, in features = layer K's input hidden states through the model's *final* norm; image
pivots are kept as well, text pivots are not.

What the hook passes: ``prior_keys`` = layer K−1's rotated keys, ``hidden`` = the final norm
of layer K's input, so pivots and features are the official ones. Differences that remain:
the remaining budget is split over the pivots so exactly ``budget`` tokens are kept (llmc
gives each pivot ``⌈budget // pivots⌉`` and so keeps a few fewer), and pivots are visited
image first, then text, each by descending norm (llmc iterates a Python set). Without
``prior_keys`` the scored keys stand in; without ``hidden``, those keys with heads
concatenated. ``text_mask`` overrides the text pivots' pool (default: every token after the
item's last candidate, which left padding never reaches).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import validate
from ..indices import from_mask, rank_among
from ..request import Request


def _top_pivots(norm: Tensor, allowed: Tensor, count: int) -> tuple[Tensor, Tensor]:
    score = norm.masked_fill(~allowed, float("-inf"))
    top = score.topk(min(count, norm.shape[1]), dim=-1)
    return top.indices, top.values > float("-inf")


def select(req: Request, *, hidden: Tensor | None = None, prior_keys: Tensor | None = None, image_pivots: int = 4,
           text_pivots: int = 4, text_mask: Tensor | None = None) -> Tensor:
    """``budget`` tokens: image pivots plus, per pivot, its least similar candidates."""
    b, h, n, d = req.shape
    image_pivots = validate.positive_int("image_pivots", image_pivots)
    text_pivots = validate.non_negative_int("text_pivots", text_pivots)
    if hidden is None:
        features = req.keys.float().transpose(1, 2).reshape(b, n, h * d)
    else:
        features = validate.token_features("hidden", hidden, req.keys).float()
    pivot_keys = req.keys if prior_keys is None else validate.like_keys("prior_keys", prior_keys, req.keys)
    if text_mask is None:
        text = req.mask.flip(-1).cumsum(-1).flip(-1) == 0  # after the item's last candidate
    else:
        text = validate.mask(text_mask, b, n, req.keys.device)
    units = features / features.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    norm = pivot_keys.float().abs().sum((1, 3))

    img, img_ok = _top_pivots(norm, req.mask, image_pivots)
    img_ok &= torch.arange(img.shape[1], device=img.device) < req.budget[:, None]
    pivots = [img]
    valid = [img_ok]
    if text_pivots:
        txt, txt_ok = _top_pivots(norm, text & ~req.mask, text_pivots)
        pivots.append(txt)
        valid.append(txt_ok)
    pivot, pivot_ok = torch.cat(pivots, 1), torch.cat(valid, 1)

    kept = torch.zeros(b, n, dtype=torch.bool, device=norm.device)
    kept.scatter_(1, img, img_ok)
    remaining = req.budget - img_ok.sum(-1)
    live = pivot_ok.sum(-1).clamp(min=1)
    share = remaining[:, None] // live[:, None] + (rank_among(pivot_ok) < (remaining % live)[:, None])
    share = share * pivot_ok
    rows = torch.arange(b, device=norm.device)
    k = min(req.width, n)
    for p in range(pivot.shape[1]):
        similarity = (units @ units[rows, pivot[:, p]][:, :, None]).squeeze(-1)
        similarity.masked_fill_(~(req.mask & ~kept), float("inf"))
        least = (-similarity).topk(k, dim=-1)
        take = (torch.arange(k, device=norm.device) < share[:, p, None]) & (least.values > float("-inf"))
        kept.scatter_(1, least.indices, kept.gather(1, least.indices) | take)
    return from_mask(kept, req.width)
