"""Where one video's clips lie: its duration probed, its shot cuts found, its windows laid out.

Fixed mode reads only the container's metadata (milliseconds per video). Shots mode decodes
the video once with PyAV, hands every `1/DETECT_FPS` seconds a `DETECT_WIDTH`-pixel-wide BGR
frame to PySceneDetect's ContentDetector and keeps its cuts: the detector sees a few hundred
tiny frames per minute instead of every full-size frame, so its cost per hour of video is
mostly the decoder's (measured by `benchmarks/bench_clips.py`). A cut is reported at the first
analysed frame of the new shot, so it is at most `1/DETECT_FPS` s after the true one.

Everything here is per video and pure of Ray; `pipeline.plans` runs it as a stage.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.config import ClipsConfig
from pipeline.storage import MediaError

DETECT_FPS = 8.0  # analysed frames per second of video: cut times are exact to 1/8 s
DETECT_WIDTH = 96  # pixels across an analysed frame (height keeps the aspect, even)
DETECT_THRESHOLD = 27.0  # PySceneDetect's default ContentDetector threshold

Window = tuple[float, float]


def fixed_windows(start: float, end: float, length: float, stride: float, min_length: float) -> list[Window]:
    """Windows of `length` s starting every `stride` s in [start, end), the last one cut at `end`.

    Laying stops at the first window that reaches `end`. A last window shorter than
    `min_length` joins the one before when they touch (stride <= length) and is dropped when a
    gap parts them; a span shorter than `min_length` is one short window.
    """
    # The tolerance keeps a float error in a duration from adding a window of a microsecond.
    count = math.ceil((end - start - length) / stride - 1e-6) + 1 if end - start > length else 1
    starts = start + stride * np.arange(count)
    ends = np.minimum(starts + length, end)
    keep = starts < end
    windows = [(float(s), float(e)) for s, e in zip(starts[keep], ends[keep])]
    if len(windows) > 1 and windows[-1][1] - windows[-1][0] < min_length:
        last = windows.pop()
        if stride <= length:
            windows[-1] = (windows[-1][0], last[1])
    return windows


def shot_windows(cuts: list[float], start: float, end: float, min_length: float,
                 max_length: float | None) -> list[Window]:
    """Shots between `cuts` in [start, end): slivers shorter than `min_length` merged into the
    shot before (the first into the one after), then shots longer than `max_length` split into
    the fewest equal windows no longer than it."""
    bounds = [start, *sorted(c for c in cuts if start < c < end), end]
    shots = [[a, b] for a, b in zip(bounds, bounds[1:])]
    merged: list[list[float]] = []
    for shot in shots:
        if merged and (shot[1] - shot[0] < min_length or merged[-1][1] - merged[-1][0] < min_length):
            merged[-1][1] = shot[1]
        else:
            merged.append(shot)
    windows: list[Window] = []
    for a, b in merged:
        parts = 1 if max_length is None else max(1, math.ceil((b - a) / max_length - 1e-9))
        edges = np.linspace(a, b, parts + 1)
        windows += [(float(x), float(y)) for x, y in zip(edges, edges[1:])]
    return windows


def _video_stream(container, uri: str):
    if not container.streams.video:
        raise MediaError(f"no video stream in {uri}")
    return container.streams.video[0]


def probe_duration(path: Any, uri: str) -> float:
    """Seconds of video from the container's metadata; the packets' timestamps where it has none."""
    import av

    try:
        with av.open(path) as container:
            stream = _video_stream(container, uri)
            if stream.duration and stream.time_base:
                return _positive(float(stream.duration * stream.time_base), uri)
            end = 0.0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            return _positive(end - float((stream.start_time or 0) * stream.time_base), uri)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot open video {uri}: {exc}") from exc


def _positive(duration: float, uri: str) -> float:
    if not duration > 0:
        raise MediaError(f"video has no frames: {uri}")
    return duration


def detect_cuts(path: Any, uri: str, start: float, end: float) -> tuple[list[float], float]:
    """Shot cut times (s) inside [start, end) and the video's duration from its last frame.

    Every frame is decoded (inter frames need their references) but only one per
    1/DETECT_FPS s is scaled (by libswscale, one context reused) to DETECT_WIDTH pixels for the detector.
    """
    import av
    from av.video.reformatter import VideoReformatter
    from scenedetect import ContentDetector, FrameTimecode

    scaler = VideoReformatter()  # one scaler for the whole video: a new one per frame costs more than the decoding
    detector = ContentDetector(threshold=DETECT_THRESHOLD, min_scene_len=0.0)
    cuts: list[float] = []
    next_at, duration, last = start, 0.0, None
    try:
        with av.open(path) as container:
            stream = _video_stream(container, uri)
            base = float((stream.start_time or 0) * stream.time_base)
            rate = float(stream.average_rate or 25)
            if start > 0:
                container.seek(int((start + base) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base) - base
                duration = max(duration, t + 1 / rate)
                if t >= end:
                    break
                if t < next_at:
                    continue
                next_at = t + (1 - 1e-3) / DETECT_FPS  # the tolerance keeps a 24 fps video on every third frame
                height = max(2, round(DETECT_WIDTH * frame.height / frame.width / 2) * 2)
                image = scaler.reformat(frame, width=DETECT_WIDTH, height=height, format="bgr24",
                                        interpolation="AREA").to_ndarray()
                timecode = FrameTimecode(t, fps=rate)
                cuts += [c.seconds for c in detector.process_frame(timecode, image)]
                last = timecode
            if last is not None:
                cuts += [c.seconds for c in detector.post_process(last)]
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode video {uri}: {exc}") from exc
    if last is None:
        raise MediaError(f"video has no frames: {uri}" if duration == 0 else
                         f"clip window [{start}, {end}] is outside the video's 0..{duration:.3f}s")
    return [c for c in cuts if start < c < end], duration


def plan_video(path: Any, uri: str, cfg: ClipsConfig, start_s: float | None, end_s: float | None) -> list[Window]:
    """The clip windows (seconds from the video's start, in time order) of one video (`path`: a
    local path or a seekable file object, as `av.open` takes), inside the
    manifest row's own window when it has one; MediaError when it cannot be opened or the window
    lies outside it."""
    start = 0.0 if start_s is None else float(start_s)
    if cfg.mode == "shots":
        cuts, duration = detect_cuts(path, uri, start, math.inf if end_s is None else float(end_s))
    else:
        duration = probe_duration(path, uri)
    end = duration if end_s is None else min(float(end_s), duration)
    if start < 0 or start >= duration or end <= start:
        raise MediaError(f"clip window [{start_s}, {end_s}] is outside the video's 0..{duration:.3f}s")
    if cfg.mode == "shots":
        return shot_windows(cuts, start, end, cfg.min_length_s, cfg.max_length_s)
    assert cfg.length_s is not None  # ClipsConfig refuses fixed mode without it
    return fixed_windows(start, end, cfg.length_s, cfg.stride_s or cfg.length_s, cfg.min_length_s)
