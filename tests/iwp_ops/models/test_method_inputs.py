"""What the hook hands the methods: padding never changes an item's kept tokens, and per-frame
budgets count each item's own temporal patches (tiny Qwen2.5-VL, random weights, built offline)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from iwp_ops import METHODS, enable_pruning
from tests.iwp_ops.models.test_pruning import encode
from tests.support.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("qwen2_5_vl"), arch="qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(path, local_files_only=True)


def kept_visual(handle, model, batch) -> list[list[int]]:
    """Each item's kept visual tokens after one prefill, as positions from its first real token."""
    with torch.no_grad():
        model(**batch)
    call = handle._call
    order, kept = call.order, call.kept_mask[:, :call.order.shape[1]]
    pad = (~call.attention).sum(-1)
    return [sorted(int(p) - int(pad[b]) for p, k in zip(order[b].tolist(), kept[b].tolist()) if k and call.visual[b, p])
            for b in range(order.shape[0])]


ITEM = ("image", 5, "caption")
OTHERS = [("video", 6, "what happens in this clip , from the start to the end ?", 4),
          ("image", 7, "list every object in the picture , left to right please .")]


@pytest.mark.parametrize("method", METHODS)
def test_left_padding_and_batch_mates_never_change_an_items_kept_tokens(qwen, method):
    model, processor = qwen
    handle = enable_pruning(model, method=method, keep_ratio=0.25, layer=2)
    try:
        alone = kept_visual(handle, model, encode(processor, [ITEM]))[0]
        together = kept_visual(handle, model, encode(processor, [ITEM, *OTHERS]))
    finally:
        handle.remove()
    assert len(alone) > 0
    assert together[0] == alone


@pytest.mark.parametrize("method", ["iwp", "uniform"])
def test_per_frame_budgets_count_the_items_own_temporal_patches(qwen, method):
    """8 frames = 4 temporal patches; 2 tokens per patch asked. The video sits after a long text
    prefix and, in the batch, behind left padding: every patch still gets exactly 2."""
    model, processor = qwen
    video = ("video", 3, "describe", 8)
    longer = ("image", 4, "a much longer question about the picture , with many words in it .")
    batch = encode(processor, [video, longer])
    grid = batch["video_grid_thw"][0]
    per_patch = int(grid[1] * grid[2]) // model.config.vision_config.spatial_merge_size ** 2
    patches = int(grid[0])
    handle = enable_pruning(model, method=method, keep_tokens=[2 * patches, 4], layer=2, per_frame=True)
    try:
        kept = kept_visual(handle, model, batch)[0]
    finally:
        handle.remove()
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    first = int((ids == model.config.video_token_id).nonzero()[0])
    counts = torch.bincount(torch.tensor([(p - first) // per_patch for p in kept]), minlength=patches)
    assert patches == 4 and counts.tolist() == [2] * patches


def test_per_frame_is_refused_where_the_family_has_no_grids(tmp_path):
    path = build_tiny_model(tmp_path, arch="llava_onevision")
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    with pytest.raises(ValueError, match="per_frame needs"):
        enable_pruning(model, per_frame=True)


def test_evs_gets_each_items_temporal_patches_without_per_frame(qwen):
    """EVS reads frames as structure: with one patch and 3 tokens to spare, the video's first
    temporal patch is kept whole and the 3 others come from later patches."""
    model, processor = qwen
    batch = encode(processor, [("video", 3, "describe", 8), ("image", 4, "a longer question about the picture .")])
    grid = batch["video_grid_thw"][0]
    per_patch = int(grid[1] * grid[2]) // model.config.vision_config.spatial_merge_size ** 2
    handle = enable_pruning(model, method="evs", keep_tokens=[per_patch + 3, 4], layer=2)
    try:
        kept = kept_visual(handle, model, batch)[0]
    finally:
        handle.remove()
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    first = int((ids == model.config.video_token_id).nonzero()[0])
    patch = [(p - first) // per_patch for p in kept]
    assert patch.count(0) == per_patch and len(kept) == per_patch + 3


def test_spatial_rotary_drops_the_temporal_rotation_only():
    """Two tokens with the same raw key at the same (h, w) in different frames: rotated by the
    full M-RoPE tables they differ, by the spatial ones they are equal; the h, w rotation stays."""
    from iwp_ops.models.layer_k import _rope, spatial_rotary

    half, temporal = 8, 2
    freqs = torch.arange(1, half + 1, dtype=torch.float32) / half
    def tables(t, h):
        angle = torch.cat([t * freqs[:temporal], h * freqs[temporal:]])
        angle = torch.cat([angle, angle])
        return angle.cos()[None, None], angle.sin()[None, None]
    key = torch.randn(1, 1, 1, 2 * half)
    (c0, s0), (c1, s1), (c2, s2) = tables(0.0, 3.0), tables(5.0, 3.0), tables(5.0, 4.0)
    assert not torch.allclose(_rope(key, c0, s0), _rope(key, c1, s1))
    spatial = [_rope(key, *spatial_rotary(c, s, temporal)) for c, s in ((c0, s0), (c1, s1), (c2, s2))]
    assert torch.allclose(spatial[0], spatial[1]) and not torch.allclose(spatial[1], spatial[2])


def test_temporal_rotary_off_runs_on_qwen2_5_and_is_refused_without_sectioned_mrope(qwen, tmp_path):
    model, processor = qwen
    handle = enable_pruning(model, keep_ratio=0.25, layer=2, temporal_rotary=False)
    try:
        assert len(kept_visual(handle, model, encode(processor, [OTHERS[0]]))[0]) > 0
        with pytest.raises(ValueError, match="needs rotary_keys=True"):
            handle.configure(rotary_keys=False)
    finally:
        handle.remove()
    path = build_tiny_model(tmp_path, arch="llava_onevision")
    other = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    with pytest.raises(ValueError, match="sectioned M-RoPE"):
        enable_pruning(other, temporal_rotary=False)


@pytest.mark.parametrize("method", ["iwp", "evs"])
def test_generate_gives_frame_ids_though_it_encodes_the_media_before_the_prefill(qwen, method):
    """transformers' `generate` runs the vision encoders first and passes the prefill no grids: the
    hook takes them from the encoders' own calls, so per-frame budgets and EVS's frames still hold."""
    model, processor = qwen
    batch = encode(processor, [("video", 3, "describe", 8), ("image", 4, "a longer question about the picture .")])
    grid = batch["video_grid_thw"][0]
    per_patch = int(grid[1] * grid[2]) // model.config.vision_config.spatial_merge_size ** 2
    budget = 2 * int(grid[0]) if method == "iwp" else per_patch + 3
    handle = enable_pruning(model, method=method, keep_tokens=[budget, 4], layer=2, per_frame=method == "iwp")
    handle.record_kept_tokens = True
    try:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=1, do_sample=False)
        kept = handle.last_stats[0].kept
    finally:
        handle.remove()
    assert "get_video_features" not in model.model.__dict__  # removed with the handle
    counts = torch.bincount(torch.tensor(kept) // per_patch, minlength=int(grid[0])).tolist()
    assert counts == ([2] * 4 if method == "iwp" else [per_patch, *counts[1:]]) and sum(counts) == budget
