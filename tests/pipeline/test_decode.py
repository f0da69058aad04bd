import numpy as np
import pytest
from PIL import Image

from pipeline.config import SamplingConfig
from pipeline.decode import decode_row, sample_indices
from pipeline.tensors import unpack


def row(uri, **kw):
    base = {"id": "x", "uri": str(uri), "media_type": None, "prompt": None, "start_s": None, "end_s": None}
    base.update(kw)
    return base


def frames_of(r):
    return unpack(r["frames"])["frames"]


def test_video_uniform_sampling(media):
    r = decode_row(row(media["video"]), SamplingConfig(num_frames=4))
    assert r["status"] == "ok", r.get("error")
    f = frames_of(r)
    assert f.shape == (4, 224, 224, 3) and f.dtype == np.uint8
    # 4 of the 16 frames at 8 fps (indices 0, 5, 10, 15): the processor's temporal positions need
    # the rate of the frames it gets, 8 * 3 / 15 = 1.6 per second, not the file's
    assert r["num_frames"] == 4 and r["fps"] == pytest.approx(1.6)
    assert decode_row(row(media["video"]), SamplingConfig(num_frames=16))["fps"] == pytest.approx(8.0)
    assert r["media_type"] == "video"


def test_clip_window_selects_frames_inside_it():
    idx = sample_indices(num_total=40, fps=8.0, num_frames=4, start_s=1.0, end_s=3.0)
    assert idx.tolist() == [8, 13, 18, 23]
    assert sample_indices(10, 10.0, 32, None, None).tolist() == list(range(10))


def test_sampling_by_fps_is_capped_by_num_frames(media):
    # 80 frames at 8 fps = 10 s of video; 1 frame per second gives 10 frames, evenly spread.
    assert sample_indices(num_total=80, fps=8.0, num_frames=32, start_s=None, end_s=None, sample_fps=1.0).tolist() == [
        0, 9, 18, 26, 35, 44, 53, 61, 70, 79]
    assert len(sample_indices(80, 8.0, 4, None, None, sample_fps=2.0)) == 4
    r = decode_row(row(media["video_long"], start_s=1.0, end_s=3.0), SamplingConfig(num_frames=16, fps=2.0))
    assert r["status"] == "ok" and r["num_frames"] == 4


def test_clip_window_on_real_video_and_resize(media):
    r = decode_row(row(media["video_long"], start_s=1.0, end_s=2.0), SamplingConfig(num_frames=3, max_side=120))
    assert r["status"] == "ok", r.get("error")
    assert frames_of(r).shape == (3, 80, 120, 3)


@pytest.mark.parametrize("start,end", [(-1.0, 2.0), (3.0, 2.0), (100.0, None)])
def test_bad_clip_window_is_a_failed_row(media, start, end):
    r = decode_row(row(media["video"], start_s=start, end_s=end), SamplingConfig())
    assert r["status"] == "failed" and r["stage"] == "decode"
    assert r["error_type"] == "MediaError" and "clip window" in r["error"]


def test_image_is_one_frame(media):
    r = decode_row(row(media["image"]), SamplingConfig())
    assert r["status"] == "ok"
    assert frames_of(r).shape == (1, 224, 320, 3)


@pytest.mark.parametrize(
    "key,error_type,needle",
    [
        ("empty", "MediaError", "empty file"),
        ("corrupt", "MediaError", "cannot decode video"),
        ("truncated", "MediaError", "cannot decode video"),
        ("text", "MediaError", "cannot tell media type"),
    ],
)
def test_bad_media_becomes_failed_row(media, key, error_type, needle):
    r = decode_row(row(media[key]), SamplingConfig())
    assert (r["status"], r["stage"], r["error_type"]) == ("failed", "decode", error_type)
    assert needle in r["error"]
    assert r["frames"] == b""


def test_missing_file_and_directory(tmp_path):
    r = decode_row(row(tmp_path / "gone.mp4"), SamplingConfig())
    assert r["error_type"] == "FileNotFoundError"
    r = decode_row(row(tmp_path, media_type="video"), SamplingConfig())
    assert r["status"] == "failed" and "not a file" in r["error"]


def test_image_modes_and_exif(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 20), (10, 20, 30, 128)).save(rgba)
    gray16 = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(gray16)
    rotated = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    img.save(rotated, exif=exif)
    for path, shape in ((rgba, (1, 20, 40, 3)), (gray16, (1, 8, 8, 3)), (rotated, (1, 40, 20, 3))):
        r = decode_row(row(path), SamplingConfig())
        assert r["status"] == "ok", r.get("error")
        assert frames_of(r).shape == shape
    assert frames_of(decode_row(row(gray16), SamplingConfig())).max() == 255


def test_huge_image_is_refused(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000)).save(big)
    r = decode_row(row(big), SamplingConfig(max_image_pixels=1_000_000))
    assert r["status"] == "failed"
    assert "max_image_pixels" in r["error"] or r["error_type"] == "DecompressionBombError"


def test_batch_of_ok_and_failed_rows_keeps_every_field(media, tmp_path):
    """A batch is built from its rows; a failure's fields must survive an ok first row."""
    import pyarrow as pa

    from pipeline.stages import run_stages

    table = pa.Table.from_pylist([row(media["image"]), {**row(tmp_path / "gone.png"), "id": "y"}])
    out = run_stages(table, steps=[("decode", decode_row, {"cfg": SamplingConfig()})], board=None,
                     tags={"job": "j", "task": "caption", "method": "iwp"}).to_pylist()
    assert [r["status"] for r in out] == ["ok", "failed"]
    assert out[1]["error_type"] == "FileNotFoundError" and out[1]["stage"] == "decode"
