"""The Qwen vision encoder's blocks under ``torch.compile``.

After packing (`vision_attention`) a large encoder spends much of its GPU time outside its matrix
products: RMSNorm and the rotary embedding run in fp32 as a dozen separate elementwise kernels
each, and SiLU-and-multiply as three. Compiling the blocks fuses them (the gain and the compile
time per process are in docs/benchmarks.md, from `benchmarks/profile_vision.py --compile`).
Shapes are compiled as dynamic, so later frame counts and sizes reuse the graphs: a process
compiles at its first video and at its first image. Past torch's recompile limit dynamo runs
the blocks uncompiled, with a warning.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import qwen_vision_tower

SETTINGS = ("auto", "on", "off")


def compile_wanted(setting: str, device: torch.device) -> bool:
    """``auto|on|off`` as the pipeline's ``model.compile_vision`` and the benchmarks read it: auto
    compiles on CUDA only, since on a CPU each model actor would pay the compilation to save
    about a tenth of its encoder's time."""
    if setting not in SETTINGS:
        raise ValueError(f"vision compile setting must be one of {SETTINGS}, got {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def compile_vision_blocks(model: nn.Module) -> bool:
    """Compile each block of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision encoder in place (the
    weights and state dict are untouched); False, changing nothing, for other models."""
    blocks = getattr(qwen_vision_tower(model), "blocks", None)
    if blocks is None:
        return False
    for block in blocks:
        block.compile(dynamic=True)
    return True
