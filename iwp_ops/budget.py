"""``adaptive_budget``: the fewest IWP tokens that keep a target weight fidelity."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import validate
from .fidelity import gram_features, prefix_fidelity
from .methods import iwp
from .request import build
from .select import check_options

_BUDGET_DEPENDENT = ("frame_ids", "tokens_per_frame")


def adaptive_budget(keys: Tensor, values: Tensor, target: float, *, min_tokens: int, max_tokens: int,
                    mask: Tensor | None = None, **options: Any) -> Tensor:
    """Per item, the smallest budget in ``[min_tokens, max_tokens]`` whose IWP selection
    reaches ``weight_fidelity >= target``; ``max_tokens`` where none does, ``min_tokens``
    for items without candidates. ``LongTensor[B]``.

    One PC-MMR run up to ``max_tokens`` gives the admission order, whose prefixes are
    exactly the selections of every smaller budget (the chunk schedule does not
    depend on the budget); one Gram pass then scores all prefixes at once, so the
    answer is the true minimum, with no assumption that fidelity grows with the
    budget. ``options`` are IWP's, except the per-frame ones (their quotas depend on
    the budget, which breaks the prefix property). Cost: like ``weight_fidelity``,
    ‖W_N‖² needs every pair of candidates (O(N²·H·d) time, O(N) memory per row block).
    """
    target = validate.number("target", target, 0.0, 1.0)
    if target <= 0:
        raise ValueError(f"target must be in (0, 1]; got {target!r}")
    min_tokens = validate.non_negative_int("min_tokens", min_tokens)
    max_tokens = validate.non_negative_int("max_tokens", max_tokens)
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})")
    check_options("iwp", iwp.select, options)
    refused = sorted(set(options) & set(_BUDGET_DEPENDENT))
    if refused:
        raise ValueError(f"adaptive_budget does not take {', '.join(refused)}: per-frame quotas depend on the budget")
    req, _ = build(keys, values, max_tokens, mask)
    b = req.budget.shape[0]
    if req.width == 0:
        return torch.full((b,), min_tokens, dtype=torch.long, device=req.keys.device)
    order = iwp.select(req, **options)
    fidelity = prefix_fidelity(gram_features(req.keys, req.values, req.mask, "softmax"), order)
    sizes = torch.arange(1, req.width + 1, device=order.device)
    reached = (fidelity >= target) & (sizes >= min_tokens)
    first = torch.where(reached.any(-1), sizes[reached.int().argmax(-1)], max_tokens)
    if min_tokens > req.width:
        first = torch.where(fidelity[:, -1] >= target, min_tokens, max_tokens)
    return torch.where(req.budget > 0, first, min_tokens)
