"""Videos people actually have decode: a codec matrix generated with PyAV, through the decode
stage (`decode_row`, in its isolated child process as in a job) and through a whole job, and
phone clips come out upright."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.config import DecodeIsolationConfig, SamplingConfig
from pipeline.decode import decode_row
from pipeline.tensors import unpack

H, W, FRAMES = 96, 128, 16
# name: (encoder, container suffix, pixel format)
CODECS = {
    "h264": ("libx264", "mp4", "yuv420p"),
    "hevc": ("libx265", "mp4", "yuv420p"),
    "vp8": ("libvpx", "webm", "yuv420p"),
    "vp9": ("libvpx-vp9", "webm", "yuv420p"),
    "av1": ("libsvtav1", "mkv", "yuv420p"),
    "mpeg4": ("mpeg4", "avi", "yuv420p"),
    "mjpeg": ("mjpeg", "avi", "yuvj420p"),
    "prores": ("prores_ks", "mov", "yuv422p10le"),
}


def picture(i: int) -> np.ndarray:
    """A white band that moves right by 8 pixels a frame, and a white square in the top-left corner."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, (8 * i) % W:(8 * i) % W + 16] = 255
    img[:24, :24] = 255
    return img


def encode(path: Path, encoder: str, pix_fmt: str, rotation: int = 0) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded(path: Path, num_frames: int = 4, max_side: int = 448) -> np.ndarray:
    row = decode_row({"id": path.name, "uri": str(path)}, SamplingConfig(num_frames=num_frames, max_side=max_side),
                     DecodeIsolationConfig(timeout_s=60))
    assert row["status"] == "ok", (row["error_type"], row["error"])
    return unpack(row["frames"])["frames"]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_decodes_to_the_sampled_frames(codec, tmp_path):
    encoder, suffix, pix_fmt = CODECS[codec]
    frames = decoded(encode(tmp_path / f"clip.{suffix}", encoder, pix_fmt))
    assert frames.shape == (4, H, W, 3) and frames.dtype == np.uint8
    for frame, index in zip(frames, np.linspace(0, FRAMES - 1, 4).round().astype(int)):
        band = frame[40:].mean(axis=(0, 2))  # below the corner square: only the band is white
        assert abs(int(np.argmax(band > 128)) - (8 * index) % W) <= 2, (codec, index)


@pytest.mark.parametrize("codec", ["h264", "av1"])  # decord's path and PyAV's
def test_phone_clip_comes_out_upright(codec, tmp_path):
    encoder, suffix, pix_fmt = CODECS[codec]
    # A phone held upright stores landscape pictures and a display matrix turning them 90 degrees clockwise.
    path = encode(tmp_path / f"phone.{suffix}", encoder, pix_fmt, rotation=-90)
    for max_side, (h, w), side in ((448, (W, H), 24), (64, (64, 48), 12)):  # as stored, and resized
        frames = decoded(path, num_frames=1, max_side=max_side)
        assert frames.shape == (1, h, w, 3), max_side
        corner = frames[0, :side, -side:].mean()  # the top-left square, turned clockwise, is top-right
        assert corner > 200 and frames[0, -side:, :side].mean() < 60, (max_side, corner)


def test_every_codec_and_a_phone_clip_through_a_whole_job(tmp_path, tiny_model_dir, ray_local):
    """The matrix through the real pipeline (decode, preprocess, model, sink): every clip an ok row
    with its sampled frames, the phone clip's frames upright in the model's input size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import ModelConfig, PipelineConfig
    from pipeline.run import run_pipeline
    from pipeline.sink import read_results

    clips = {name: encode(tmp_path / f"{name}.{suffix}", encoder, pix_fmt) for name, (encoder, suffix, pix_fmt) in CODECS.items()}
    clips["phone"] = encode(tmp_path / "phone.mp4", *CODECS["h264"][::2], rotation=-90)
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": name, "uri": str(path)} for name, path in clips.items()]), manifest)
    cfg = PipelineConfig(input=str(manifest), output={"path": str(tmp_path / "out"), "record_kept_tokens": True},
                         model=ModelConfig(path=str(tiny_model_dir)), sampling=SamplingConfig(num_frames=4),
                         generation={"max_new_tokens": 2})
    report = run_pipeline(cfg)
    rows = {r["id"]: r for r in read_results(cfg.output.path).to_pylist()}
    assert report.this_run.failed == 0 and set(rows) == set(clips)
    for name, row in rows.items():
        assert row["status"] == "ok" and row["media_type"] == "video" and row["num_frames"] == 4, (name, row["error"])
        grid = row["kept_token_indices"]
        # the model saw each clip as stored (landscape), the phone clip turned upright (portrait)
        assert (grid["grid_h"] > grid["grid_w"]) == (name == "phone"), (name, grid["grid_h"], grid["grid_w"])
