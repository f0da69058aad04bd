"""How many rows fit: a memory budget, and the costs measured on the batches already run.

A decoding row holds its KV cache, which grows by one token per step up to its
`max_new_tokens`; a prefill micro-batch needs activations for all its tokens at once (the
vision encoder's patches and the decoder's sequence). The engine admits a row only when its
whole cache (prompt, pruned at layer K, plus its longest answer) and the prefill that makes it
fit beside the caches already reserved, so decoding never runs out of memory midway.

Costs: KV bytes per token come from the model's widths and are checked against the first real
cache. On CUDA the prefill peak per token is measured (peak allocated minus what was held
before, over the micro-batch's tokens) and the largest seen is kept; torch keeps no allocator
statistics on the CPU, so there the peak is an estimate from the model's widths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

# An estimate of live activation bytes per token and hidden unit during a CPU prefill (a few
# hidden-size copies and the MLP's wide activations); only sizes CPU batches.
_CPU_ACTIVATION_COPIES = 16


def host_available_bytes() -> int:
    """Memory the host can still give (MemAvailable), or all physical memory where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def module_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


@dataclass
class MemoryBudget:
    """Bytes the engine may use beyond the model itself, and the per-token costs it sizes batches with.

    ``limit`` is what the engine may hold for caches and prefill activations:
    `utilization` of the device (or of the host's available memory on the CPU) minus the
    weights, or `limit_bytes` when given (tests and operators who share a device)."""

    limit: int
    kv_per_token: list[int]  # bytes per cached token, for each decoder layer
    prefill_per_token: float
    measured_prefill: bool = False
    kv_checked: bool = False
    peak_seen: int = field(default=0)

    @classmethod
    def for_model(cls, model: nn.Module, utilization: float = 0.9, limit_bytes: int | None = None) -> MemoryBudget:
        device = next(model.parameters()).device
        weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else module_bytes(model)
        if limit_bytes is None:
            total = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else host_available_bytes() + weights
            limit_bytes = int(utilization * total) - weights
        text = model.config.get_text_config()
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        dtype_bytes = next(model.parameters()).element_size()
        per_layer = 2 * heads * head_dim * dtype_bytes
        prefill = _CPU_ACTIVATION_COPIES * (text.hidden_size + text.intermediate_size) * dtype_bytes
        return cls(limit=max(0, limit_bytes), kv_per_token=[per_layer] * text.num_hidden_layers,
                   prefill_per_token=float(prefill))

    def row_bytes(self, lengths: tuple[int, int], split: int, new_tokens: int) -> int:
        """The whole cache of one row: `lengths` = (tokens in layers < split, tokens in layers >= split)
        after prefill, each plus the row's longest answer."""
        below = sum(self.kv_per_token[:split]) * (lengths[0] + new_tokens)
        above = sum(self.kv_per_token[split:]) * (lengths[1] + new_tokens)
        return below + above

    def prefill_bytes(self, tokens: int) -> int:
        return int(self.prefill_per_token * tokens)

    def observe_prefill(self, tokens: int, peak_bytes: int) -> None:
        """A CUDA micro-batch's measured activation peak: the estimate becomes the largest seen per token."""
        if tokens <= 0 or peak_bytes <= 0:
            return
        per_token = peak_bytes / tokens
        self.prefill_per_token = max(per_token, self.prefill_per_token if self.measured_prefill else 0.0)
        self.measured_prefill = True
        self.peak_seen = max(self.peak_seen, peak_bytes)

    def observe_cache(self, per_layer_bytes: list[int], per_layer_tokens: list[int]) -> None:
        """The first real cache's bytes per token replace the widths' figure (quantised or odd caches differ)."""
        if self.kv_checked:
            return
        self.kv_per_token = [b // max(t, 1) for b, t in zip(per_layer_bytes, per_layer_tokens)]
        self.kv_checked = True
