"""Public read-outs of the IWP scores, for audits, evaluation and tests."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import validate
from .scoring import HEAD_MODES, combine_heads, pair_features, query_log_magnitude, relevance


def information_magnitude(keys: Any, values: Any, *, queries: Tensor | None = None,
                          per_head: bool = False) -> Tensor:
    """log Mᵢ ``[B, N]`` (whole layer, ``Mᵢ² = Σ_h Mᵢₕ²``) or log Mᵢₕ ``[B, H, N]``, float32.

    Logarithms because ``Mᵢₕ = exp(‖kᵢₕ‖²/(2√d))·‖vᵢₕ‖`` overflows for large keys;
    zero values give -inf. ``queries`` switches to the query-aware score (eq. 10).
    """
    keys, values = validate.keys_values(keys, values)
    if queries is not None:
        queries = validate.queries(queries, keys)
    per = pair_features(keys, values)[1] if queries is None else query_log_magnitude(keys, values, queries)
    return per if per_head else combine_heads(per)


def information_duplication(keys: Any, values: Any, rows: Any, cols: Any, *, heads: str = "layer") -> Tensor:
    """Duplication ``S`` between tokens ``rows`` ``[B, R]`` and ``cols`` ``[B, C]``: ``[B, R, C]`` float32.

    ``heads="layer"``: ``⟨ΔWᵢ,ΔWⱼ⟩/(MᵢMⱼ)`` over the layer; ``"mean"``: the mean over heads
    of ``cos(vᵢₕ,vⱼₕ)·exp(−‖kᵢₕ−kⱼₕ‖²/(2√d))``. Entries of -1 give 0.
    """
    keys, values = validate.keys_values(keys, values)
    b, _, n, _ = keys.shape
    rows = validate.indices(rows, b, n, keys.device)
    cols = validate.indices(cols, b, n, keys.device)
    heads = validate.choice("heads", heads, HEAD_MODES)
    mask = validate.mask(None, b, n, keys.device)
    _, features, _ = relevance(keys, values, mask, queries=None, heads=heads, how="max")
    return features.take(rows).pair(features.take(cols))
