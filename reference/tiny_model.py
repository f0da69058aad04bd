"""Build tiny, randomly initialised VLMs with real processors, offline.

No pretrained VLM weights can be downloaded here, so the tests use models made from
transformers' own classes with small configs, a word-level tokenizer built with `tokenizers`,
and the stock image/video processors configured locally (the trained reference model in
`reference/model` is built the same way, by `reference.train`). They are saved with `save_pretrained` so that every caller goes
through the real `from_pretrained` loading path.

Architectures: `qwen2_5_vl` (the default), `qwen2_vl`, `qwen3_vl`, `qwen3_vl_moe`, `llava_onevision`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ARCHITECTURES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision")

WORDS = (
    "a an the image video of with and in on at is are shows showing there two three "
    "red green blue yellow white black orange purple circle square triangle star small "
    "large big moving left right up down top bottom center corner background object objects "
    "frame scene appears disappears still static user assistant system describe caption tag "
    "tags what this picture clip list you helpful which these apply answer only : , . ? \n"
).split(" ")

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<unk>"]
LLAVA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"]


def _chat_template(image: str, video: str) -> str:
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image}"
        f"{{% elif part['type'] == 'video' %}}{video}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


QWEN_TEMPLATE = _chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
LLAVA_TEMPLATE = _chat_template("<image>", "<video>")

# Patch 14 with 2x2 merging: one visual token per 28x28 pixels, as in real Qwen2.5-VL.
QWEN_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 256}
# Qwen3-VL: patch 16, so one visual token per 32x32 pixels.
QWEN3_SIZE = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 256}
LLAVA_SIZE = 56


def build_tokenizer(specials: list[str] = QWEN_SPECIALS, template: str = QWEN_TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: small vocabulary, exact round trips for our captions."""
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS) - {""}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in specials if t not in ("<|endoftext|>", "<|im_end|>", "<unk>")],
        padding_side="left",
    )
    fast.chat_template = template
    return fast


def _text_config(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, **extra) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    heads = hidden // 16
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 4096,
        "bos_token_id": ids("<|im_start|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        **extra,
    }


def qwen_model(arch: str, hidden: int, layers: int, *, vision: dict | None = None, rope_theta: float = 10000.0,
               mrope_section: Sequence[int] = (2, 3, 3), heads: tuple[int, int] | None = None):
    """A randomly initialised Qwen2-VL / Qwen2.5-VL and its processor. `vision` replaces the tiny
    vision config and `heads` (query, KV) the text heads: the reference model's training uses both."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section)}
    text = _text_config(tokenizer, hidden, layers, rope_parameters=rope)
    if heads is not None:
        text["num_attention_heads"], text["num_key_value_heads"] = heads
    if arch == "qwen2_5_vl":
        config_cls, model_cls, proc_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
        default = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": hidden,
                   "fullatt_block_indexes": [1], "window_size": 112}
    else:
        config_cls, model_cls, proc_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        default = {"depth": 2, "embed_dim": 32, "hidden_size": hidden, "mlp_ratio": 2, "num_heads": 2}
    config = config_cls(
        text_config=text,
        vision_config=default if vision is None else vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessor(**QWEN_PIXELS),
        video_processor=Qwen2VLVideoProcessor(**QWEN_PIXELS),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return model_cls(config), processor


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
        text_config=_text_config(tokenizer, hidden, layers, head_dim=16, rope_parameters=rope, **experts),
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
        text_config={"model_type": "qwen2", **_text_config(tokenizer, hidden, layers)},
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
