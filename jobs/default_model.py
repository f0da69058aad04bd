"""Where the embedded default model comes from when no --model is given.

Until the trained reference model ships, the default is a tiny Qwen2.5-VL with random
weights, written once into a cache directory and then loaded like any other local model.
Its captions are random words; callers must say so to the user.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "tiny-random-qwen2_5_vl-v1"
DEFAULT_MODEL_NOTE = (
    "NOTE: no --model given, so this run uses the embedded default: a tiny Qwen2.5-VL-architecture "
    "model with RANDOM weights (no trained reference model ships yet). Its captions are random words; "
    "they exercise the pipeline, not the model's quality."
)


def cache_dir() -> Path:
    return Path(os.environ.get("IWP_ANNOTATE_CACHE", Path.home() / ".cache" / "iwp-annotate"))


def default_model_path() -> Path:
    """Build the default model on first use; later calls reuse the saved directory."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if not (target / "config.json").exists():
        from reference.tiny_model import build_tiny_model

        staging = target.with_name(target.name + f".tmp-{os.getpid()}")
        build_tiny_model(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target
