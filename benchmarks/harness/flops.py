"""Analytic FLOP counts of a Qwen2.5-VL prefill and decode from its configuration (the plain
dicts of `models.CONFIGS`), so a measured speed-up can be set against what the arithmetic
alone would give, without building the model."""

from __future__ import annotations


def _window_segments(t: int, h: int, w: int, vision: dict) -> list[int]:
    """Lengths (in patches) of the windowed-attention segments, as transformers' get_vision_window_index makes them."""
    merge = vision["spatial_merge_size"]
    span = vision["window_size"] // merge // vision["patch_size"]  # window side in merged units
    gh, gw = h // merge, w // merge

    def sides(n: int) -> list[int]:
        return [span] * (n // span) + ([n % span] if n % span else [])

    return [a * b * merge * merge for _ in range(t) for a in sides(gh) for b in sides(gw)]


def vision_flops(vision: dict, grids: list[tuple[int, int, int]]) -> float:
    """Patch embedding, blocks (window / full attention as configured) and the patch merger."""
    d, inter, out = vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"]
    merged = d * vision["spatial_merge_size"] ** 2
    patch_in = vision["in_channels"] * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    total = 0.0
    for t, h, w in grids:
        n = t * h * w
        full = [h * w] * t  # full-attention blocks attend within each temporal patch group
        window = _window_segments(t, h, w, vision)
        total += 2 * n * patch_in * d
        for block in range(vision["depth"]):
            segments = full if block in vision["fullatt_block_indexes"] else window
            total += 2 * n * (3 * d * d + d * d) + 2 * n * 3 * d * inter  # qkv, proj; gated MLP
            total += 2 * 2 * d * sum(s * s for s in segments)  # QK^T and AV, bidirectional
        tokens = n // vision["spatial_merge_size"] ** 2
        total += 2 * tokens * (merged * merged + merged * out)
    return total


def _layer_linear(text: dict) -> float:
    """FLOPs per token of one decoder layer's projections and MLP."""
    h, inter = text["hidden_size"], text["intermediate_size"]
    hd = h // text["num_attention_heads"]
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    return 2 * (h * q + 2 * h * kv + q * h) + 2 * 3 * h * inter


def _causal_attention(text: dict, length: int, past: int = 0) -> float:
    """QK^T and AV for `length` new tokens attending causally to `past` cached ones and themselves."""
    width = text["num_attention_heads"] * (text["hidden_size"] // text["num_attention_heads"])
    pairs = length * past + length * (length + 1) / 2
    return 2 * 2 * width * pairs


def _layers(text: dict, count: int, length: int) -> float:
    """`count` decoder layers over a prompt of `length` tokens."""
    return count * (length * _layer_linear(text) + _causal_attention(text, length))


def llm_prefill_flops(text: dict, length: int, kept_length: int, layer: int) -> float:
    """Layers before K at the full length, layers from K on at the kept length, the lm_head for one position."""
    n = text["num_hidden_layers"]
    return _layers(text, layer, length) + _layers(text, n - layer, kept_length) + 2 * text["hidden_size"] * text["vocab_size"]


def llm_decode_flops(text: dict, length: int, kept_length: int, layer: int, steps: int) -> float:
    n, total = text["num_hidden_layers"], 0.0
    for s in range(steps):
        total += layer * (_layer_linear(text) + _causal_attention(text, 1, length + s))
        total += (n - layer) * (_layer_linear(text) + _causal_attention(text, 1, kept_length + s))
        total += 2 * text["hidden_size"] * text["vocab_size"]
    return total


def flop_model(spec: dict, grids: list[tuple[int, int, int]], length: int, visual: int, kept: int, layer: int,
               new_tokens: int) -> dict:
    """Per item. `length`: prompt tokens; `visual`: visual tokens among them; `kept`: visual tokens kept."""
    kept_length = length - (visual - kept)
    vis = vision_flops(spec["vision"], grids)
    llm = llm_prefill_flops(spec["text"], length, kept_length, layer)
    decode = llm_decode_flops(spec["text"], length, kept_length, layer, max(new_tokens - 1, 0))
    after_k = _layers(spec["text"], spec["text"]["num_hidden_layers"] - layer - 1, kept_length)
    return {"vision": vis, "llm_prefill": llm, "prefill": vis + llm, "decode": decode, "e2e": vis + llm + decode,
            "after_k": after_k, "kept_length": kept_length}
