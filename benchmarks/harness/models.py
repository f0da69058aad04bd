"""Random-weight Qwen2.5-VL models built in memory (no download), their processor, inputs of
random pixels, and the calls the benchmarks time. Random weights give meaningless tokens but
the same amount of work; ``min_new_tokens`` makes every generation run to the length asked for.

The configurations are plain values, so `flops` can count either without building a model:
``mid`` is a mid-size model for a CPU (fp32, 43 M parameters) whose proportions follow the real
one (the LLM dominates; GQA; windowed vision attention with full-attention blocks), ``7b`` is
Qwen2.5-VL-7B-Instruct's config.json written out, bf16, for a GPU."""

from __future__ import annotations

import argparse

# What every Qwen2.5-VL shares; a configuration adds its sizes.
_TEXT = {"rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
_VISION = {"window_size": 112, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
           "tokens_per_second": 2}


def _config(dtype: str, text: dict, vision: dict) -> dict:
    return {"dtype": dtype, "text": {**text, **_TEXT}, "vision": {**vision, **_VISION}}


CONFIGS: dict[str, dict] = {
    "mid": _config("float32",
                   text={"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 10,
                         "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 8192,
                         "mrope_section": [8, 12, 12], "max_position_embeddings": 32768},
                   vision={"depth": 4, "hidden_size": 256, "intermediate_size": 512, "num_heads": 4,
                           "out_hidden_size": 512, "fullatt_block_indexes": [3]}),
    "7b": _config("bfloat16",
                  text={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                        "mrope_section": [16, 24, 24], "max_position_embeddings": 128000},
                  vision={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]}),
}

PROMPTS = {"image": "describe this image .", "video": "describe this video ."}


def config_for(name: str | None, device) -> str:
    """The configuration asked for, or the device's default: mid on a CPU, 7b on CUDA."""
    return name or ("7b" if device.type == "cuda" else "mid")


def build(spec: dict, device, dtype, seed: int = 0):
    """The model with random weights and a real Qwen2.5-VL processor (word-level tokenizer from
    `reference.builders`) that keeps frames at the size given (multiples of 28)."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from reference.builders import QWEN_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    t = dict(spec["text"])
    rope = {"rope_type": "default", "rope_theta": t.pop("rope_theta"), "mrope_section": t.pop("mrope_section")}
    text_config = {**t, "rope_parameters": rope, "hidden_act": "silu", "use_sliding_window": False,
                   "bos_token_id": ids("<|im_start|>"), "eos_token_id": ids("<|im_end|>"),
                   "pad_token_id": ids("<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={**spec["vision"], "hidden_act": "silu"},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec["text"]["tie_word_embeddings"],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16384}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                    video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=False),
                                    tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    return model, processor


def encode(processor, kind: str, size: tuple[int, int], frames: int, seed: int = 0):
    """One item of random pixels: an image of `size` or a video of `frames` frames of `size`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": PROMPTS[kind]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if kind == "image":
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        return processor(text=[text], images=[pixels], return_tensors="pt")
    pixels = rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8)
    return processor(text=[text], videos=[pixels], return_tensors="pt", do_sample_frames=False)


def replicate(encoded, batch: int, device) -> dict:
    """`batch` identical copies of a one-item encoding (equal lengths, so no padding)."""
    out = {}
    for key, value in encoded.items():
        if key.startswith("pixel_values") or value.dim() >= 2:
            value = value.repeat(batch, *([1] * (value.dim() - 1)))
        else:
            value = value.repeat(batch)
        out[key] = value.to(device)
    return out


def vision_inputs(encoded, device, dtype):
    """The vision encoder's inputs of one encoded medium (video or image): pixels in `dtype` and
    the grid, on `device`."""
    video = "pixel_values_videos" in encoded
    pixels = encoded["pixel_values_videos" if video else "pixel_values"]
    return pixels.to(device, dtype), encoded["video_grid_thw" if video else "image_grid_thw"].to(device)


def grids_of(encoded) -> list[tuple[int, int, int]]:
    grid = encoded.get("video_grid_thw", encoded.get("image_grid_thw"))
    return [tuple(int(v) for v in row) for row in grid]


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` for argparse; multiples of 28, so the processor keeps the size."""
    h, w = (int(v) for v in text.lower().split("x"))
    if h % 28 or w % 28:
        raise argparse.ArgumentTypeError(f"{text}: height and width must be multiples of 28")
    return h, w


def stage_modules(model, layer: int) -> list[tuple[object, int]]:
    """The vision encoder and each decoder layer with its stage: 0 vision, 1 before K, 2 layer K,
    3 after K (the order of `timing.StageTimer.STAGES`)."""
    layers = model.model.language_model.layers
    return [(model.model.visual, 0)] + [(m, 1 if i < layer else 2 if i == layer else 3) for i, m in enumerate(layers)]


def prefill(model, inputs) -> None:
    """One forward over the prompt as ``generate`` runs it (cache on, logits for the last position)."""
    import torch

    with torch.inference_mode():
        model(**inputs, use_cache=True, logits_to_keep=1)


def generate(model, inputs, new_tokens: int):
    """Greedy generation of exactly `new_tokens` tokens."""
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if out.shape[1] != inputs["input_ids"].shape[1] + new_tokens:
        raise RuntimeError(f"generate made {out.shape[1] - inputs['input_ids'].shape[1]} tokens, not {new_tokens}")
    return out


def set_ratio(handle, ratio: float) -> None:
    """Keep `ratio` of the visual tokens; 1.0 is the plain model (pruning disabled)."""
    if ratio >= 1.0:
        handle.disable()
    else:
        handle.configure(keep_ratio=ratio)
        handle.enable()
