"""Where the embedded default model comes from when no --model is given.

The default is the reference model shipped in `reference/model/`: a small Qwen2.5-VL-architecture
model trained (by `python -m reference.train`) on the procedural scenes of `scenes.scene`.
It describes coloured shapes on textured backgrounds, nothing else; callers say so to the user.
"""

from __future__ import annotations

import os
from pathlib import Path

import reference

DEFAULT_MODEL_NOTE = (
    "NOTE: no --model given, so this run uses the embedded default: a small Qwen2.5-VL-architecture model "
    "trained only on generated scenes of coloured shapes (reference/model). It captions such scenes; "
    "on other media its captions are meaningless."
)


SHIPPED_MODELS = ("model", "model-training-free")  # the demo default; the one methods are compared on


def shipped_model_path(name: str = "model") -> Path:
    """A shipped model directory of `reference/`; fails plainly if an installation left it out."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"{name!r} is not a shipped model; those are {', '.join(SHIPPED_MODELS)}")
    target = Path(reference.__file__).resolve().parent / name
    if not (target / "config.json").exists():
        raise FileNotFoundError(f"the shipped reference model is missing: {target} has no config.json")
    return target


def default_model_path() -> Path:
    """The embedded default: the pruning-aware demo model."""
    return shipped_model_path("model")


def resolve_model(model: str | None) -> str:
    """A local model directory as an absolute path; None means the embedded default (said so on the console)."""
    if model is None:
        print(DEFAULT_MODEL_NOTE, flush=True)
        return str(default_model_path())
    if not os.path.isdir(model):
        raise FileNotFoundError(f"--model {model!r} is not a local model directory")
    return os.path.abspath(model)
