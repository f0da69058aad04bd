"""Pruning inside Hugging Face transformers models: shared mechanics plus one file per family."""

from .base import ItemStats, PruningHandle, enable_pruning

__all__ = ["ItemStats", "PruningHandle", "enable_pruning"]
