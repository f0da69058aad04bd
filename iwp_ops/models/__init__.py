"""Pruning inside Hugging Face transformers models: the family table (`families`), the settings
(`settings`), the hook that patches a model (`handle`), the layer-K work (`layer_k`), and the Qwen
vision-encoder optimisations (`vision_attention`, `vision_patch_embed`, `vision_compile`)."""

from .handle import ItemStats, PruningHandle, enable_pruning
from .settings import PruningSettings
from .vision_attention import pack_vision_attention
from .vision_compile import compile_vision_blocks
from .vision_patch_embed import flatten_patch_embedding

__all__ = ["ItemStats", "PruningHandle", "PruningSettings", "compile_vision_blocks", "enable_pruning",
           "flatten_patch_embedding", "pack_vision_attention"]
