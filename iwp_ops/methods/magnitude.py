"""Magnitude-only: IWP without the duplication term (the paper's ablation, arXiv 2604.00757).

Keeps the tokens of largest information magnitude: PC-MMR with ``lam=1`` and its in-chunk
suppression off (``dup_threshold`` above 1), with IWP's defaults for everything else
(``heads="mean"``, ``normalise``), so the only difference from ``iwp`` is the duplication
term. The paper shows this collapses onto near-duplicates of heavy tokens.
"""

from __future__ import annotations

from torch import Tensor

from .. import validate
from ..indices import keep_top
from ..request import Request
from ..scoring import HEAD_MODES, NORMALISATIONS, relevance


def select(req: Request, *, heads: str = "mean", normalise: str = "log_minmax",
           queries: Tensor | None = None) -> Tensor:
    """Top-``budget`` candidates by normalised magnitude m̂ (options as for ``iwp``); zero-ΔW tokens last."""
    heads = validate.choice("heads", heads, HEAD_MODES)
    normalise = validate.choice("normalise", normalise, NORMALISATIONS)
    if queries is not None:
        queries = validate.queries(queries, req.keys)
    mhat, _, informative = relevance(req.keys, req.values, req.mask, queries=queries, heads=heads, how=normalise)
    return keep_top(mhat.masked_fill(~informative, -1.0), req)
