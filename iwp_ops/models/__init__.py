"""Pruning inside Hugging Face transformers models: shared mechanics plus one file per family."""

from .base import ItemStats, PruningHandle, enable_pruning
from .vision_attention import pack_vision_attention
from .vision_compile import compile_vision_blocks
from .vision_patch_embed import flatten_patch_embedding

__all__ = ["ItemStats", "PruningHandle", "compile_vision_blocks", "enable_pruning", "flatten_patch_embedding",
           "pack_vision_attention"]
