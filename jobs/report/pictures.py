"""Thumbnails and kept-token overlays, made from the media at report time and cached by name.

Frames come from the pipeline's own decode (`decode_row`, in a child process when the run
isolated decoding) with the run's frame sampling, so panel t of an overlay shows the frames
the model saw as its t-th temporal patch. Only the size is bounded. A picture's file name is a
hash of everything it depends on, so a second report over a grown output only makes the new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.config import DecodeIsolationConfig, SamplingConfig
from pipeline.decode import decode_row
from pipeline.schema import OK
from pipeline.tensors import unpack
from pipeline.token_grid import Panel, TokenGrid, grid_from_value, locate, panels

THUMB_HEIGHT = 96  # each frame of a gallery strip
STRIP_FRAMES = 8
OVERLAY_SIDE = 224  # longest side of one overlay panel
DROPPED_SHADE = 0.22  # brightness left to the tokens pruning dropped, so the kept ones stand out
KEPT_OUTLINE = (255, 214, 0)
DRAWING = 2  # part of every picture's name: raise it when the drawing changes, so caches are redone


@dataclass(frozen=True)
class Pictures:
    thumb: str | None
    overlay: str | None
    error: str | None = None


def _name(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _frames(row: dict, sampling: SamplingConfig, isolation: DecodeIsolationConfig) -> np.ndarray:
    item = {"id": row["id"], "uri": row["uri"], "media_type": row["media_type"], "status": OK,
            "start_s": row.get("start_s"), "end_s": row.get("end_s")}
    decoded = decode_row(item, sampling, isolation)
    if decoded["status"] != OK:
        raise ValueError(f"{decoded['error_type']}: {decoded['error']}")
    return unpack(decoded["frames"])["frames"]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def strip(frames: np.ndarray) -> Image.Image:
    """Up to STRIP_FRAMES frames side by side (an image is one), THUMB_HEIGHT pixels high."""
    picks = np.linspace(0, len(frames) - 1, min(len(frames), STRIP_FRAMES)).round().astype(int)
    tiles = []
    for i in picks:
        img = Image.fromarray(frames[i])
        tiles.append(img.resize((max(1, round(img.width * THUMB_HEIGHT / img.height)), THUMB_HEIGHT), Image.BILINEAR))
    return _side_by_side(tiles, gap=2, background=(40, 40, 40))


def _side_by_side(tiles: list[Image.Image], gap: int, background: tuple[int, int, int]) -> Image.Image:
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)), background)
    x = 0
    for tile in tiles:
        out.paste(tile, (x, 0))
        x += tile.width + gap
    return out


def panel_image(frame: np.ndarray, panel: Panel, kept: np.ndarray) -> Image.Image:
    """One frame with its token grid: kept cells in full colour and outlined, dropped ones dark.

    `kept` is a [rows, cols] bool mask. Each cell's edges are rounded from the same scale, so the
    cells tile the frame exactly whatever its size."""
    img = Image.fromarray(frame)
    scale = OVERLAY_SIDE / max(img.width, img.height)
    img = img.resize((max(panel.cols, round(img.width * scale)), max(panel.rows, round(img.height * scale))), Image.BILINEAR)
    pixels = np.asarray(img).astype(np.float32)
    ys = np.round(np.linspace(0, img.height, panel.rows + 1)).astype(int)
    xs = np.round(np.linspace(0, img.width, panel.cols + 1)).astype(int)
    cell_row = np.searchsorted(ys, np.arange(img.height), side="right") - 1
    cell_col = np.searchsorted(xs, np.arange(img.width), side="right") - 1
    keep = kept[cell_row[:, None], cell_col[None, :]]
    grey = pixels.mean(-1, keepdims=True)
    dimmed = (0.5 * pixels + 0.5 * grey) * DROPPED_SHADE
    out = Image.fromarray(np.where(keep[..., None], pixels, dimmed).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for r, c in zip(*np.nonzero(kept)):
        draw.rectangle((xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1), outline=KEPT_OUTLINE)
    return out


def _labelled(tile: Image.Image, panel: Panel) -> Image.Image:
    """The panel with its frames named in a strip under it (over it, it would hide kept cells)."""
    first, end = panel.frames
    text = panel.name if panel.name in ("overview", "detail") else \
        f"frame {first}" if end - first == 1 else f"frames {first}-{end - 1}"
    out = Image.new("RGB", (tile.width, tile.height + 14), (255, 255, 255))
    out.paste(tile, (0, 0))
    ImageDraw.Draw(out).text((2, tile.height + 2), text, fill=(0, 0, 0))
    return out


def overlay(frames: np.ndarray, grid: TokenGrid, indices: list[int]) -> Image.Image:
    """Every panel of the item's grid side by side, each over the frame it covers."""
    shown = panels(grid)
    panel, row, col = locate(grid, np.asarray(indices, dtype=np.int64))
    cell = row >= 0
    tiles = []
    for i, p in enumerate(shown):
        mask = np.zeros((p.rows, p.cols), dtype=bool)
        here = cell & (panel == i)
        mask[row[here], col[here]] = True
        tile = panel_image(frames[min(p.frames[0], len(frames) - 1)], p, mask)
        tiles.append(_labelled(tile, p) if len(shown) > 1 else tile)
    return _side_by_side(tiles, gap=4, background=(255, 255, 255))


def make_pictures(row: dict, sampling: SamplingConfig, isolation: DecodeIsolationConfig, exists, write) -> Pictures:
    """The row's thumbnail and (when its run recorded kept tokens) overlay, as paths under the
    report; `exists(path)` and `write(path, bytes)` reach the report's storage."""
    if row["status"] != OK:
        return Pictures(None, None)
    key = (DRAWING, row["id"], row["uri"], row["media_type"], sampling.num_frames, sampling.fps)
    thumb = f"thumbs/{_name(*key)}.jpg"
    value = row.get("kept_token_indices")
    grid = grid_from_value(value) if value else None
    shown = f"overlays/{_name(*key, value)}.png" if grid is not None else None
    if exists(thumb) and (shown is None or exists(shown)):
        return Pictures(thumb, shown)
    try:
        frames = _frames(row, sampling, isolation)
    except Exception as exc:  # a report shows every row, even when its media is gone since the run
        return Pictures(None, None, str(exc)[:300])
    write(thumb, _jpeg(strip(frames)))
    if shown is not None:
        write(shown, _png(overlay(frames, grid, value["indices"])))
    return Pictures(thumb, shown)
