"""Build randomly initialised Qwen2-VL / Qwen2.5-VL models with real processors, offline.

No pretrained VLM weights can be downloaded here, so the reference model (`reference.train`) and
the benchmarks' random-weight models are made from transformers' own classes with chosen
configs, a word-level tokenizer built with `tokenizers`, and the stock image/video processors
configured locally. The tests' tiny models of every family (`tests/support/tiny_models.py`) are
built on the same tokenizer and text config.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "a an the image video of with and in on at is are shows showing there two three "
    "red green blue yellow white black orange purple circle square triangle star small "
    "large big moving left right up down top bottom center corner background object objects "
    "frame scene appears disappears still static user assistant system describe caption tag "
    "tags what this picture clip list you helpful which these apply answer only : , . ? \n"
).split(" ")

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<unk>"]


def chat_template(image: str, video: str) -> str:
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


QWEN_TEMPLATE = chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")

# Patch 14 with 2x2 merging: one visual token per 28x28 pixels, as in real Qwen2.5-VL.
QWEN_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 256}


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


def text_config(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, **extra) -> dict:
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
    text = text_config(tokenizer, hidden, layers, rope_parameters=rope)
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
