"""One attention call per vision block instead of one per segment, for Qwen2-VL / Qwen2.5-VL / Qwen3-VL with SDPA.

The vision encoder is not pruned, so its speed bounds what pruning can gain. transformers
runs its variable-length attention (Qwen2.5-VL: windows of up to 8x8 patches, and whole
frames in the full-attention blocks; Qwen2-VL and Qwen3-VL: whole frames) as one call per segment
unless FlashAttention is installed: thousands of small calls per forward for a video, which
made the encoder the largest share of a 7B prefill (docs/benchmarks.md). Here the segments are
gathered into one padded batch ``[segments, heads, longest, dim]`` with a key-padding mask
and go through a single ``scaled_dot_product_attention``; the result is the same
attention (each segment still sees only itself). On a CUDA GPU (sm80+, half precision) the
segments go as they are, with no padding and no mask, to torch's variable-length attention
(``torch.nn.attention.varlen``): FlashAttention 2, or cuDNN where torch prefers it (torch 2.14
on sm90/sm100 with cuDNN 9.18+ for segments over 128 tokens); ``pack_vision_attention(model,
varlen=False)`` keeps CUDA inputs on the padded call too (the benchmarks compare the two).
Neither path reads a value back to the host, so the blocks of an encoder launch without waiting
on the GPU.

It plugs in through transformers' own ``AttentionInterface``: the vision attention modules
hand ``cu_seqlens`` to one call when the implementation's name contains "flash", so the
function is registered under such a name and set on the vision config only; the language
model keeps its own implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .families import qwen_vision_tower

NAME = "iwp_packed_sdpa_flash_api"  # the variable-length kernel where it applies, else the padded call
PADDED_NAME = "iwp_padded_sdpa_flash_api"  # the padded call everywhere


try:
    from torch.nn.attention.varlen import varlen_attn as _VARLEN_ATTN
except ImportError:  # torch before 2.10
    _VARLEN_ATTN = None


def _varlen_kernel(device: torch.device) -> Callable[..., Tensor] | None:
    """torch's variable-length attention where this torch has it and the GPU runs FlashAttention 2
    (compute capability 8.0 or newer). Not cached: torch caches the device's properties, and a
    cache of ours would be one more thing for torch.compile to trace around."""
    if _VARLEN_ATTN is None or torch.version.hip is not None:
        return None
    return _VARLEN_ATTN if torch.cuda.get_device_capability(device)[0] >= 8 else None


def packed_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None,
                     scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: Tensor | None = None,
                     max_length_q: int | None = None, varlen: bool = True, **_: Any) -> tuple[Tensor, None]:
    """``query/key/value`` ``[1, H, S, D]`` holding consecutive segments delimited by ``cu_seq_lens_q``;
    returns ``[1, S, H, D]`` (the flash convention the caller reshapes). ``varlen=False`` never
    takes the variable-length kernel."""
    if cu_seq_lens_q is None:
        raise ValueError("packed vision attention needs cu_seq_lens_q (segment boundaries)")
    heads, total, dim = query.shape[1:]
    lengths = cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    longest = int(max_length_q) if max_length_q is not None else int(lengths.max())
    kernel = _varlen_kernel(query.device) if varlen and query.is_cuda else None
    if kernel is not None and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0 \
            and dim % 8 == 0 and dim <= 256 and (scaling is None or math.isclose(scaling, dim ** -0.5)):
        cu = cu_seq_lens_q.to(torch.int32)
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))
        return kernel(q, k, v, cu, cu, longest, longest)[None], None
    slot = torch.arange(longest, device=query.device)
    valid = slot < lengths[:, None]
    index = torch.where(valid, cu_seq_lens_q[:-1, None] + slot, total)

    def pack(x: Tensor) -> Tensor:
        padded = torch.cat([x[0], x.new_zeros(heads, 1, dim)], dim=1)
        return padded[:, index].transpose(0, 1)

    out = F.scaled_dot_product_attention(pack(query), pack(key), pack(value), attn_mask=valid[:, None, None, :],
                                         dropout_p=dropout, scale=scaling)
    # Each token's row in the padded output, found without a boolean mask (whose size the host
    # would have to wait for).
    token = torch.arange(total, device=query.device, dtype=cu_seq_lens_q.dtype)
    segment = torch.searchsorted(cu_seq_lens_q[1:].contiguous(), token, right=True)
    row = segment * longest + token - cu_seq_lens_q[segment]
    return out.transpose(1, 2).reshape(-1, heads, dim)[row][None], None


def pack_vision_attention(model: nn.Module, varlen: bool = True) -> bool:
    """Route a Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision encoder that runs SDPA through `packed_attention`.

    Returns False (and changes nothing) for other models and other attention implementations:
    FlashAttention already takes the segments in one call, and eager is kept for debugging.
    """
    from transformers import AttentionInterface

    config = getattr(getattr(model, "config", None), "vision_config", None)
    if qwen_vision_tower(model) is None or config is None \
            or config._attn_implementation not in ("sdpa", NAME, PADDED_NAME):
        return False
    AttentionInterface.register(NAME, packed_attention)
    AttentionInterface.register(PADDED_NAME, partial(packed_attention, varlen=False))
    config._attn_implementation = NAME if varlen else PADDED_NAME
    return True
