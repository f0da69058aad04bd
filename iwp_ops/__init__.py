"""Visual-token pruning as implicit-weight pruning (IWP), with peer methods, in pure PyTorch.

Public API:

- ``select_tokens(keys, values, budget, *, method="iwp", mask=None, **options)``
- ``weight_fidelity(keys, values, indices, *, mask=None, kernel="softmax")``
- ``adaptive_budget(keys, values, target, *, min_tokens, max_tokens, mask=None, **options)``
- ``visionzip_merged_features(keys, values, budget, hidden, *, queries, mask=None, ...)``
- ``information_magnitude(keys, values, *, queries=None, per_head=False)`` (log space)
- ``information_duplication(keys, values, rows, cols, *, heads="layer")``
- ``enable_pruning(model, method="iwp", keep_ratio=0.222, layer=2, **options)``: prune inside a
  loaded transformers VLM (``iwp_ops.models``; the only part that touches transformers).
- ``pack_vision_attention(model)``: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision encoder on SDPA runs one
  attention call per block instead of one per window or frame (the unpruned part of the prefill).
- ``flatten_patch_embedding(model)``: their patch embedding as one matrix product, not a Conv3d.
- ``compile_vision_blocks(model)``: their vision blocks under ``torch.compile`` (fuses the
  elementwise work; compiled in each process, at the first video and the first image).
- ``METHODS``: the names ``select_tokens`` accepts for ``method``.
"""

from .budget import adaptive_budget
from .fidelity import weight_fidelity
from .methods import REGISTRY as _REGISTRY
from .methods.visionzip import merged_features as visionzip_merged_features
from .models import (ItemStats, PruningHandle, compile_vision_blocks, enable_pruning, flatten_patch_embedding,
                     pack_vision_attention)
from .scores import information_duplication, information_magnitude
from .select import select_tokens

METHODS: tuple[str, ...] = tuple(_REGISTRY)

__all__ = [
    "METHODS",
    "ItemStats",
    "PruningHandle",
    "adaptive_budget",
    "compile_vision_blocks",
    "enable_pruning",
    "flatten_patch_embedding",
    "information_duplication",
    "information_magnitude",
    "pack_vision_attention",
    "select_tokens",
    "visionzip_merged_features",
    "weight_fidelity",
]
