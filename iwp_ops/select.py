"""``select_tokens``: the single entry point over all selection methods."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import Tensor

from .indices import ascending
from .methods import lookup
from .request import Request, build


@functools.cache
def method_inputs(fn: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """A method's keyword options in order, and those it cannot run without. Cached: the model
    hook asks on every call, and a signature never changes."""
    accepted = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return tuple(p.name for p in accepted), frozenset(p.name for p in accepted if p.default is p.empty)


def check_options(method: str, fn: Any, options: dict[str, Any], supplied: frozenset[str] = frozenset()) -> None:
    """Refuse options the method does not take and demand the inputs it needs, naming them;
    `supplied` names inputs the caller provides later (the model hook's queries, say)."""
    accepted, required = method_inputs(fn)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        names = ", ".join(accepted) or "none"
        raise ValueError(f"method {method!r} does not take option(s) {', '.join(unknown)}; it accepts: {names}")
    missing = [name for name in accepted if name in required and name not in options and name not in supplied]
    if missing:
        raise ValueError(f"method {method!r} needs the keyword argument(s) {', '.join(missing)}")


def select_tokens(keys: Tensor, values: Tensor, budget: int | Tensor, *, method: str = "iwp",
                  mask: Tensor | None = None, **options: Any) -> Tensor:
    """Indices of the tokens to keep, ``LongTensor[B, max(budget)]``.

    ``keys``/``values`` are ``[B, H, N, D]`` (keys after rotary embedding, KV heads);
    ``mask`` ``[B, N]`` marks candidate tokens (default: all). ``budget`` is an int or
    a ``LongTensor[B]``. Each row holds ``min(budget, candidates)`` unique candidate
    indices in ascending order, then -1 up to the width. ``method`` picks one of
    ``iwp`` (default), ``magnitude``, ``random``, ``uniform``, ``fastv``,
    ``divprune``, ``dart``, ``visionzip``, ``evs``, ``cdpruner``; ``options`` go to it (see each method's
    docstring). Bad inputs raise ``ValueError``.
    """
    fn = lookup(method)
    check_options(method, fn, options)
    req, width = build(keys, values, budget, mask)
    return _run(fn, req, width, options)


def select_trusted(keys: Tensor, values: Tensor, budget: Tensor, width: int, mask: Tensor, *, method: str = "iwp",
                   **options: Any) -> Tensor:
    """`select_tokens` for inputs known good, with nothing read back from the device to check
    them: a model's own keys and values, a ``[B]`` budget already capped at each item's candidate
    count, and its maximum ``width`` known on the host (`enable_pruning` computes budgets there
    from the token counts it reads at the start of the call)."""
    fn = lookup(method)
    check_options(method, fn, options)
    return _run(fn, Request(keys, values, mask, budget, width), width, options)


def _run(fn: Any, req: Request, width: int, options: dict[str, Any]) -> Tensor:
    if req.width == 0:
        return req.budget.new_full((req.budget.shape[0], width), -1)
    return ascending(fn(req, **options), width, req.shape[2])
