"""bench_clips' planning part runs on a tiny video and reports what it measured."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_clips


def test_planning_cost_is_reported_per_mode_with_the_cut_error(tmp_path):
    out = tmp_path / "clips.json"
    result = bench_clips.main(["--minutes", "0.5", "--size", "64x96", "--scene-s", "8", "--videos", "0",
                               "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {r["what"]: r for r in result["planning"]}
    assert set(rows) == {"plan fixed", "plan shots", "decode every frame (PyAV)"}
    assert rows["plan fixed"]["clips"] == 3 and rows["plan shots"]["cuts_found"] == 3
    assert rows["plan shots"]["max_cut_error_s"] <= 0.25
    assert all(r["cpu_s"] >= 0 and r["cpu_s_per_hour"] == pytest.approx(r["cpu_s"] * 120) for r in rows.values())
    assert rows["decode every frame (PyAV)"]["frames"] == 30 * 24
    assert result["end_to_end"] == []
