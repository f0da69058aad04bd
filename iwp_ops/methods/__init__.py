"""Registry of selection methods: name → ``fn(request, **options) -> LongTensor[B, width]``.

Each function returns, per item, exactly ``request.budget`` valid indices in any
order followed by -1; ``select_tokens`` puts them in ascending order. ``LAYER_INPUTS`` says
what the pruning hook inside a model must give a method beyond layer K's keys and values
(one table, so the hook names no method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from . import cdpruner, dart, divprune, evs, fastv, iwp, magnitude, random, uniform, visionzip

Method = Callable[..., Tensor]

REGISTRY: dict[str, Method] = {
    "iwp": iwp.select,
    "magnitude": magnitude.select,
    "random": random.select,
    "uniform": uniform.select,
    "fastv": fastv.select,
    "divprune": divprune.select,
    "dart": dart.select,
    "visionzip": visionzip.select,
    "evs": evs.select,
    "cdpruner": cdpruner.select,
}


@dataclass(frozen=True)
class LayerInputs:
    """What a method reads from the model besides layer K's keys and values.

    ``prior_layer``: its ``queries`` and ``prior_keys`` come from the hook's attention layer
    (default K−1, as FastV and DART read it). ``all_queries``: queries of every token, not the
    last prompt tokens. ``final_norm``: ``hidden`` is layer K's input through the model's final
    norm (DART's features), not through layer K's input norm. ``merge``: selects and rewrites
    layer K's input hidden states (VisionZip's contextual tokens). ``frames``: the method reads
    each token's frame as structure (EVS's temporal steps), so the hook passes ``frame_ids``
    whenever the family knows them, not only for per-frame budgets (``per_frame``).
    """

    prior_layer: bool = False
    all_queries: bool = False
    final_norm: bool = False
    merge: Callable[..., tuple[Tensor, Tensor]] | None = None
    frames: bool = False


LAYER_INPUTS: dict[str, LayerInputs] = {
    "fastv": LayerInputs(prior_layer=True),
    "dart": LayerInputs(prior_layer=True, final_norm=True),
    "visionzip": LayerInputs(all_queries=True, merge=visionzip.select_and_merge),
    "evs": LayerInputs(frames=True),
}


def lookup(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def layer_inputs(name: str) -> LayerInputs:
    return LAYER_INPUTS.get(name, LayerInputs())
