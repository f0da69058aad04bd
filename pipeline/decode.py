"""Decode media into uint8 RGB frames on CPU workers: decord for video, PIL for images.

Each object is read once: a remote file is copied into a local spool file that decord seeks
in (and reopens at the target size without a second fetch) and PIL reads lazily, and every
file's size is checked against `max_media_bytes` from its metadata before any byte is read.

Each row gets `frames` (packed uint8 [T, H, W, 3]; images have T = 1) and `fps`, the rate of
those frames (the source rate over the sampling stride: the processor turns it into temporal
positions), or is marked failed with the reason. Nothing here raises for one bad item.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import DecodeIsolationConfig, SamplingConfig
from pipeline.manifest import infer_media_type
from pipeline.schema import FAILED, OK, RESULT_SCHEMA, is_present, mark_failed
from pipeline.sandbox import run_isolated
from pipeline.storage import MediaError, spooled
from pipeline.tensors import pack

__all__ = ["MediaError", "decode_media", "decode_row", "sample_indices"]


def _scaled(height: int, width: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class _DecordRefused(MediaError):
    """decord could not open the file; PyAV gets a try (AV1, for one, decord cannot decode)."""


def _open_video(path: str, uri: str, **kwargs):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kwargs)
    except (RuntimeError, decord.DECORDError) as exc:  # how decord reports demuxer/decoder failures
        raise _DecordRefused(f"cannot decode video {uri}: {str(exc).splitlines()[0]}") from exc


def _display_rotation(path: str) -> int:
    """Degrees counterclockwise that the container asks players to turn the picture (a phone's
    display matrix), as one of 0, 90, 180, 270; 0 when PyAV cannot read a frame. decord turns
    its frames itself; PyAV hands them over as stored."""
    import av

    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0), None)
    except (av.FFmpegError, IndexError, ValueError):
        return 0
    return 0 if frame is None else int(round(frame.rotation / 90) * 90) % 360


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    return frames if rotation == 0 else np.ascontiguousarray(np.rot90(frames, rotation // 90, axes=(1, 2)))


def sample_indices(num_total: int, fps: float, num_frames: int, start_s: float | None, end_s: float | None,
                   sample_fps: float | None = None) -> np.ndarray:
    """Uniformly spaced frame indices inside the clip window [start_s, end_s).

    By count (`num_frames`), or by rate (`sample_fps` frames per second of video, capped at
    `num_frames`); decord then seeks to just these frames instead of decoding the whole file.
    """
    duration = num_total / fps if fps > 0 else float(num_total)
    start = 0.0 if start_s is None else float(start_s)
    end = duration if end_s is None else min(float(end_s), duration)
    if start < 0 or start >= duration or end <= start:
        raise MediaError(f"clip window [{start_s}, {end_s}] is outside the video's 0..{duration:.3f}s")
    first = int(start * fps) if fps > 0 else 0
    last = max(first, min(num_total - 1, int(np.ceil(end * fps)) - 1 if fps > 0 else num_total - 1))
    wanted = num_frames if sample_fps is None else max(1, min(num_frames, int((end - start) * sample_fps)))
    count = min(wanted, last - first + 1)
    return np.linspace(first, last, count).round().astype(np.int64)


def _rate(fps: float, indices: np.ndarray) -> float:
    spread = int(indices[-1] - indices[0])
    return fps * (len(indices) - 1) / spread if spread > 0 else fps


def _decode_decord(path: str, uri: str, cfg: SamplingConfig, start_s: float | None,
                   end_s: float | None) -> tuple[np.ndarray, float]:
    probe = _open_video(path, uri)
    if len(probe) == 0:
        raise MediaError(f"video has no frames: {uri}")
    height, width = probe[0].shape[:2]
    fps = float(probe.get_avg_fps())
    indices = sample_indices(len(probe), fps, cfg.num_frames, start_s, end_s, cfg.fps)
    if max(height, width) <= cfg.max_side:
        return probe.get_batch(list(indices)).asnumpy(), _rate(fps, indices)
    h, w = _scaled(height, width, cfg.max_side)
    if _display_rotation(path) in (90, 270):  # decord resizes turned clips into the wrong shape: resize here
        frames = probe.get_batch(list(indices)).asnumpy()
        return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]), _rate(fps, indices)
    probe = _open_video(path, uri, width=w, height=h)  # the local file again, never a second fetch
    return probe.get_batch(list(indices)).asnumpy(), _rate(fps, indices)


def _decode_pyav(path: str, uri: str, cfg: SamplingConfig, start_s: float | None, end_s: float | None,
                 refused: MediaError) -> tuple[np.ndarray, float]:
    """Decode in order up to the last wanted frame: slower than decord's seeking, so only for
    what decord cannot open; fails with decord's reason when PyAV cannot either."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            total = sum(1 for packet in container.demux(stream) if packet.size)
        if total == 0:
            raise MediaError(f"video has no frames: {uri}")
        indices = sample_indices(total, fps, cfg.num_frames, start_s, end_s, cfg.fps)
        wanted, frames = set(indices.tolist()), []
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    h, w = _scaled(frame.height, frame.width, cfg.max_side)
                    frames.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
                if i >= indices[-1]:
                    break
    except (av.FFmpegError, IndexError) as exc:
        raise refused from exc
    if not frames:
        raise refused
    return _upright(np.stack(frames), _display_rotation(path)), _rate(fps, indices[: len(frames)])


def decode_video(uri: str, cfg: SamplingConfig, start_s: float | None, end_s: float | None,
                 keep_spool: bool = False) -> tuple[np.ndarray, float]:
    with spooled(uri, cfg.max_media_bytes, keep=keep_spool) as path:
        try:
            frames, rate = _decode_decord(path, uri, cfg, start_s, end_s)
        except _DecordRefused as refused:
            frames, rate = _decode_pyav(path, uri, cfg, start_s, end_s, MediaError(str(refused)))
        return frames, rate


def decode_image(uri: str, cfg: SamplingConfig) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
    with spooled(uri, cfg.max_media_bytes) as path, Image.open(path) as img:  # reads the header only
        if img.width * img.height > cfg.max_image_pixels:
            raise MediaError(f"image is {img.width}x{img.height}, above max_image_pixels={cfg.max_image_pixels}")
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray((255 * arr / max(arr.max(), 1)).astype(np.uint8))
        img = img.convert("RGB")
        h, w = _scaled(img.height, img.width, cfg.max_side)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.BICUBIC)
        return np.asarray(img)[None]


def decode_media(uri: str, media_type: str, cfg: SamplingConfig, start_s: float | None,
                 end_s: float | None, keep_spool: bool = False) -> tuple[np.ndarray, float]:
    """Frames and fps (0 for images) of one item; what the isolated child process runs.
    `keep_spool`: a clip keeps its remote video's spool copy for the next clip of it."""
    if media_type == "video":
        return decode_video(uri, cfg, start_s, end_s, keep_spool)
    return decode_image(uri, cfg), 0.0


def decode_row(row: dict, cfg: SamplingConfig, isolation: DecodeIsolationConfig | None = None) -> dict:
    """Decode one manifest row; failures become fields on the row.

    With `isolation` enabled the media is decoded in this worker's child process
    (`pipeline.sandbox`), so a decoder crash or hang fails only this row.
    """
    for name in RESULT_SCHEMA.names:  # every row carries every field, so batches share one schema
        row.setdefault(name, None)
    for key in ("start_s", "end_s", "media_type"):
        row[key] = row.get(key) if is_present(row.get(key)) else None
    row["source_id"] = row["source_id"] or row["id"]  # an unsplit row is its own source
    row["status"] = row["status"] or OK
    row["latency_s"] = row["latency_s"] or 0.0
    row["frames"], row["fps"] = b"", 0.0
    if row["status"] == FAILED:
        return row
    started = time.perf_counter()
    try:
        media_type = row.get("media_type") or infer_media_type(row["uri"])
        if media_type not in ("video", "image"):
            raise MediaError(
                f"cannot tell media type of {row['uri']!r}: set media_type to 'video' or 'image'"
            )
        row["media_type"] = media_type
        args = (row["uri"], media_type, cfg, row.get("start_s"), row.get("end_s"), is_present(row.get("clip_index")))
        if isolation is not None and isolation.enabled:
            frames, row["fps"] = run_isolated(decode_media, args, isolation.timeout_s, isolation.max_attempts)
        else:
            frames, row["fps"] = decode_media(*args)
        row["num_frames"] = int(frames.shape[0])
        row["frames"] = pack({"frames": frames})
    except Exception as exc:  # one bad item must become a failed row, whatever it raised
        mark_failed(row, "decode", exc)
    row["latency_s"] += time.perf_counter() - started
    return row
