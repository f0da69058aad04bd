"""Per-visual-token labels for the auxiliary training loss.

Captioning alone gives the vision tower one sparse signal per scene, routed through attention
that starts out uniform over ~200 mostly identical tokens; on a 2-core CPU budget that learns
too slowly. A linear probe on each merged visual token (colour, shape, size and motion of the
object covering it, or background) gives every token a target. Where a token lies is not in the
vision tower's output (its attention has only relative 2D rotary positions); the decoder
can read it from M-RoPE, and a second linear probe on the decoder's visual hidden states
(which 3x3 grid cell the token lies in) teaches its early layers to write it down, so later
layers read an object's cell with its colour. Probes are used only in training and are not
part of the shipped model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scenes.media import COLOURS, SHAPES
from scenes.scene import HEIGHT, MOTIONS, SIZES, TEMPORAL_PATCH, WIDTH, Scene
from scenes.scene import TOKEN_PX as CELL

FIELDS = (("colour", tuple(COLOURS)), ("shape", SHAPES), ("size", tuple(SIZES)), ("motion", MOTIONS))
MIN_COVER = 0.2  # share of a token's pixels an object must cover to label it


def _patch_frames(scene: Scene) -> range:
    """The first frame of each temporal patch: one group of visual tokens each (an image, one frame, is one)."""
    return range(0, scene.num_frames, TEMPORAL_PATCH)


def token_objects(scene: Scene) -> np.ndarray:
    """int64 [tokens]: 1 + the index of the object covering each visual token, 0 for background.

    Tokens in the merger's output order: frame groups, then rows, then columns.
    """
    rows, cols = HEIGHT // CELL, WIDTH // CELL
    out = []
    for t in _patch_frames(scene):
        ids = scene.object_map(t).reshape(rows, CELL, cols, CELL).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
        counts = np.stack([(ids == i + 1).sum(1) for i in range(len(scene.objects))], 1)
        out.append(np.where(counts.max(1) >= MIN_COVER * CELL * CELL, counts.argmax(1) + 1, 0))
    return np.concatenate(out)


def token_labels(scene: Scene) -> np.ndarray:
    """int64 [tokens, len(FIELDS)]: class + 1 of each field for the object covering the token, 0 for background.

    Motion is a field the vision tower can see: a moving shape drifts within each temporal patch
    (`scenes.scene.NUDGE`), and an image's objects are still."""
    owner = token_objects(scene)
    labels = np.zeros((len(owner), len(FIELDS)), np.int64)
    for k, (field, values) in enumerate(FIELDS):
        classes = np.array([0] + [values.index(getattr(o, field)) + 1 for o in scene.objects])
        labels[:, k] = classes[owner]
    return labels


def token_cells(scene: Scene) -> np.ndarray:
    """int64 [tokens]: the 3x3 grid cell (0 top left .. 8 bottom right) each visual token lies in."""
    rows, cols = HEIGHT // CELL, WIDTH // CELL
    r = ((np.arange(rows) * CELL + CELL / 2) // (HEIGHT / 3)).astype(np.int64)
    c = ((np.arange(cols) * CELL + CELL / 2) // (WIDTH / 3)).astype(np.int64)
    cells = (r[:, None] * 3 + c[None, :]).reshape(-1)
    return np.tile(cells, len(_patch_frames(scene)))


class TokenProbe(nn.Module):
    """Linear heads from merged visual tokens to each field's classes (background down-weighted)."""

    def __init__(self, hidden: int, background_weight: float = 0.1):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, len(values) + 1) for _, values in FIELDS)
        for k, (_, values) in enumerate(FIELDS):
            self.register_buffer(f"class_weight_{k}", torch.tensor([background_weight] + [1.0] * len(values)),
                                 persistent=False)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(nn.functional.cross_entropy(head(features), labels[:, k], weight=getattr(self, f"class_weight_{k}"))
                   for k, head in enumerate(self.heads))
