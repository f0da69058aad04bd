"""Registry of selection methods: name → ``fn(request, **options) -> LongTensor[B, width]``.

Each function returns, per item, exactly ``request.budget`` valid indices in any
order followed by -1; ``select_tokens`` puts them in ascending order.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from . import dart, divprune, fastv, iwp, magnitude, random, uniform, visionzip

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
}


def lookup(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]

