"""Pruning inside Hugging Face transformers models: shared mechanics plus one file per family."""

from .base import ItemStats, PruningHandle, enable_pruning
from .vision_attention import pack_vision_attention

__all__ = ["ItemStats", "PruningHandle", "enable_pruning", "pack_vision_attention"]
