"""The eval job on a tiny random model: every configuration runs, relatives and reports are right."""

import json

import pytest

from jobs.cli import main
from jobs.eval import add_relative


def test_relative_is_percent_of_unpruned_on_the_same_modality():
    rows = [{"media": "image", "method": "none", "caption_attribute_accuracy": 0.8, "caption_exact": 0.5, "tag_f1": 0.0},
            {"media": "image", "method": "iwp", "caption_attribute_accuracy": 0.4, "caption_exact": 0.5, "tag_f1": 0.3}]
    add_relative(rows)
    assert rows[0]["relative"]["caption_attribute_accuracy"] == 100.0
    assert rows[1]["relative"] == {"caption_attribute_accuracy": 50.0, "caption_exact": 100.0, "tag_f1": None}


def test_blind_items_take_the_next_scenes_pixels():
    from jobs.eval import Item, blind
    from scenes.scene import make_scene

    items = [Item(make_scene("val", "image", i), t, {"input_ids": i, "pixel_values": 10 * i + j})
             for i in range(3) for j, t in enumerate(("caption", "tag"))]
    swapped = blind(items)
    assert [x.inputs["pixel_values"] for x in swapped] == [10, 11, 20, 21, 0, 1]
    assert [x.inputs["input_ids"] for x in swapped] == [0, 0, 1, 1, 2, 2]
    assert [x.scene for x in swapped] == [x.scene for x in items]


def test_eval_command_writes_every_configuration(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--images", "2", "--videos", "1",
               "--methods", "iwp,random", "--keep-ratios", "0.222,0.056", "--split", "val"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    keys = [(r["media"], r["method"], r["keep_ratio"]) for r in results["rows"]]
    assert keys == [(m, base, 1.0) for m in ("image",) for base in ("none", "blind")] \
        + [("image", x, k) for x in ("iwp", "random") for k in (0.222, 0.056)] \
        + [("video", base, 1.0) for base in ("none", "blind")] + [("video", x, k) for x in ("iwp", "random") for k in (0.222, 0.056)]
    image = {(r["method"], r["keep_ratio"]): r for r in results["rows"] if r["media"] == "image"}
    assert image[("none", 1.0)]["kept_tokens_mean"] is None
    video = next(r for r in results["rows"] if r["media"] == "video")
    for row, attrs in ((image[("none", 1.0)], ("colour", "shape", "size", "position")),
                       (video, ("colour", "shape", "size", "position", "motion"))):
        assert all(0.0 <= row[f"caption_{a}"] <= 1.0 for a in (*attrs, "count_right"))
    assert "caption_motion" not in image[("none", 1.0)]
    assert image[("iwp", 0.056)]["kept_tokens_mean"] == pytest.approx(round(224 * 0.056), abs=1)
    assert 0.0 < image[("iwp", 0.222)]["weight_fidelity"] <= 1.0
    assert all(r["prefill_s_per_item"] > 0 for r in results["rows"])
    assert not (out / "rows.partial.json").exists()
    for name in ("report.md", "accuracy_vs_keep.png", "fidelity_vs_accuracy.png"):
        assert (out / name).stat().st_size > 0
    assert "| iwp | 5.6 % |" in (out / "report.md").read_text()


def test_report_names_a_model_inside_the_working_directory_by_its_relative_path(tmp_path, monkeypatch):
    from jobs.eval_report import _shown

    monkeypatch.chdir(tmp_path)
    assert _shown(str(tmp_path / "reference" / "model")) == "reference/model"
    assert _shown("/elsewhere/model") == "/elsewhere/model"
