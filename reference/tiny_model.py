"""Build a tiny, randomly initialised Qwen2.5-VL model with a real processor, offline.

No pretrained VLM weights can be downloaded here, so tests and the demo (until the trained
reference model ships) use a model made from transformers' own Qwen2.5-VL classes with a
small config, a word-level tokenizer built with `tokenizers`, and the stock Qwen2-VL
image/video processors configured locally. It is saved with `save_pretrained` so that
every caller goes through the real `from_pretrained` loading path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<unk>",
]
WORDS = (
    "a an the image video of with and in on at is are shows showing there two three "
    "red green blue yellow white black orange purple circle square triangle star small "
    "large big moving left right up down top bottom center corner background object objects "
    "frame scene appears disappears still static user assistant system describe caption tag "
    "tags what this picture clip list you helpful : , . \n"
).split(" ")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Patch 14 with 2x2 merging: one visual token per 28x28 pixels, as in real Qwen2.5-VL.
PROCESSOR_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 256}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: small vocabulary, exact round trips for our captions."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(WORDS) - {""}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:7],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor() -> Qwen2_5_VLProcessor:
    tokenizer = build_tokenizer()
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**PROCESSOR_PIXELS),
        video_processor=Qwen2VLVideoProcessor(**PROCESSOR_PIXELS),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, *, hidden: int = 64, layers: int = 4) -> Qwen2_5_VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    head_dim = 16
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // head_dim,
            "num_key_value_heads": max(1, hidden // head_dim // 2),
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
            "window_size": 112,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 4) -> Path:
    """Write a randomly initialised tiny Qwen2.5-VL model and its processor to `out_dir`."""
    out = Path(out_dir)
    processor = build_processor()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(processor.tokenizer, hidden=hidden, layers=layers))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
