"""Move dicts of arrays between stages as bytes (safetensors: no pickle, any block format)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load, save


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    return load(blob)
