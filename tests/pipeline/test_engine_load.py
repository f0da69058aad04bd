"""The model stage loads the model as the job asks: packed vision attention and a flat patch
embedding always, compiled vision blocks on CUDA unless turned off, or anywhere when turned on."""

from __future__ import annotations

import pytest

from pipeline.generation import loading
from pipeline.config import ModelConfig, PipelineConfig
from iwp_ops.models.vision_attention import NAME


@pytest.mark.parametrize("setting, compiled", [("auto", False), ("on", True), ("off", False)])
def test_vision_blocks_are_compiled_as_the_job_asks(tiny_model_dir, setting, compiled):
    cfg = PipelineConfig(input="m", output="o", model=ModelConfig(path=str(tiny_model_dir), device="cpu",
                                                                  compile_vision=setting))
    model = loading.load_model(cfg.model)
    visual = model.model.visual
    assert visual.config._attn_implementation == NAME
    assert visual.patch_embed.forward.__func__ is not type(visual.patch_embed).forward
    assert [block._compiled_call_impl is not None for block in visual.blocks] == [compiled] * len(visual.blocks)


def test_auto_compiles_on_cuda(monkeypatch, tiny_model_dir):
    """Where CUDA is the device, auto compiles; the move itself is skipped here (no GPU)."""
    import torch
    from transformers import PreTrainedModel

    monkeypatch.setattr(loading, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(loading, "resolve_dtype", lambda name, device: torch.float32)
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: self)
    model = loading.load_model(ModelConfig(path=str(tiny_model_dir)))
    assert all(block._compiled_call_impl is not None for block in model.model.visual.blocks)
