"""A small sample dataset for the demo: real mp4 files, images and a manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reference.media import write_image, write_video


def make_sample_dataset(root: str | Path, videos: int = 3, images: int = 3, broken: bool = True) -> Path:
    """Write media under `root/media` and return the manifest path.

    With `broken`, one file is not a video at all, so the run shows a failed row.
    """
    media = Path(root) / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(videos):
        path = media / f"clip_{i}.mp4"
        write_video(path, seed=100 + i, frames=16)
        rows.append({"id": f"video-{i}", "uri": str(path), "prompt": None})
    for i in range(images):
        path = media / f"image_{i}.png"
        write_image(path, seed=200 + i)
        rows.append({"id": f"image-{i}", "uri": str(path), "prompt": None})
    if broken:
        path = media / "broken.mp4"
        path.write_bytes(b"this is not a video")
        rows.append({"id": "broken-0", "uri": str(path), "prompt": None})
    manifest = Path(root) / "manifest.parquet"
    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("prompt", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), manifest)
    return manifest
