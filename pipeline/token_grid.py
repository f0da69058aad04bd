"""Where each visual token of an item sits: its frame and its cell in that frame's token grid.

A model's visual tokens are a flat run of placeholders; which of them pruning kept only means
something to a person once each index is put back on the picture. The layouts:

- **Qwen2-VL / Qwen2.5-VL / Qwen3-VL** (`qwen`): `grid_t x grid_h x grid_w` patches (the
  processor's `*_grid_thw`); each token merges `merge_size x merge_size` patches and
  `temporal_patch_size` consecutive frames, in (t, row, column) order. Panel t covers frames
  [t * temporal_patch_size, (t + 1) * temporal_patch_size) (images: one panel).
- **LLaVA-OneVision video** (`llava_onevision`, `detail_h` 0): `grid_t` frames of
  `grid_h x grid_w` pooled tokens each, then one newline token.
- **LLaVA-OneVision image** (`llava_onevision`, `detail_h` > 0): the overview grid
  (`grid_h x grid_w`, the whole image), then the detail grid of `detail_h` rows of `detail_w`
  tokens, each row closed by a newline token, covering the image without the letterbox padding.

Newline tokens belong to no cell (row and column -1). `grid_of` reads a layout from one item's
processor output; `locate` maps indices to (panel, row, column) without a loop over tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa

QWEN, LLAVA_ONEVISION = "qwen", "llava_onevision"

@dataclass(frozen=True)
class TokenGrid:
    layout: str
    grid_t: int
    grid_h: int
    grid_w: int
    merge_size: int = 1
    temporal_patch_size: int = 1
    detail_h: int = 0
    detail_w: int = 0


# The result column: the kept indices and the grid they index, one field per TokenGrid field.
KEPT_TOKENS_TYPE = pa.struct([pa.field("indices", pa.list_(pa.int32()))] + [
    pa.field(f.name, pa.string() if f.type == "str" else pa.int32()) for f in fields(TokenGrid)])


@dataclass(frozen=True)
class Panel:
    """One token grid drawn over one picture: `frames` [first, last) of the sampled frames."""

    name: str
    rows: int
    cols: int
    frames: tuple[int, int]


def panels(grid: TokenGrid) -> list[Panel]:
    if grid.layout == QWEN:
        m, tps = grid.merge_size, grid.temporal_patch_size
        return [Panel(f"t{t}", grid.grid_h // m, grid.grid_w // m, (t * tps, (t + 1) * tps)) for t in range(grid.grid_t)]
    if grid.detail_h:
        return [Panel("overview", grid.grid_h, grid.grid_w, (0, 1)), Panel("detail", grid.detail_h, grid.detail_w, (0, 1))]
    return [Panel(f"frame {f}", grid.grid_h, grid.grid_w, (f, f + 1)) for f in range(grid.grid_t)]


def token_count(grid: TokenGrid) -> int:
    cells = sum(p.rows * p.cols for p in panels(grid))
    if grid.layout == QWEN:
        return cells
    return cells + (grid.detail_h if grid.detail_h else 1)  # newline tokens


def locate(grid: TokenGrid, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(panel, row, column) of each visual-token index; row and column are -1 for a newline token.
    Raises ValueError for an index outside the item's tokens."""
    index = np.asarray(indices, dtype=np.int64)
    total = token_count(grid)
    if index.size and (index.min() < 0 or index.max() >= total):
        raise ValueError(f"token index out of range 0..{total - 1} for {grid}")
    if grid.detail_h:
        base = grid.grid_h * grid.grid_w
        in_base, detail = index < base, index - base
        panel = (~in_base).astype(np.int64)
        row = np.where(in_base, index // grid.grid_w, detail // (grid.detail_w + 1))  # detail rows end in a newline
        col = np.where(in_base, index % grid.grid_w, detail % (grid.detail_w + 1))
        newline = ~in_base & (col == grid.detail_w)
    else:
        first = panels(grid)[0]
        panel, offset = index // (first.rows * first.cols), index % (first.rows * first.cols)
        row, col = offset // first.cols, offset % first.cols
        newline = panel == grid.grid_t  # LLaVA-OneVision's one newline after the last frame
    return panel, np.where(newline, -1, row), np.where(newline, -1, col)


def grid_of(inputs: dict[str, np.ndarray], model_config: Any, processor: Any) -> TokenGrid | None:
    """The token grid of one item's processor output, or None for a layout not known here."""
    if getattr(model_config, "model_type", "") == LLAVA_ONEVISION:
        return _llava_onevision(inputs, model_config, processor)
    thw = inputs.get("video_grid_thw", inputs.get("image_grid_thw"))
    if thw is None:
        return None
    vision = model_config.vision_config
    t, h, w = (int(v) for v in np.asarray(thw).reshape(-1, 3)[0])
    return TokenGrid(QWEN, t, h, w, merge_size=int(vision.spatial_merge_size),
                     temporal_patch_size=int(getattr(vision, "temporal_patch_size", 1)))


def _llava_onevision(inputs: dict[str, np.ndarray], model_config: Any, processor: Any) -> TokenGrid:
    side = int(math.isqrt(processor.num_image_tokens))
    if "pixel_values_videos" in inputs:
        frames = int(np.asarray(inputs["pixel_values_videos"]).shape[1])
        pooled = math.ceil(side / 2)
        return TokenGrid(LLAVA_ONEVISION, frames, pooled, pooled)
    orig_h, orig_w = (int(v) for v in np.asarray(inputs["image_sizes"]).reshape(-1, 2)[0])
    crop_h, crop_w = np.asarray(inputs["pixel_values"]).shape[-2:]
    from transformers.image_processing_utils import select_best_resolution

    best_h, best_w = select_best_resolution([orig_h, orig_w], processor.image_processor.image_grid_pinpoints)
    # The processor's own count of the detail grid (its padding removal and anyres_max cap).
    cells, rows = processor._get_unpadded_features(orig_h, orig_w, side, side, best_h // crop_h, best_w // crop_w)
    return TokenGrid(LLAVA_ONEVISION, 1, side, side, detail_h=int(rows), detail_w=int(cells) // int(rows))


def kept_tokens_value(grid: TokenGrid | None, kept: tuple[int, ...] | None, num_visual_tokens: int) -> dict | None:
    """The `kept_token_indices` cell of one row: every token when nothing was pruned, and no grid
    when the layout is unknown or does not account for the item's tokens (so no wrong overlay)."""
    indices = list(range(num_visual_tokens)) if kept is None else list(kept)
    if grid is None or token_count(grid) != num_visual_tokens:
        return {"indices": indices, **{f: None for f in KEPT_TOKENS_TYPE.names if f != "indices"}}
    return {"indices": indices, **asdict(grid)}


def grid_from_value(value: dict) -> TokenGrid | None:
    if not value or value.get("layout") is None:
        return None
    return TokenGrid(**{k: value[k] for k in KEPT_TOKENS_TYPE.names if k != "indices"})
