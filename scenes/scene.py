"""Seeded procedural scenes with known ground truth, for training and evaluating the reference VLM.

A scene is a few coloured shapes (colour, shape, size, a cell of a 3x3 grid, and for
video a motion direction) on a smooth textured background. Only the few tokens covering
the shapes answer the question, so most visual tokens are redundant: the setting visual-token
pruning is about. Captions and tag answers are derived deterministically from the ground
truth with words the word-level tokenizer knows (`reference.builders.WORDS`).

Shapes sit on the 28-pixel grid of merged visual tokens: a small shape fills the middle of one
token, a large one is centred on a token corner, and a moving shape steps one token per
temporal patch (two frames). So every token it covers holds the whole shape or one quarter of
it, and a model this small, trained on a CPU in minutes, learns shapes. Placed at random
offsets, shapes are cut arbitrarily by token edges, and in development runs neither a per-token
classifier on the raw pixels nor the vision tower learned the kind much above chance.
Within a temporal patch a moving shape also drifts `NUDGE` pixels from the first frame to the
second, as it would in real footage: the vision tower embeds each patch's two frames together
(Qwen2.5-VL's 3-D patch embedding) and so sees the motion in every token of the shape. With
whole-token steps between patches only, motion was visible to the decoder alone, which must
compare positions a token apart across patches.

Splits draw from disjoint seed streams, so train, val and test never share a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scenes.media import COLOURS, SHAPES, write_frames

TOKEN_PX = 28  # pixels per side of one merged visual token (patch 14, 2x2 merge)
TEMPORAL_PATCH = 2  # frames per video token
HEIGHT, WIDTH = 392, 448  # 14 x 16 visual tokens
VIDEO_FRAMES, VIDEO_FPS = 8, 4  # 4 temporal patches x 224 = 896 video tokens
SIZES = {"small": (9, 11), "large": (19, 23)}  # radius in px: one token, or a 2x2 block of tokens
MOTIONS = ("still", "left", "right", "up", "down")
ROWS, COLS = ("top", "center", "bottom"), ("left", "center", "right")
TRAVEL = 3 * TOKEN_PX  # pixels a moving shape steps from the first to the last temporal patch
NUDGE = 7  # pixels it drifts from the first to the second frame of a temporal patch
SPLITS = {"train": 0, "val": 1, "test": 2}
MEDIA_TYPES = ("image", "video")
MAX_OBJECTS = {"image": 3, "video": 2}
TAG_VOCABULARY = (*COLOURS, *SHAPES, *SIZES, "moving", "still")
PROMPTS = {"image": "describe this image .", "video": "describe this video ."}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major: 0 top left, 4 center, 8 bottom right (where it is in the first frame)
    motion: str  # "still" for images
    x: float
    y: float
    radius: int

    @property
    def position(self) -> str:
        row, col = ROWS[self.cell // 3], COLS[self.cell % 3]
        if row == col:
            return "center"
        return f"{row} {col}"

    def centre(self, t: int, frames: int) -> tuple[float, float]:
        """Where it is in frame t: whole-token steps between temporal patches, a `NUDGE` within one."""
        step = TRAVEL * (t // TEMPORAL_PATCH) / max(1, (frames - 1) // TEMPORAL_PATCH) + NUDGE * (t % TEMPORAL_PATCH)
        dx, dy = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[self.motion]
        return self.x + dx * step, self.y + dy * step

    def phrase(self, video: bool) -> str:
        text = f"a {self.size} {self.colour} {self.shape} at {self.position}"
        if video:
            text += " still" if self.motion == "still" else f" moving {self.motion}"
        return text


@dataclass(frozen=True)
class Scene:
    media_type: str
    seed: int
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int, float, float]  # base grey, tint, stripe periods

    @property
    def num_frames(self) -> int:
        return VIDEO_FRAMES if self.media_type == "video" else 1

    @property
    def prompt(self) -> str:
        return PROMPTS[self.media_type]

    def caption(self) -> str:
        """Objects in reading order of their grid cell, comma separated."""
        video = self.media_type == "video"
        return " , ".join(o.phrase(video) for o in self.objects) + " ."

    def tags(self) -> list[str]:
        """The tag answer as a list, in vocabulary order."""
        present = {o.colour for o in self.objects} | {o.shape for o in self.objects} | {o.size for o in self.objects}
        if self.media_type == "video":
            present |= {"still" if o.motion == "still" else "moving" for o in self.objects}
        return [t for t in TAG_VOCABULARY if t in present]

    def tag_answer(self) -> str:
        return " , ".join(self.tags())

    def frames(self) -> np.ndarray:
        """RGB uint8 [T, H, W, 3]."""
        base = _background(*self.background)
        out = np.empty((self.num_frames, HEIGHT, WIDTH, 3), np.uint8)
        for t in range(self.num_frames):
            frame = base.copy()
            for o in self.objects:
                cx, cy = o.centre(t, self.num_frames)
                frame[_mask(o.shape, cx, cy, o.radius)] = COLOURS[o.colour]
            out[t] = frame
        return out

    def object_map(self, t: int = 0) -> np.ndarray:
        """int [H, W]: 1 + the index of the object drawn at each pixel of frame t, 0 for background."""
        out = np.zeros((HEIGHT, WIDTH), np.int64)
        for i, o in enumerate(self.objects):
            cx, cy = o.centre(t, self.num_frames)
            out[_mask(o.shape, cx, cy, o.radius)] = i + 1
        return out

    def write(self, path: str | Path) -> Path:
        """Save as PNG (image) or H.264 mp4 (video); returns the path."""
        path = Path(path)
        frames = self.frames()
        if self.media_type == "image":
            Image.fromarray(frames[0]).save(path)
        else:
            write_frames(path, frames, VIDEO_FPS)
        return path


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH]


def _mask(shape: str, cx: float, cy: float, r: int) -> np.ndarray:
    if shape == "circle":
        return (_XX - cx) ** 2 + (_YY - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(_XX - cx) <= r * 0.85) & (np.abs(_YY - cy) <= r * 0.85)
    return (_YY - cy <= r) & (_YY - cy >= -r) & (np.abs(_XX - cx) <= (_YY - cy + r) * 0.6)


def _background(grey: int, tint: int, channel: int, px: float, py: float) -> np.ndarray:
    """A smooth low-saturation stripe texture, never close to a shape colour."""
    base = np.full(3, grey, np.float32)
    base[channel] += tint
    stripes = (np.sin(_XX / px) + np.cos(_YY / py)) * 10
    return np.clip(base[None, None, :] + stripes[..., None], 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, cell: int, radius: int, video: bool) -> tuple[float, float, str]:
    """A centre on the token grid inside `cell`: a token's middle for a small shape, a token corner for a large one."""
    offset = TOKEN_PX // 2 if radius < TOKEN_PX // 2 else 0
    margin = radius + 6
    row, col = divmod(cell, 3)

    def snapped(lo: float, hi: float) -> float:
        steps = np.arange(math.ceil((lo - offset) / TOKEN_PX), math.floor((hi - offset) / TOKEN_PX) + 1)
        return float(TOKEN_PX * rng.choice(steps) + offset)

    x = snapped(col * WIDTH / 3 + margin, (col + 1) * WIDTH / 3 - margin)
    y = snapped(row * HEIGHT / 3 + margin, (row + 1) * HEIGHT / 3 - margin)
    if not video:
        return x, y, "still"
    reach = TRAVEL + NUDGE + radius
    room = {"still": True, "left": x - reach >= 2, "right": x + reach <= WIDTH - 2,
            "up": y - reach >= 2, "down": y + reach <= HEIGHT - 2}
    return x, y, str(rng.choice([m for m in MOTIONS if room[m]]))


def _sweep(o: SceneObject, frames: int) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = o.centre(0, frames), o.centre(frames - 1, frames)
    r = o.radius + 4
    return min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_scene(split: str, media_type: str, index: int) -> Scene:
    """Scene `index` of a split: the same arguments always give the same scene."""
    if split not in SPLITS or media_type not in MEDIA_TYPES:
        raise ValueError(f"split must be one of {tuple(SPLITS)} and media_type one of {MEDIA_TYPES}")
    seed = int(np.random.SeedSequence([SPLITS[split], MEDIA_TYPES.index(media_type), index]).generate_state(1)[0])
    rng = np.random.default_rng(seed)
    video = media_type == "video"
    frames = VIDEO_FRAMES if video else 1
    background = (int(rng.integers(70, 170)), int(rng.integers(-12, 13)), int(rng.integers(0, 3)),
                  float(rng.uniform(6, 14)), float(rng.uniform(6, 14)))
    count = int(rng.integers(1, MAX_OBJECTS[media_type] + 1))
    while True:
        cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
        objects = []
        for cell in cells:
            size = str(rng.choice(list(SIZES)))
            radius = int(rng.integers(*SIZES[size], endpoint=True))
            x, y, motion = _place(rng, cell, radius, video)
            objects.append(SceneObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), size, cell, motion,
                                       x, y, radius))
        sweeps = [_sweep(o, frames) for o in objects]
        if not any(_overlap(a, b) for i, a in enumerate(sweeps) for b in sweeps[i + 1:]):
            return Scene(media_type, seed, tuple(objects), background)


def scenes(split: str, media_type: str, count: int, start: int = 0) -> list[Scene]:
    return [make_scene(split, media_type, i) for i in range(start, start + count)]
