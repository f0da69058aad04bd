"""On CUDA, the packed vision attention takes torch's variable-length attention (FlashAttention 2,
or cuDNN where torch prefers it), gives the per-segment attention, and never waits on the GPU.

Runs only where a GPU is present (the device machine): `python -m pytest --noconftest
tests/iwp_ops/models/test_vision_attention_cuda.py`.
"""

from __future__ import annotations

import pytest
import torch

from iwp_ops.models import vision_attention
from iwp_ops.models.vision_attention import packed_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
# The 7B vision encoder's 16 heads of 80, and the segments of one 392x392 frame pair: its 4x4-token
# windows (64 patches, 32 at the right and bottom edges, 16 in the corner), then a whole frame.
HEADS, DIM = 16, 80
LENGTHS = (64, 64, 64, 32) * 3 + (32, 32, 32, 16) + (784,)


def _inputs(dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, sum(LENGTHS), DIM, generator=gen).cuda().to(dtype) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return q, k, v, cu


def _per_segment(q, k, v) -> torch.Tensor:
    parts = torch.split(torch.arange(sum(LENGTHS), device="cuda"), LENGTHS)
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(q[:, :, p].float(), k[:, :, p].float(),
                                                                       v[:, :, p].float()) for p in parts],
                     dim=2).transpose(1, 2)


@pytest.mark.parametrize("varlen", [True, False])
def test_both_paths_give_the_per_segment_attention_without_a_host_sync(varlen):
    q, k, v, cu = _inputs()
    expected = _per_segment(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _ = packed_attention(None, q, k, v, scaling=DIM ** -0.5, cu_seq_lens_q=cu, max_length_q=max(LENGTHS),
                                  varlen=varlen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (1, sum(LENGTHS), HEADS, DIM) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-2)


def test_h100_class_gpus_take_the_variable_length_kernel(monkeypatch):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("FlashAttention 2 needs sm80+")
    kernel = vision_attention._varlen_kernel(torch.device("cuda"))
    assert kernel is not None
    calls = []
    monkeypatch.setattr(vision_attention, "_varlen_kernel",
                        lambda device: lambda *a: calls.append(a[5]) or kernel(*a))
    q, k, v, cu = _inputs()
    packed_attention(None, q, k, v, scaling=DIM ** -0.5, cu_seq_lens_q=cu, max_length_q=max(LENGTHS))
    fp32 = [x.float() for x in (q, k, v)]
    packed_attention(None, *fp32, scaling=DIM ** -0.5, cu_seq_lens_q=cu, max_length_q=max(LENGTHS))
    packed_attention(None, q, k, v, scaling=0.5, cu_seq_lens_q=cu, max_length_q=max(LENGTHS))
    assert calls == [784]  # half precision at the default scale only


def test_tiny_qwen_encoder_on_the_gpu_matches_the_stock_loop(tmp_path):
    """Packed, and packed with its blocks compiled (as the pipeline runs it on a GPU)."""
    from transformers import AutoModelForImageTextToText

    from iwp_ops import compile_vision_blocks, pack_vision_attention
    from tests.support.tiny_models import build_tiny_model

    path = build_tiny_model(tmp_path, arch="qwen2_5_vl")
    load = lambda: AutoModelForImageTextToText.from_pretrained(path, local_files_only=True,  # noqa: E731
                                                               dtype=torch.bfloat16).cuda().eval()
    stock, packed, compiled = load(), load(), load()
    assert pack_vision_attention(packed) and pack_vision_attention(compiled) and compile_vision_blocks(compiled)
    gen = torch.Generator().manual_seed(1)
    grid = torch.tensor([[4, 10, 8], [1, 8, 12]], device="cuda")  # a 4-frame video and an image, partial windows
    patches = int(grid.prod(-1).sum())
    vc = stock.config.vision_config
    pixels = torch.randn(patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, generator=gen).cuda()
    with torch.inference_mode():
        a = stock.model.visual(pixels.bfloat16(), grid_thw=grid).pooler_output.float()
        for model in (packed, compiled):
            b = model.model.visual(pixels.bfloat16(), grid_thw=grid).pooler_output.float()
            assert (b - a).abs().max() <= 2e-2 * a.abs().max()
