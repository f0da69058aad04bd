"""Tiny, randomly initialised VLMs of every supported family, saved with `save_pretrained`, so
that tests and benchmarks go through the real `from_pretrained` loading path.

Architectures: `qwen2_5_vl` (the default), `qwen2_vl`, `qwen3_vl`, `qwen3_vl_moe`, `llava_onevision`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reference.builders import QWEN_TEMPLATE, build_tokenizer, chat_template, qwen_model, text_config

ARCHITECTURES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision")

LLAVA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"]
LLAVA_TEMPLATE = chat_template("<image>", "<video>")
# Qwen3-VL: patch 16, so one visual token per 32x32 pixels.
QWEN3_SIZE = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 256}
LLAVA_SIZE = 56


def _qwen3_vl(hidden: int, layers: int, moe: bool = False):
    """Qwen3-VL (`moe`: its mixture-of-experts variant): DeepStack (vision features from three
    encoder depths added to the hidden states after decoder layers 0-2), q/k norms, interleaved
    M-RoPE, and a text timestamp per video temporal patch."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    experts = {"num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": hidden} if moe else {}
    config_cls, model_cls = (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe else \
        (Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    config = config_cls(
        text_config=text_config(tokenizer, hidden, layers, head_dim=16, rope_parameters=rope, **experts),
        vision_config={"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": hidden,
                       "deepstack_visual_indexes": [0, 1, 2], "num_position_embeddings": 64},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, size=QWEN3_SIZE),
        video_processor=Qwen3VLVideoProcessor(size=QWEN3_SIZE, fps=4),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return model_cls(config), processor


def _llava_onevision(hidden: int, layers: int):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    tokenizer = build_tokenizer(LLAVA_SPECIALS, LLAVA_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    s = LLAVA_SIZE
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": s, "patch_size": 14},
        text_config={"model_type": "qwen2", **text_config(tokenizer, hidden, layers)},
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": s, "width": s}, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": s, "width": s}),
        tokenizer=tokenizer,
        num_image_tokens=(s // 14) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_TEMPLATE,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def build_tiny_model(out_dir: str | Path, *, arch: str = "qwen2_5_vl", seed: int = 0, hidden: int = 64,
                     layers: int = 4) -> Path:
    """Write a randomly initialised tiny VLM of `arch` and its processor to `out_dir`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    torch.manual_seed(seed)
    if arch == "llava_onevision":
        model, processor = _llava_onevision(hidden, layers)
    elif arch.startswith("qwen3_vl"):
        model, processor = _qwen3_vl(hidden, layers, moe=arch == "qwen3_vl_moe")
    else:
        model, processor = qwen_model(arch, hidden, layers)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
