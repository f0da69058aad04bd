"""Argument checks shared by the public entry points.

Every refusal is a ``ValueError`` that names the argument, what was expected and
what arrived, so a caller can fix the call without reading this package.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return f"{type(x).__name__} {x!r}"


def float_tensor(name: str, x: Any, shape: str, ndim: int) -> Tensor:
    """A finite floating-point tensor with ``ndim`` dimensions, none of them empty."""
    if not isinstance(x, Tensor) or x.dtype not in _FLOATS or x.dim() != ndim:
        raise ValueError(f"{name} must be a float tensor of shape {shape}; got {_describe(x)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not have an empty dimension; got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean the inputs before pruning")
    return x


def keys_values(keys: Any, values: Any) -> tuple[Tensor, Tensor]:
    """``keys`` and ``values`` as ``[B, H, N, D]`` tensors that agree on B, H, N and device."""
    keys = float_tensor("keys", keys, "[B, H, N, D]", 4)
    values = float_tensor("values", values, "[B, H, N, D]", 4)
    if keys.shape[:3] != values.shape[:3] or keys.device != values.device:
        raise ValueError(
            "keys and values must share batch, head and token dimensions and device; "
            f"got {_describe(keys)} and {_describe(values)}"
        )
    return keys, values


def mask(mask: Any, batch: int, tokens: int, device: torch.device) -> Tensor:
    """The candidate mask ``[B, N]`` (all tokens when ``None``)."""
    if mask is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch, tokens):
        raise ValueError(f"mask must be a bool tensor of shape [{batch}, {tokens}]; got {_describe(mask)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but keys are on {device}")
    return mask


def budget(budget: Any, batch: int, device: torch.device) -> Tensor:
    """Per-item budgets ``LongTensor[B]`` from an int or an integer tensor of shape ``[B]``."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        out = torch.full((batch,), budget, dtype=torch.long, device=device)
    elif isinstance(budget, Tensor) and not budget.is_floating_point() and not budget.is_complex() \
            and budget.dtype != torch.bool and tuple(budget.shape) == (batch,):
        out = budget.to(device=device, dtype=torch.long)
    else:
        raise ValueError(f"budget must be an int or an integer tensor of shape [{batch}]; got {_describe(budget)}")
    if bool((out < 0).any()):
        raise ValueError(f"budget must not be negative; got {budget!r}")
    return out


def non_negative_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int; got {_describe(value)}")
    return value


def positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {_describe(value)}")
    return value


def number(name: str, value: Any, low: float, high: float) -> float:
    """A real number in the closed interval ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}]; got {_describe(value)}")
    return float(value)


def choice(name: str, value: Any, allowed: Collection[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}; got {value!r}")
    return value


def queries(queries: Any, keys: Tensor) -> Tensor:
    """Queries ``[B, Hq, Tq, D]`` whose heads group evenly onto the keys' KV heads."""
    q = float_tensor("queries", queries, "[B, Hq, Tq, D]", 4)
    b, h, _, d = keys.shape
    if q.shape[0] != b or q.shape[3] != d or q.shape[1] % h != 0 or q.device != keys.device:
        raise ValueError(
            f"queries must have shape [{b}, Hq, Tq, {d}] with Hq a multiple of the {h} KV heads, "
            f"on {keys.device}; got {_describe(q)}"
        )
    return q


def token_features(name: str, x: Any, keys: Tensor) -> Tensor:
    """Per-token features ``[B, N, E]`` aligned with the keys' tokens."""
    f = float_tensor(name, x, "[B, N, E]", 3)
    b, _, n, _ = keys.shape
    if f.shape[:2] != (b, n) or f.device != keys.device:
        raise ValueError(f"{name} must have shape [{b}, {n}, E] on {keys.device}; got {_describe(f)}")
    return f


def indices(indices: Any, batch: int, tokens: int, device: torch.device) -> Tensor:
    """Kept-token indices ``LongTensor[B, K]`` in ``[0, N)`` or ``-1`` (padding)."""
    if not isinstance(indices, Tensor) or indices.dtype != torch.long or indices.dim() != 2 \
            or indices.shape[0] != batch or indices.device != device:
        raise ValueError(f"indices must be a LongTensor of shape [{batch}, K] on {device}; got {_describe(indices)}")
    if bool(((indices < -1) | (indices >= tokens)).any()):
        raise ValueError(f"indices must lie in [0, {tokens}) or be -1 (padding)")
    return indices


def like_keys(name: str, x: Any, keys: Tensor) -> Tensor:
    """A second set of keys ``[B, H, N, D]`` (another layer's) of the same shape as ``keys``."""
    k = float_tensor(name, x, "[B, H, N, D]", 4)
    if k.shape != keys.shape or k.device != keys.device:
        raise ValueError(f"{name} must have the keys' shape {list(keys.shape)} on {keys.device}; got {_describe(k)}")
    return k


def padding_mask(x: Any, keys: Tensor) -> Tensor:
    """``attention_mask`` ``[B, N]``: True for real tokens, False for a batch's padding (default: all real)."""
    b, _, n, _ = keys.shape
    if x is None:
        return torch.ones(b, n, dtype=torch.bool, device=keys.device)
    if not isinstance(x, Tensor) or x.dtype != torch.bool or tuple(x.shape) != (b, n) or x.device != keys.device:
        raise ValueError(f"attention_mask must be a bool tensor of shape [{b}, {n}] on {keys.device}; got {_describe(x)}")
    return x
