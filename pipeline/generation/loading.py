"""The one way a model is loaded for a job, an evaluation or a benchmark."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ModelConfig, PruningConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_model(cfg: ModelConfig) -> nn.Module:
    """`from_pretrained` on a local directory: no network, remote code only if asked; then
    `prepare_vision`."""
    from transformers import AutoModelForImageTextToText

    device = resolve_device(cfg.device)
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.path,
        dtype=resolve_dtype(cfg.dtype, device),
        local_files_only=True,
        trust_remote_code=cfg.trust_remote_code,
    )
    prepare_vision(model, cfg.compile_vision, device)
    return model.to(device).eval()


def prepare_vision(model: nn.Module, compile_vision: str, device: torch.device) -> None:
    """The vision-tower changes every job's model gets after loading; a benchmark that builds its
    model in memory calls this too, so that it times the model as jobs run it."""
    from iwp_ops import compile_vision_blocks, flatten_patch_embedding, pack_vision_attention
    from iwp_ops.models.vision_compile import compile_wanted

    pack_vision_attention(model)
    flatten_patch_embedding(model)
    if compile_wanted(compile_vision, device):
        compile_vision_blocks(model)


def enable_job_pruning(model: nn.Module, cfg: PruningConfig):
    """Turn on visual-token pruning in the loaded model, unless the job asks for none."""
    if cfg.method == "none":
        return None
    from iwp_ops import enable_pruning

    return enable_pruning(
        model, method=cfg.method, keep_ratio=cfg.keep_ratio, layer=cfg.layer,
        fidelity_target=cfg.fidelity_target, **cfg.options,
    )
