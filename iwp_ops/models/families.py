"""The family contract: what pruning needs to know about a model, declared per family.

All supported families follow the same transformers 5.x layout (`model.model.language_model`
holding `.layers`, visual placeholder ids `image_token_id` / `video_token_id` in the config,
decoder layers called with `position_embeddings` and `attention_mask` keywords), so the
mechanics in `base.py` are shared and a family module declares its architectures and how
positions behave for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    deepstack: bool = False  # the text model adds vision features at the visual positions of its first layers

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.architectures

    @staticmethod
    def language_model(model: nn.Module) -> nn.Module:
        return model.model.language_model

    @staticmethod
    def visual_token_ids(model: nn.Module) -> list[int]:
        return [model.config.image_token_id, model.config.video_token_id]


def family_of(model: nn.Module) -> Family:
    from .llava_onevision import FAMILY as LLAVA_ONEVISION
    from .qwen2_vl import FAMILY as QWEN2_VL
    from .qwen3_vl import FAMILY as QWEN3_VL

    families = (QWEN2_VL, QWEN3_VL, LLAVA_ONEVISION)
    for family in families:
        if family.matches(model):
            return family
    raise ValueError(
        f"pruning does not support {type(model).__name__}; supported: "
        f"{', '.join(a for f in families for a in f.architectures)}"
    )
