"""The family table: what pruning and the vision optimisations need to know about each model family.

All supported families follow the same transformers 5.x layout (`model.model.language_model`
holding `.layers`, visual placeholder ids `image_token_id` / `video_token_id` in the config,
decoder layers called with `position_embeddings` and `attention_mask` keywords), so the
mechanics of pruning are shared and a row of the table declares what differs:

- **Qwen2-VL / Qwen2.5-VL**: the model computes 3-D M-RoPE positions (t, h, w) from the unpruned
  sequence in `get_rope_index` and caches `rope_deltas`; pruning happens inside the decoder after
  the rotary tables were built, so each kept token keeps its original position (its cos/sin rows
  are gathered) and decoding continues after the last original position through the unchanged
  `rope_deltas`.
- **Qwen3-VL** (dense and MoE): positions as for Qwen2-VL, interleaved; video timestamps are text
  tokens, so they always stay. DeepStack: the text model adds vision features from three encoder
  depths to the hidden states at the visual positions after each of its first decoder layers;
  where those come at or after K they must see the kept sequence, so the feature rows and the
  visual-position mask are re-indexed to the kept tokens. Not supported: the MoE variant's
  router-logit output (`output_router_logits=True`, for the load-balancing loss in training) with
  pruning on, since layers >= K route the kept sequence while transformers' loss masks the router
  logits with the full-length mask.
- **LLaVA-OneVision** (Qwen2 LM): 1-D positions; kept tokens keep their rotary rows, and decoding
  continues after the last original position because the first layers' cache, which sets the
  position counter, keeps the full sequence. Its SigLIP tower is stock: none of the Qwen vision
  optimisations apply.

The Qwen vision towers (`model.model.visual`) share their segment attention, Conv3d patch
embedding and block structure, so each vision optimisation asks the table for the tower
(`qwen_vision_tower`) instead of checking architectures itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    deepstack: bool = False  # the text model adds vision features at the visual positions of its first layers
    qwen_vision: bool = False  # a Qwen vision tower: packed attention, flat patch embedding, compiled blocks apply
    grids: bool = False  # inputs carry image_grid_thw / video_grid_thw, so each visual token's frame is known

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.architectures

    @staticmethod
    def language_model(model: nn.Module) -> nn.Module:
        return model.model.language_model

    @staticmethod
    def visual_token_ids(model: nn.Module) -> list[int]:
        return [model.config.image_token_id, model.config.video_token_id]


FAMILIES: tuple[Family, ...] = (
    Family("qwen2_vl", ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"), qwen_vision=True,
           grids=True),
    Family("qwen3_vl", ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"), deepstack=True,
           qwen_vision=True, grids=True),
    Family("llava_onevision", ("LlavaOnevisionForConditionalGeneration",)),
)


def family_of(model: nn.Module) -> Family:
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise ValueError(
        f"pruning does not support {type(model).__name__}; supported: "
        f"{', '.join(a for f in FAMILIES for a in f.architectures)}"
    )


def qwen_vision_tower(model: nn.Module) -> nn.Module | None:
    """The Qwen vision encoder of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model, None for any other model."""
    if not any(f.qwen_vision and f.matches(model) for f in FAMILIES):
        return None
    return getattr(getattr(model, "model", None), "visual", None)
