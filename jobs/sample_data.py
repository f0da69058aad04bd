"""A small sample dataset for the demo: generated scenes as real mp4 files and images, and a manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scenes.scene import Scene, scenes

DEMO_SPLIT = "test"  # held-out scenes: the default model never trained on them


def demo_scenes(videos: int = 3, images: int = 3) -> dict[str, Scene]:
    """The demo's scenes by manifest id."""
    out = {f"video-{i}": s for i, s in enumerate(scenes(DEMO_SPLIT, "video", videos))}
    out.update({f"image-{i}": s for i, s in enumerate(scenes(DEMO_SPLIT, "image", images))})
    return out


def make_sample_dataset(root: str | Path, videos: int = 3, images: int = 3, broken: bool = True) -> Path:
    """Write media under `root/media` and return the manifest path.

    With `broken`, one file is not a video at all, so the run shows a failed row.
    """
    media = Path(root) / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for item_id, scene in demo_scenes(videos, images).items():
        suffix = ".mp4" if scene.media_type == "video" else ".png"
        path = scene.write(media / f"{item_id}{suffix}")
        rows.append({"id": item_id, "uri": str(path), "prompt": None})
    if broken:
        path = media / "broken.mp4"
        path.write_bytes(b"this is not a video")
        rows.append({"id": "broken-0", "uri": str(path), "prompt": None})
    manifest = Path(root) / "manifest.parquet"
    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("prompt", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), manifest)
    return manifest
