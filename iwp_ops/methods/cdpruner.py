"""CDPruner (arXiv 2506.10967): a relevant and diverse subset by DPP MAP inference on an
instruction-conditioned similarity kernel.

Official algorithm (Theia-4869/CDPruner, ``llava/model/llava_arch.py``,
``LlavaMetaForCausalLM.encode_images``): ``S`` = cosine similarity of the post-projector visual
features; relevance = mean over the instruction's tokens of the cosine between each visual token
and each text token, min–max normalised as ``(r − min + 1e-6) / (max − min)``; kernel
``L = diag(r) · S · diag(r)``; then Chen et al.'s fast greedy MAP inference for a DPP (one
Cholesky row ``eᵢ`` per step, ``d²ⱼ −= eᵢⱼ²``, pick ``argmax d²``), the kept set restored to token
order. OpenVINO GenAI's port for Qwen2/2.5/3-VL (``src/cpp/src/visual_language/cdpruner/``:
``relevance_calculator.cpp`` ``RelevanceCalculator::compute``, ``kernel_builder.cpp``
``build_with_normal_pipeline``, ``cdpruner.cpp``'s header and ``apply_pruning``) takes the text
features from the language model's own token embeddings (Qwen has no CLIP text tower), keeps the
sign of the relevance for such models (the official code negates it for LLaVA's CLIP features,
``use_negative_relevance``), mixes in ``relevance_weight`` λ: ``L = λ·rᵢrⱼSᵢⱼ + (1 − λ)·Sᵢⱼ``
(its sample's default 0.5), and prunes a video frame by frame;
``relevance_weight=1`` is the paper's kernel, our default. OpenVINO's split-kernel variant (the
two halves of the tokens selected separately) is not the original and is not reproduced.

What differs here:

- Features: the visual tokens' input embeddings (``embeddings``, the post-merger features, as the
  official post-projector ones), and the text tokens' input embeddings in the same space, as
  OpenVINO does for Qwen; pruning runs at decoder layer K like every method here. Without
  ``embeddings``, layer K's keys with heads concatenated stand in.
- Instruction: the tokens after the item's last candidate (the question and the chat template's
  closing tokens; left padding never reaches there), or ``text_mask``.
- Normalisation per item over its candidates (the official code normalises over the whole
  batch of crops, which would make an item's choice depend on its batch mates).
- The DPP loop is vectorised over the batch (a loop over the budget steps, as the official
  code); each item stops at its own budget. Once no candidate adds a positive marginal gain
  (the kernel's rank is at most the feature width, below some budgets), the rest are taken by
  relevance, where the official code would divide by zero.
- ``frame_ids``/``tokens_per_frame`` (the hook's ``per_frame``): the budget is split equally
  over frames and each frame's DPP runs independently (the kernel is zeroed across frames), as
  OpenVINO prunes a video frame by frame; without them one DPP runs over all visual tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import frames, validate
from ..frames import FrameQuota
from ..request import Request

# A marginal gain at or below this (kernel entries are at most 1) means the kept set already
# spans the candidate: float error, not information.
_EXHAUSTED = 1e-6


def _unit(x: Tensor) -> Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)


def relevance(units: Tensor, candidates: Tensor, text: Tensor) -> Tensor:
    """``[B, N]``: mean cosine to the instruction's tokens, min–max normalised over each item's
    candidates as the official ``(r − min + 1e-6) / (max − min)`` (1 where all are equal)."""
    weights = text.float() / text.sum(-1, keepdim=True).clamp(min=1)
    centre = (units * weights[..., None]).sum(1)  # mean of the text units: mean cos = cos · mean
    raw = (units * centre[:, None, :]).sum(-1)
    low = raw.masked_fill(~candidates, float("inf")).amin(-1, keepdim=True)
    high = raw.masked_fill(~candidates, float("-inf")).amax(-1, keepdim=True)
    spread = (high - low).clamp(min=1e-6)
    return ((raw - low + 1e-6) / spread).masked_fill(~candidates, 0.0)


def select(req: Request, *, embeddings: Tensor | None = None, relevance_weight: float = 1.0,
           text_mask: Tensor | None = None, frame_ids: Tensor | None = None,
           tokens_per_frame: int | None = None) -> Tensor:
    """``budget`` tokens in DPP-greedy order ``[B, width]`` (-1 padded)."""
    weight = validate.number("relevance_weight", relevance_weight, 0.0, 1.0)
    b, h, n, d = req.shape
    if embeddings is None:
        x = req.keys.float().transpose(1, 2).reshape(b, n, h * d)
    else:
        x = validate.token_features("embeddings", embeddings, req.keys)
    if text_mask is None:
        text = req.mask.flip(-1).cumsum(-1).flip(-1) == 0  # after the item's last candidate
    else:
        text = validate.mask(text_mask, b, n, req.keys.device)
    units = _unit(x)
    r = relevance(units, req.mask, text & ~req.mask)
    kernel = units @ units.transpose(1, 2)
    kernel = weight * r[:, :, None] * kernel * r[:, None, :] + (1 - weight) * kernel
    frame_of = frames.resolve(frame_ids, tokens_per_frame, req)
    quota = None
    if frame_of is not None:
        kernel = kernel * (frame_of[:, :, None] == frame_of[:, None, :])
        quota = FrameQuota(frame_of, req.mask, req.budget)
    return _greedy_map(kernel, r, req, quota)


def _greedy_map(kernel: Tensor, quality: Tensor, req: Request, quota: FrameQuota | None) -> Tensor:
    """Fast greedy DPP MAP (Chen et al. 2018, as the official loop), batched; see the module notes."""
    b, n, _ = kernel.shape
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    cis = kernel.new_zeros(b, n, req.width)  # column t: the Cholesky row of the t-th kept token
    available = req.mask.clone()
    kept = torch.full((b, req.width), -1, dtype=torch.long, device=kernel.device)
    for step in range(req.width):
        open_ = available if quota is None else available & quota.open_tokens()
        gain = gains.masked_fill(~open_, float("-inf"))
        best = gain.amax(-1, keepdim=True)
        spent = best <= _EXHAUSTED
        pick = torch.where(spent, quality.masked_fill(~open_, float("-inf")), gain).argmax(-1)
        active = step < req.budget
        kept[:, step] = torch.where(active, pick, -1)
        d2 = gains.gather(1, pick[:, None])
        row = kernel.gather(1, pick[:, None, None].expand(-1, 1, n))[:, 0]
        past = cis[:, :, :step]
        coef = past.gather(1, pick[:, None, None].expand(-1, 1, step)).transpose(1, 2)  # [B, step, 1]
        e = (row - (past @ coef)[..., 0]) / d2.clamp(min=_EXHAUSTED).sqrt()
        e = e.masked_fill(spent | ~active[:, None], 0.0)
        cis[:, :, step] = e
        gains = gains - e.square()
        available.scatter_(1, pick[:, None], available.gather(1, pick[:, None]) & ~active[:, None])
        if quota is not None:
            quota.admit(pick[:, None], active[:, None])
    return kept
