"""Procedural media with known content: coloured shapes on textured backgrounds.

Used by the demo and the tests to make real mp4 files (PyAV, H.264) and images at run
time, so no media is committed. Seeded, so the same call always writes the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
LOOP_FRAMES = 48  # write_scenes renders this many frames of a scene and plays them back and forth
SCENE_COLOURS = ((200, 60, 60), (40, 40, 140), (230, 220, 90), (40, 120, 50), (220, 120, 220))  # write_scenes' backgrounds: hue and brightness change at each cut


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: int
    x: float
    y: float
    dx: float = 0.0
    dy: float = 0.0


def _mask(kind: str, h: int, w: int, cx: float, cy: float, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    return (yy - cy <= r) & (yy - cy >= -r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)


def background(h: int, w: int, rng: np.random.Generator, base: tuple[int, int, int] | None = None) -> np.ndarray:
    """A smooth, highly redundant texture (around the colour `base`, random if not given): most
    visual tokens carry little information."""
    base = rng.integers(60, 200, size=3) if base is None else np.array(base)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (np.sin(xx / rng.uniform(6, 14)) + np.cos(yy / rng.uniform(6, 14))) * 12
    return np.clip(base[None, None, :] + stripes[..., None], 0, 255).astype(np.uint8)


def random_shapes(rng: np.random.Generator, count: int, h: int, w: int, moving: bool) -> list[Shape]:
    shapes = []
    for _ in range(count):
        size = int(rng.integers(min(h, w) // 12, min(h, w) // 6))
        speed = (rng.uniform(-3, 3), rng.uniform(-3, 3)) if moving else (0.0, 0.0)
        shapes.append(
            Shape(
                kind=str(rng.choice(SHAPES)),
                colour=str(rng.choice(list(COLOURS))),
                size=size,
                x=float(rng.uniform(size, w - size)),
                y=float(rng.uniform(size, h - size)),
                dx=speed[0],
                dy=speed[1],
            )
        )
    return shapes


def render(bg: np.ndarray, shapes: list[Shape], t: int = 0) -> np.ndarray:
    frame = bg.copy()
    h, w = frame.shape[:2]
    for s in shapes:
        frame[_mask(s.kind, h, w, s.x + s.dx * t, s.y + s.dy * t, s.size)] = COLOURS[s.colour]
    return frame


def write_image(path: str | Path, seed: int, size: tuple[int, int] = (224, 320), count: int = 3) -> list[Shape]:
    rng = np.random.default_rng(seed)
    h, w = size
    shapes = random_shapes(rng, count, h, w, moving=False)
    Image.fromarray(render(background(h, w, rng), shapes)).save(path)
    return shapes


def write_video(
    path: str | Path, seed: int, size: tuple[int, int] = (224, 224), frames: int = 16, fps: int = 8, count: int = 2
) -> list[Shape]:
    """Encode an H.264 mp4 of moving shapes with PyAV."""
    rng = np.random.default_rng(seed)
    h, w = size
    shapes = random_shapes(rng, count, h, w, moving=True)
    bg = background(h, w, rng)
    write_frames(path, (render(bg, shapes, t) for t in range(frames)), fps)
    return shapes


def write_scenes(path: str | Path, cuts: list[float], duration: float, seed: int = 0, size: tuple[int, int] = (96, 128),
                 fps: int = 24) -> None:
    """Encode a video of `duration` s whose content changes completely at each time in `cuts`:
    every scene has its own moving shapes on a background of the next colour of SCENE_COLOURS
    (no two neighbours alike), so a shot detector has hard cuts at known times
    (`int(cut * fps) / fps`, the first frame of the new scene)."""
    rng = np.random.default_rng(seed)
    h, w = size
    bounds = [0, *[int(c * fps) for c in cuts], int(round(duration * fps))]

    def frames() -> Iterable[np.ndarray]:
        for scene, (first, stop) in enumerate(zip(bounds, bounds[1:])):
            bg = background(h, w, rng, SCENE_COLOURS[scene % len(SCENE_COLOURS)])
            shapes = random_shapes(rng, 2, h, w, moving=True)
            loop = [render(bg, shapes, t) for t in range(min(LOOP_FRAMES, stop - first))]
            for t in range(stop - first):  # the shapes move back and forth: no jump that looks like a cut
                yield loop[min(t % (2 * LOOP_FRAMES), 2 * LOOP_FRAMES - 1 - t % (2 * LOOP_FRAMES))]

    write_frames(path, frames(), fps)


def write_frames(path: str | Path, frames: Iterable[np.ndarray], fps: int) -> None:
    """Encode RGB uint8 frames [H, W, 3] (even sides) as an H.264 mp4 with PyAV.

    PyAV is imported here, not at the top: training renders scenes in memory and runs where it is not installed.
    """
    import av

    with av.open(str(path), mode="w") as container:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())
