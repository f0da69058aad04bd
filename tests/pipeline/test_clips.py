"""Clip planning without Ray: the windows laid out, shot cuts found on real generated mp4s,
bad sources as single rows, and the clips settings refused or accepted as documented."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline import clips as clips_module
from pipeline.clips import DETECT_FPS, fixed_windows, plan_video, shot_windows
from pipeline.config import ClipsConfig
from pipeline.plans import plan_batch
from pipeline.storage import MediaError
from scenes.media import write_scenes

CUTS = [11.3, 23.71, 36.05, 47.9]  # between the detector's analysed frames, on purpose
FPS = 24


@pytest.fixture(scope="module")
def scenes_60s(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "five scenes.mp4"
    write_scenes(path, CUTS, 60, seed=5, size=(96, 128), fps=FPS)
    return path


def flat(windows: list[tuple[float, float]]) -> list[float]:
    return [x for w in windows for x in w]


def zero_length_video(path: Path) -> Path:
    """An mp4 container with a video track and not one frame in it."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    return path


def test_fixed_windows_of_ten_seconds_over_a_minute():
    assert fixed_windows(0, 60, 10, 10, 1) == [(a, a + 10) for a in range(0, 60, 10)]


def test_fixed_windows_overlap_stop_at_the_end_and_merge_a_sliver():
    assert fixed_windows(0, 30, 10, 5, 1) == [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30)]
    assert fixed_windows(0, 30.5, 10, 10, 1) == [(0, 10), (10, 20), (20, 30.5)]  # 0.5 s joins the last
    assert fixed_windows(0, 35, 10, 10, 1) == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert fixed_windows(0, 30.5, 2, 10, 1) == [(0, 2), (10, 12), (20, 22)]  # a sliver past a gap is dropped
    assert fixed_windows(5, 8, 10, 10, 1) == [(5, 8)]  # shorter than a window: one clip of what there is


def test_shot_windows_merge_slivers_and_split_long_shots():
    assert shot_windows([10, 10.4, 30], 0, 40, 1, None) == [(0, 10.4), (10.4, 30), (30, 40)]
    assert shot_windows([0.3, 10], 0, 20, 1, None) == [(0, 10), (10, 20)]  # a first sliver joins the next shot
    assert flat(shot_windows([10], 0, 35, 1, 10)) == pytest.approx(flat([(0, 10), (10, 10 + 25 / 3), (10 + 25 / 3, 10 + 50 / 3),
                                                                         (10 + 50 / 3, 35)]))
    assert shot_windows([], 2, 2.5, 1, None) == [(2, 2.5)]


def test_fixed_mode_gives_six_clips_of_a_minute_with_five_scenes(scenes_60s):
    windows = plan_video(str(scenes_60s), "v", ClipsConfig(length_s=10), None, None)
    assert flat(windows) == pytest.approx(flat([(a, a + 10) for a in range(0, 60, 10)]))


def test_shots_mode_finds_every_cut_within_a_quarter_second(scenes_60s, monkeypatch):
    analysed = []
    real = clips_module.detect_cuts

    def counting(*args):
        from scenedetect import ContentDetector

        original = ContentDetector.process_frame
        monkeypatch.setattr(ContentDetector, "process_frame",
                            lambda self, tc, img: analysed.append(img.shape) or original(self, tc, img))
        return real(*args)

    monkeypatch.setattr(clips_module, "detect_cuts", counting)
    windows = plan_video(str(scenes_60s), "v", ClipsConfig(mode="shots"), None, None)
    starts = [a for a, _ in windows]
    assert len(windows) == len(CUTS) + 1 and starts[0] == 0 and windows[-1][1] == pytest.approx(60, abs=0.05)
    true_cuts = [int(c * FPS) / FPS for c in CUTS]  # the first frame of each new scene
    assert max(abs(a - b) for a, b in zip(starts[1:], true_cuts)) <= 0.25
    # A low-resolution frame per 1/DETECT_FPS s reaches the detector, not every frame at full size.
    assert len(analysed) <= 60 * DETECT_FPS + 1 < 60 * FPS
    assert {shape[1] for shape in analysed} == {clips_module.DETECT_WIDTH}


def test_a_manifest_window_limits_what_is_split(scenes_60s):
    assert flat(plan_video(str(scenes_60s), "v", ClipsConfig(length_s=10), 5, 32)) == pytest.approx(
        flat([(5, 15), (15, 25), (25, 32)]))
    shots = plan_video(str(scenes_60s), "v", ClipsConfig(mode="shots"), 20, 40)
    assert [round(a) for a, _ in shots] == [20, 24, 36] and shots[-1][1] == 40
    with pytest.raises(MediaError, match="outside the video"):
        plan_video(str(scenes_60s), "v", ClipsConfig(length_s=10), 70, None)


def test_a_two_hour_video_is_planned_in_bounded_memory(tmp_path):
    path = tmp_path / "two hours.mp4"
    cuts = [600.0 * k for k in range(1, 12)]
    write_scenes(path, cuts, 7200, seed=7, size=(32, 48), fps=1)  # tiny and slow, so the test stays quick
    for cfg, count in ((ClipsConfig(length_s=10), 720), (ClipsConfig(mode="shots", max_length_s=300), 24)):
        tracemalloc.start()
        try:
            windows = plan_video(str(path), "long", cfg, None, None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(windows) == count and windows[-1][1] == pytest.approx(7200, abs=1.5)
        assert peak < 32 << 20  # frames are analysed one at a time and dropped, never collected


def sources(rows: list[dict]) -> pa.Table:
    """Manifest rows still to plan, as the plan stage gets them."""
    return pa.Table.from_pylist([{"media_type": None, "prompt": None, "start_s": None, "end_s": None,
                                  "source_id": None, "clip_index": None, "attempt": 1, **r} for r in rows],
                                schema=pa.schema([("id", pa.string()), ("uri", pa.string()), ("media_type", pa.string()),
                                                  ("prompt", pa.string()), ("start_s", pa.float64()),
                                                  ("end_s", pa.float64()), ("source_id", pa.string()),
                                                  ("clip_index", pa.int32()), ("attempt", pa.int32())]))


def _planned(tmp_path: Path, rows: list[dict], cfg: ClipsConfig) -> list[dict]:
    return plan_batch(sources(rows), clips=cfg, max_bytes=1 << 30, output=str(tmp_path / "out"), fingerprint="f",
                      run_id="r").to_pylist()


def test_bad_sources_are_one_failed_row_and_a_short_video_one_short_clip(tmp_path, media):
    short = tmp_path / "short.mp4"
    write_scenes(short, [], 0.5, size=(64, 64), fps=8)
    rows = [{"id": "zero", "uri": str(zero_length_video(tmp_path / "zero.mp4"))},
            {"id": "empty", "uri": str(media["empty"])},
            {"id": "broken", "uri": str(media["corrupt"])},
            {"id": "short", "uri": str(short)},
            {"id": "picture", "uri": str(media["image"])}]
    for cfg in (ClipsConfig(length_s=10, min_length_s=2), ClipsConfig(mode="shots", min_length_s=2)):
        out: dict[str, list[dict]] = {r["id"]: [] for r in rows}
        for row in _planned(tmp_path, rows, cfg):
            out[row["source_id"]].append(row)
        for name in ("zero", "empty", "broken"):
            [row] = out[name]
            assert (row["id"], row["status"], row["stage"], row["error_type"], row["clip_index"]) == (
                name, "failed", "plan", "MediaError", None)
        [clip] = out["short"]
        assert (clip["id"], clip["clip_index"], clip["start_s"], clip.get("status")) == ("short#0", 0, 0.0, None)
        assert clip["end_s"] == pytest.approx(0.5, abs=0.13)
        [image] = out["picture"]  # images are never split
        assert (image["id"], image["clip_index"], image["start_s"]) == ("picture", None, None)


@pytest.mark.parametrize("given, problem", [
    ({"mode": "fixed"}, "mode fixed needs length_s"),
    ({"mode": "shots", "length_s": 5}, "length_s and stride_s apply to mode fixed"),
    ({"mode": "none", "stride_s": 5}, "length_s and stride_s apply to mode fixed"),
    ({"length_s": 5, "max_length_s": 20}, "max_length_s applies to mode shots"),
    ({"mode": "shots", "max_length_s": 1, "min_length_s": 2}, "below min_length_s"),
    ({"length_s": 0}, "greater than 0"),
])
def test_inconsistent_clip_settings_are_refused_by_name(given, problem):
    with pytest.raises(ValidationError, match=problem):
        ClipsConfig(**given)


def test_length_alone_means_fixed_and_the_default_splits_nothing():
    assert ClipsConfig(length_s=10).mode == "fixed"
    assert not ClipsConfig().enabled


def test_a_source_that_crashes_the_planner_fails_alone(tmp_path, scenes_60s, monkeypatch):
    from pipeline import sandbox
    from pipeline.config import DecodeIsolationConfig
    from pipeline.failpoints import PLAN_CRASH_ENV

    monkeypatch.setenv(PLAN_CRASH_ENV, "crashes")
    sandbox._SANDBOX.close()  # a new child, which sees the failpoint
    crashing = tmp_path / "crashes.mp4"
    crashing.write_bytes(scenes_60s.read_bytes())
    rows = [{"id": "bad", "uri": str(crashing)}, {"id": "good", "uri": str(scenes_60s)}]
    try:
        out = plan_batch(sources(rows), clips=ClipsConfig(length_s=30), max_bytes=1 << 30, output=str(tmp_path / "out"),
                         fingerprint="f", run_id="r", isolation=DecodeIsolationConfig(max_attempts=2)).to_pylist()
    finally:
        sandbox._SANDBOX.close()
    assert [(r["id"], r["status"], r["error_type"]) for r in out] == [
        ("bad", "failed", "PlanCrashed"), ("good#0", None, None), ("good#1", None, None)]
    assert "SIGSEGV" in out[0]["error"] and "2 attempts" in out[0]["error"]
