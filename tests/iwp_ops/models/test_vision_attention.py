"""The packed vision attention computes what transformers' per-segment loop computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForImageTextToText, AutoProcessor

from iwp_ops.models.vision_attention import NAME, pack_vision_attention, packed_attention
from tests.support.tiny_models import build_tiny_model


@pytest.fixture(scope="module", params=("qwen2_5_vl", "qwen2_vl", "qwen3_vl"))
def qwen(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    load = lambda: AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()  # noqa: E731
    return load, AutoProcessor.from_pretrained(path, local_files_only=True)


def _batch(processor):
    """An image whose 4x6 merged grid leaves partial 4x4 windows, and two videos of different lengths."""
    rng = np.random.default_rng(0)
    texts = []
    for kind in ("image", "video", "video"):
        messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "describe"}]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    image = rng.integers(0, 255, (112, 168, 3), dtype=np.uint8)
    videos = [rng.integers(0, 255, (n, 140, 112, 3), dtype=np.uint8) for n in (4, 2)]
    return processor(text=texts, images=[image], videos=videos, return_tensors="pt", padding=True, do_sample_frames=False)


def test_packed_attention_matches_one_call_per_segment():
    torch.manual_seed(0)
    heads, dim, lengths = 3, 8, (5, 16, 1, 9)
    q, k, v = (torch.randn(1, heads, sum(lengths), dim) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    out, _ = packed_attention(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu, max_length_q=max(lengths))
    parts = torch.split(torch.arange(sum(lengths)), lengths)
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(q[:, :, p], k[:, :, p], v[:, :, p], scale=0.3)
                          for p in parts], dim=2).transpose(1, 2)
    assert out.shape == (1, sum(lengths), heads, dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_packed_vision_gives_the_same_features_and_tokens(qwen):
    load, processor = qwen
    batch = _batch(processor)
    stock, packed = load(), load()
    assert pack_vision_attention(packed)
    assert packed.config.vision_config._attn_implementation == NAME
    assert packed.config.text_config._attn_implementation == stock.config.text_config._attn_implementation
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["cu_seq_lens_q"].numel() - 1)
        return packed_attention(*args, **kwargs)

    AttentionInterface.register(NAME, spy)
    try:
        with torch.no_grad():
            for key, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
                a = stock.model.visual(batch[key], grid_thw=batch[grid]).pooler_output
                b = packed.model.visual(batch[key], grid_thw=batch[grid]).pooler_output
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
            assert torch.equal(packed.generate(**batch, **gen), stock.generate(**batch, **gen))
    finally:
        AttentionInterface.register(NAME, packed_attention)
    # one packed call per vision block and forward, each over several segments
    assert len(calls) >= 2 * packed.config.vision_config.depth and max(calls) > 1


def test_other_models_and_implementations_are_left_alone(qwen, tmp_path):
    load, _ = qwen
    eager = load()
    eager.config.vision_config._attn_implementation = "eager"
    assert not pack_vision_attention(eager)
    assert eager.config.vision_config._attn_implementation == "eager"
    llava = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path, arch="llava_onevision"),
                                                        local_files_only=True)
    assert not pack_vision_attention(llava)


def test_flat_patch_embedding_gives_the_same_features_and_tokens(qwen):
    from iwp_ops import flatten_patch_embedding

    load, processor = qwen
    batch = _batch(processor)
    stock, flat = load(), load()
    assert flatten_patch_embedding(flat)
    assert flat.model.visual.patch_embed.forward.__func__ is not type(flat.model.visual.patch_embed).forward
    assert flat.state_dict().keys() == stock.state_dict().keys()
    with torch.no_grad():
        for key, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            torch.testing.assert_close(flat.model.visual.patch_embed(batch[key]), stock.model.visual.patch_embed(batch[key]),
                                       rtol=1e-4, atol=1e-5)
        gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(flat.generate(**batch, **gen), stock.generate(**batch, **gen))


def test_flat_patch_embedding_leaves_other_models_alone(tmp_path):
    from iwp_ops import flatten_patch_embedding

    llava = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path, arch="llava_onevision"),
                                                        local_files_only=True)
    assert not flatten_patch_embedding(llava)
    assert not flatten_patch_embedding(torch.nn.Linear(2, 2))


def test_compiled_vision_blocks_give_the_same_features(qwen):
    from iwp_ops import compile_vision_blocks

    load, processor = qwen
    batch = _batch(processor)
    stock, compiled = load(), load()
    assert pack_vision_attention(stock) and pack_vision_attention(compiled)
    assert compile_vision_blocks(compiled)
    assert all(block._compiled_call_impl is not None for block in compiled.model.visual.blocks)
    assert compiled.state_dict().keys() == stock.state_dict().keys()
    with torch.no_grad():
        for key, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            torch.testing.assert_close(compiled.model.visual(batch[key], grid_thw=batch[grid]).pooler_output,
                                       stock.model.visual(batch[key], grid_thw=batch[grid]).pooler_output,
                                       rtol=1e-4, atol=1e-5)


def test_compile_leaves_other_models_alone(tmp_path):
    from iwp_ops import compile_vision_blocks

    llava = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path, arch="llava_onevision"),
                                                        local_files_only=True)
    assert not compile_vision_blocks(llava)
    assert all(module._compiled_call_impl is None for module in llava.modules())


def test_compile_setting_auto_means_cuda_only():
    from iwp_ops.models.vision_compile import compile_wanted

    assert [compile_wanted(s, torch.device("cpu")) for s in ("auto", "on", "off")] == [False, True, False]
    assert [compile_wanted(s, torch.device("cuda", 0)) for s in ("auto", "on", "off")] == [True, True, False]
    assert compile_wanted("auto", "cuda") and not compile_wanted("auto", "cpu")
    with pytest.raises(ValueError, match="auto"):
        compile_wanted("yes", torch.device("cpu"))
