"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL patch embedding as one matrix product instead of a 3-D convolution.

The processor hands the vision encoder its patches already flattened, ``[patches, C·T·P·P]``.
transformers reshapes them to ``[patches, C, T, P, P]`` and runs a Conv3d whose kernel equals its
stride, so each patch gives exactly one output: the same linear map as a product with the kernel
viewed as ``[D, C·T·P·P]``. The convolution routines do not exploit that, and on a CPU the Conv3d
is a sizeable share of a small encoder's time (`benchmarks/profile_vision.py`, docs/benchmarks.md).
The weights are untouched (same parameter, same state dict): only the module's forward changes.
"""

from __future__ import annotations

import types

import torch.nn.functional as F
from torch import Tensor, nn

from .families import qwen_vision_tower


def _linear_forward(self: nn.Module, hidden_states: Tensor) -> Tensor:
    weight = self.proj.weight
    flat = weight.reshape(weight.shape[0], -1)
    return F.linear(hidden_states.reshape(-1, flat.shape[1]).to(weight.dtype), flat, self.proj.bias)


def flatten_patch_embedding(model: nn.Module) -> bool:
    """Run a Qwen2-VL / Qwen2.5-VL / Qwen3-VL patch embedding as a matrix product; False (nothing changed) for
    other models, or for a patch embedding that is not a Conv3d with stride equal to its kernel."""
    embed = getattr(qwen_vision_tower(model), "patch_embed", None)
    proj = getattr(embed, "proj", None)
    if not isinstance(proj, nn.Conv3d) \
            or tuple(proj.kernel_size) != tuple(proj.stride) or any(proj.padding) or proj.groups != 1:
        return False
    embed.forward = types.MethodType(_linear_forward, embed)
    return True
