"""The index <-> (panel, row, column) mapping of each family's token grid, against the real
processors' token counts and placements."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoConfig

from pipeline.preprocess import build_inputs, load_processor, visual_token_count
from pipeline.token_grid import (LLAVA_ONEVISION, QWEN, TokenGrid, grid_from_value, grid_of, kept_tokens_value, locate,
                                 panels, token_count)
from tests.support.tiny_models import build_tiny_model

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")


def test_qwen_image_tokens_merge_patches_row_major():
    grid = TokenGrid(QWEN, 1, 6, 10, merge_size=2, temporal_patch_size=2)  # 3 x 5 tokens
    assert token_count(grid) == 15 and [(p.rows, p.cols, p.frames) for p in panels(grid)] == [(3, 5, (0, 2))]
    panel, row, col = locate(grid, np.array([0, 4, 5, 7, 14]))
    assert panel.tolist() == [0] * 5
    assert list(zip(row.tolist(), col.tolist())) == [(0, 0), (0, 4), (1, 0), (1, 2), (2, 4)]


def test_qwen_video_panels_cover_a_temporal_patch_each():
    grid = TokenGrid(QWEN, 3, 4, 6, merge_size=2, temporal_patch_size=2)  # 3 panels of 2 x 3
    assert [p.frames for p in panels(grid)] == [(0, 2), (2, 4), (4, 6)]
    panel, row, col = locate(grid, np.array([0, 5, 6, 13, 17]))
    assert panel.tolist() == [0, 0, 1, 2, 2]
    assert list(zip(row.tolist(), col.tolist())) == [(0, 0), (1, 2), (0, 0), (0, 1), (1, 2)]


def test_llava_onevision_image_overview_then_detail_rows_with_newlines():
    grid = TokenGrid(LLAVA_ONEVISION, 1, 4, 4, detail_h=3, detail_w=5)
    assert token_count(grid) == 16 + 3 * 6
    panel, row, col = locate(grid, np.array([5, 16, 20, 21, 22, 33]))
    assert panel.tolist() == [0, 1, 1, 1, 1, 1]
    assert list(zip(row.tolist(), col.tolist())) == [(1, 1), (0, 0), (0, 4), (-1, -1), (1, 0), (-1, -1)]


def test_llava_onevision_video_ends_in_one_newline():
    grid = TokenGrid(LLAVA_ONEVISION, 3, 2, 2)
    assert token_count(grid) == 13
    panel, row, col = locate(grid, np.array([3, 4, 12]))
    assert panel.tolist()[:2] == [0, 1] and (row.tolist(), col.tolist()) == ([1, 0, -1], [1, 0, -1])


def test_an_index_outside_the_item_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        locate(TokenGrid(QWEN, 1, 4, 4, merge_size=2), np.array([4]))


def test_kept_value_round_trips_and_never_claims_a_wrong_grid():
    grid = TokenGrid(QWEN, 2, 4, 4, merge_size=2, temporal_patch_size=2)
    value = kept_tokens_value(grid, (1, 6), 8)
    assert value["indices"] == [1, 6] and grid_from_value(value) == grid
    assert kept_tokens_value(grid, None, 8)["indices"] == list(range(8))  # nothing pruned: every token kept
    assert grid_from_value(kept_tokens_value(grid, (1,), 9)) is None  # counts disagree: no overlay


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return request.param, AutoConfig.from_pretrained(path), load_processor(str(path))


@pytest.mark.parametrize("media_type, shape", [("image", (1, 90, 150, 3)), ("image", (1, 200, 60, 3)),
                                               ("video", (5, 64, 96, 3))])
def test_grid_accounts_for_every_visual_token_the_processor_placed(family, media_type, shape):
    name, config, processor = family
    frames = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    inputs = build_inputs(processor, frames, media_type, "describe .", 4.0 if media_type == "video" else 0.0)
    grid = grid_of(inputs, config, processor)
    n = visual_token_count(processor, inputs["input_ids"])
    assert grid is not None and token_count(grid) == n
    panel, row, col = locate(grid, np.arange(n))
    cells = {(p, r, c) for p, r, c in zip(panel.tolist(), row.tolist(), col.tolist()) if r >= 0}
    expected = {(i, r, c) for i, p in enumerate(panels(grid)) for r in range(p.rows) for c in range(p.cols)}
    assert cells == expected  # every cell once, nothing outside a panel
    if name == LLAVA_ONEVISION and media_type == "image":
        tall = shape[1] > shape[2]
        assert (grid.detail_h > grid.detail_w) == tall  # the detail grid follows the picture's shape
    if media_type == "video":
        last = panels(grid)[-1].frames
        assert last[0] < shape[0] <= last[1]  # the panels cover the sampled frames
