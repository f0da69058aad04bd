"""Model inputs from decoded frames: the frames' rate reaches the processor's temporal positions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess import build_inputs, load_processor
from tests.support.tiny_models import build_tiny_model

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    return {arch: load_processor(str(build_tiny_model(tmp_path_factory.mktemp(arch), arch=arch)))
            for arch in ("qwen2_5_vl", "qwen3_vl")}


@pytest.mark.parametrize("fps", [1.6, 8.0])
def test_qwen2_5_vl_seconds_per_temporal_patch_follow_the_frame_rate(processors, fps):
    inputs = build_inputs(processors["qwen2_5_vl"], FRAMES, "video", "describe", fps)
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])


def test_qwen3_vl_timestamps_follow_the_frame_rate(processors, monkeypatch):
    processor = processors["qwen3_vl"]
    seen = []
    original = type(processor)._calculate_timestamps

    def spy(self, indices, video_fps, merge_size=2):
        seen.append((list(indices), video_fps))
        return original(self, indices, video_fps, merge_size)

    monkeypatch.setattr(type(processor), "_calculate_timestamps", spy)
    inputs = build_inputs(processor, FRAMES, "video", "describe", 1.6)
    assert seen == [(list(range(8)), 1.6)]
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) > 0
