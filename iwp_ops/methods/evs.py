"""EVS (Efficient Video Sampling, vLLM's ``--video-pruning-rate``): drop the tokens whose patch
barely changed since the previous temporal step.

Official algorithm (vLLM, ``vllm/multimodal/evs.py``, ``compute_retention_mask``, with
``compute_retained_tokens_count``): the video's merged vision embeddings are laid out
``(T, H', W')``; each token's dissimilarity is ``1 − cos`` to the token at the same spatial
position in the previous temporal step; the first temporal step gets a dissimilarity of 255 so
it is always kept; the tokens are ranked by a stable descending sort and the top count kept. The
count there is ``max(tokens per frame, ⌊T·H'·W'·(1 − q)⌋)``: never less than one whole frame.

What differs here:

- Where: every method here prunes at decoder layer K (same compute saved for all); the scores
  are computed from the features vLLM scores, the visual embeddings that enter the decoder
  (``embeddings``, the hook's input embeddings), or, with ``features="hidden"``, from layer K's
  normed input hidden states (the ablation). Without either, layer K's keys with heads
  concatenated stand in.
- Budget: the harness's budget, the same for every method, not vLLM's count. Where it is below
  one frame (vLLM never goes there), the always-kept first-step tokens are themselves thinned
  by an even spatial stride (``uniform``), since they have no temporal predecessor to rank by.
- Frames: a token's temporal step is its ``frame_ids`` entry (the hook passes each item's own
  temporal patches, one frame per image) or ``tokens_per_frame``; its spatial position is its
  rank within its frame. A frame whose token count differs from the previous frame's (an image
  beside a video in one item) has no predecessor and counts as a first step.
- Images: vLLM applies EVS to video only. An image is a single first step, so EVS on an image is
  the even spatial stride (identical to ``uniform``): no temporal redundancy to exploit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import frames, validate
from ..indices import to_mask
from ..request import Request
from . import uniform

FEATURES = ("embeddings", "hidden")
# Above any 1 − cos (at most 2): vLLM's 255 for the first temporal step.
FIRST_STEP = 255.0


def _features(req: Request, which: str, embeddings: Tensor | None, hidden: Tensor | None) -> Tensor:
    chosen = embeddings if which == "embeddings" else hidden
    if chosen is not None:
        return validate.token_features(which, chosen, req.keys).float()
    b, h, n, d = req.shape
    return req.keys.float().transpose(1, 2).reshape(b, n, h * d)


def predecessors(frame_of: Tensor, mask: Tensor) -> Tensor:
    """``[B, N]``: each candidate's same-position token in the previous frame, -1 where it has none
    (first frame, a frame of another size, or not a candidate)."""
    b, n = mask.shape
    device = mask.device
    count = torch.zeros(b, int(frame_of.max()) + 2, dtype=torch.long, device=device)
    count.scatter_add_(1, frame_of + 1, mask.long())  # count[:, f + 1] = candidates in frame f
    start = count.cumsum(-1)  # start[:, f] = first sorted slot of frame f
    position = torch.arange(n, device=device)
    by_frame = torch.where(mask, frame_of * n + position, (frame_of.max() + 1) * n + position).argsort(dim=-1)
    slot = torch.empty_like(by_frame).scatter_(1, by_frame, position.expand(b, n))  # token -> sorted slot
    within = slot - start.gather(1, frame_of)
    previous = (frame_of - 1).clamp(min=0)
    size = count.gather(1, frame_of + 1)
    has = mask & (frame_of > 0) & (count.gather(1, previous + 1) == size)
    pred_slot = (start.gather(1, previous) + within).clamp(0, n - 1)
    return torch.where(has, by_frame.gather(1, pred_slot), -1)


def dissimilarity(features: Tensor, pred: Tensor) -> Tensor:
    """``1 − cos`` of each token to its predecessor (``FIRST_STEP`` where it has none), row by row
    (no matrix product, so a token's score never depends on its batch)."""
    other = features.gather(1, pred.clamp(min=0)[..., None].expand_as(features))
    cos = torch.nn.functional.cosine_similarity(features, other, dim=-1)
    return torch.where(pred >= 0, 1 - cos, FIRST_STEP)


def select(req: Request, *, embeddings: Tensor | None = None, hidden: Tensor | None = None,
           features: str = "embeddings", frame_ids: Tensor | None = None,
           tokens_per_frame: int | None = None) -> Tensor:
    """Every first-step token (evenly thinned if they alone exceed the budget), then the most
    changed tokens by a stable descending sort, as vLLM's ``compute_retention_mask``."""
    features = validate.choice("features", features, FEATURES)
    x = _features(req, features, embeddings, hidden)
    b, _, n, _ = req.shape
    frame_of = frames.resolve(frame_ids, tokens_per_frame, req)
    if frame_of is None:
        frame_of = torch.zeros(b, n, dtype=torch.long, device=req.keys.device)
    pred = predecessors(frame_of, req.mask)
    score = dissimilarity(x, pred)
    first = req.mask & (pred < 0)
    thinned = uniform.select(Request(req.keys, req.values, first, torch.minimum(req.budget, first.sum(-1)), req.width),
                             frame_ids=frame_of)
    first_kept = to_mask(thinned, n)
    score = score.masked_fill(first & ~first_kept, float("-inf")).masked_fill(~req.mask, float("-inf"))
    order = score.sort(dim=-1, descending=True, stable=True).indices[:, :req.width]
    return order.masked_fill(torch.arange(req.width, device=order.device) >= req.budget[:, None], -1)

