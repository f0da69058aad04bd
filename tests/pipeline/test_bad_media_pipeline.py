"""Many kinds of bad media and manifest rows through the real pipeline: each id exactly once."""

from __future__ import annotations

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ModelConfig, PipelineConfig, SamplingConfig
from pipeline.run import run_pipeline
from pipeline.sink import read_dead_letter, read_results
from scenes.media import write_video


def audio_only(path):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, media, tiny_model_dir, ray_local):
    root = tmp_path_factory.mktemp("bad")
    (root / "a directory.mp4").mkdir()
    audio_only(root / "audio.mp4")
    write_video(root / "one_frame.mp4", seed=5, frames=1)
    Image.new("RGB", (2000, 1500), (9, 9, 9)).save(root / "huge.png")
    png = (root / "ok.png")
    Image.new("RGB", (64, 48), (200, 10, 10)).save(png)
    (root / "corrupt.png").write_bytes(png.read_bytes()[:40] + b"garbage" * 20)
    Image.new("L", (50, 40), 128).save(root / "gray.jpg")
    Image.new("RGB", (1, 1), (5, 6, 7)).save(root / "tiny.png")
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    rows = [
        # (id, uri, media_type, start_s, end_s, expected status, expected error_type)
        ("ok-video", media["video"], None, None, None, "ok", None),
        ("ok-unicode", media["video_long"], None, 0.5, 2.0, "ok", None),
        ("ok-one-frame", root / "one_frame.mp4", None, None, None, "ok", None),
        ("ok-gray", root / "gray.jpg", None, None, None, "ok", None),
        ("ok-tiny", root / "tiny.png", None, None, None, "ok", None),
        ("ok-gif", root / "anim.gif", None, None, None, "ok", None),
        ("zero-byte", media["empty"], None, None, None, "failed", "MediaError"),
        ("truncated", media["truncated"], None, None, None, "failed", "MediaError"),
        ("not-a-video", media["corrupt"], None, None, None, "failed", "MediaError"),
        ("audio-only", root / "audio.mp4", None, None, None, "failed", "MediaError"),
        ("missing", root / "missing.mp4", None, None, None, "failed", "FileNotFoundError"),
        ("directory", root / "a directory.mp4", None, None, None, "failed", "MediaError"),
        ("huge-image", root / "huge.png", None, None, None, "failed", "MediaError"),
        ("corrupt-png", root / "corrupt.png", None, None, None, "failed", "UnidentifiedImageError"),
        ("window-after-end", media["video"], None, 30.0, 40.0, "failed", "MediaError"),
        ("window-reversed", media["video"], None, 1.5, 0.5, "failed", "MediaError"),
        ("window-negative", media["video"], None, -2.0, 1.0, "failed", "MediaError"),
        ("unknown-extension", media["text"], None, None, None, "failed", "MediaError"),
        ("video-as-image", media["video"], "image", None, None, "failed", "UnidentifiedImageError"),
        ("bad-media-type", media["video"], "audio", None, None, "failed", "MediaError"),
        ("bad-scheme", "nosuchscheme://bucket/x.mp4", None, None, None, "failed", None),
        ("empty-uri", "", None, None, None, "failed", None),
    ]
    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("media_type", pa.string()),
                        ("start_s", pa.float64()), ("end_s", pa.float64())])
    table = pa.Table.from_pylist(
        [dict(zip(schema.names, (r[0], str(r[1]), r[2], r[3], r[4]))) for r in rows], schema=schema)
    pq.write_table(table, root / "manifest.parquet")
    cfg = PipelineConfig(
        input=str(root / "manifest.parquet"), output=str(root / "out"), model=ModelConfig(path=str(tiny_model_dir)),
        sampling=SamplingConfig(num_frames=4, max_image_pixels=2_000_000),
    )
    run_pipeline(cfg)
    return rows, read_results(cfg.output.path), read_dead_letter(cfg.output.path)


def test_each_id_exactly_once(bad_run):
    rows, results, _ = bad_run
    assert len(rows) >= 15
    assert sorted(results["id"].to_pylist()) == sorted(r[0] for r in rows)


def test_statuses_and_error_types(bad_run):
    rows, results, _ = bad_run
    got = {r["id"]: r for r in results.to_pylist()}
    for item_id, *_, status, error_type in rows:
        row = got[item_id]
        assert row["status"] == status, (item_id, row["error_type"], row["error"])
        if status == "failed":
            assert row["error"] and row["stage"] == "decode", item_id
            if error_type:
                assert row["error_type"] == error_type, (item_id, row["error_type"], row["error"])
        else:
            assert row["caption"], item_id


def test_failed_rows_also_in_dead_letter(bad_run):
    rows, results, dead = bad_run
    failed = {r[0] for r in rows if r[5] == "failed"}
    assert set(dead["id"].to_pylist()) == failed
    assert all(r["attempt"] == 1 and r["stage"] and r["error_type"] for r in dead.to_pylist())
