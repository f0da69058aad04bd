"""IWP: token pruning as implicit-weight pruning (arXiv 2604.00757), selected by PC-MMR.

Defaults (the paper's values, appendix E.6, were not retrievable, so each is a reasoned
starting point, kept where our validation screens did not clearly improve on it;
docs/accuracy.md has the screens and their numbers):

- ``lam=0.5``: relevance and duplication weighted equally, the usual MMR midpoint. It is
  IWP's one knob in the evaluation's equal tuning budget (every method tunes one on val).
- ``normalise="log_minmax"``: magnitudes are exponential in ‖k‖², so a linear M/max M
  would leave all but a few tokens near 0 and let duplication alone decide.
- ``chunk=None``: the progressive schedule 1, 2, 4, …, 64, then 64 per step — the
  first, most important tokens are chosen exactly greedily, later ones in chunks.
- ``pool_factor=2``, ``dup_threshold=0.9``: each step draws 2c candidates and never
  admits two whose similarity S reaches 0.9 together (values above 1 disable this).
- ``heads="mean"``: per-head magnitudes and duplications averaged over the KV heads, so a
  head whose keys are large cannot decide alone; ``"layer"`` scores the layer's
  block-diagonal implicit weight as one. ``magnitude`` uses the same setting, so that it
  differs from IWP by the duplication term only.
- ``queries=None``: query-free magnitude (eq. 8); pass the last text tokens' queries
  ``[B, Hq, Tq, D]`` for the query-aware score (eq. 10).

Video: all frames' tokens go through one selector, so temporal duplicates are
suppressed across frames; ``frame_ids=[B, N]`` or ``tokens_per_frame`` additionally
splits the budget equally over frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .. import frames, validate
from ..frames import FrameQuota
from ..pcmmr import admission_order
from ..request import Request
from ..scoring import HEAD_MODES, NORMALISATIONS, relevance


def _chunk(chunk: Any) -> int | Sequence[int] | None:
    if chunk is None:
        return None
    if isinstance(chunk, int):
        return validate.positive_int("chunk", chunk)
    if isinstance(chunk, Sequence) and len(chunk) > 0:
        return tuple(validate.positive_int("chunk entry", c) for c in chunk)
    raise ValueError(f"chunk must be None, a positive int or a non-empty sequence of them; got {chunk!r}")


def select(req: Request, *, lam: float = 0.5, chunk: int | Sequence[int] | None = None,
           pool_factor: int = 2, dup_threshold: float = 0.9, normalise: str = "log_minmax",
           heads: str = "mean", queries: Tensor | None = None, frame_ids: Tensor | None = None,
           tokens_per_frame: int | None = None, cuda_graphs: bool = True) -> Tensor:
    """Kept tokens in admission order ``[B, width]`` (-1 padded); ``cuda_graphs`` see `pcmmr.admission_order`."""
    lam = validate.number("lam", lam, 0.0, 1.0)
    schedule = _chunk(chunk)
    pool_factor = validate.positive_int("pool_factor", pool_factor)
    dup_threshold = validate.number("dup_threshold", dup_threshold, 0.0, math.inf)
    normalise = validate.choice("normalise", normalise, NORMALISATIONS)
    heads = validate.choice("heads", heads, HEAD_MODES)
    if queries is not None:
        queries = validate.queries(queries, req.keys)
    frame_of = frames.resolve(frame_ids, tokens_per_frame, req)
    quota = None if frame_of is None else FrameQuota(frame_of, req.mask, req.budget)
    mhat, features, informative = relevance(req.keys, req.values, req.mask, queries=queries, heads=heads,
                                            how=normalise)
    return admission_order(features, mhat, informative, req.mask, req.budget, req.width, lam=lam, chunk=schedule,
                           pool_factor=pool_factor, dup_threshold=dup_threshold, frames=quota,
                           cuda_graphs=bool(cuda_graphs))
