"""The eval job on a tiny random model: every configuration runs, relatives and reports are right."""

import json
from pathlib import Path

import pytest

from jobs.cli import main
from jobs.eval import METRICS
from jobs.eval_stats import add_relative


def test_relative_is_percent_of_unpruned_on_the_same_modality():
    rows = [{"media": "image", "method": "none", "caption_attribute_accuracy": 0.8, "caption_exact": 0.5, "tag_f1": 0.0},
            {"media": "image", "method": "iwp", "caption_attribute_accuracy": 0.4, "caption_exact": 0.5, "tag_f1": 0.3}]
    add_relative(rows, METRICS)
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
    report = (out / "report.md").read_text()
    assert "| iwp | 5.6 % |" in report
    assert len(image[("none", 1.0)]["per_scene"]["caption_attribute_accuracy"]) == 2
    cells = {(e["media"], e["method"], e["keep_ratio"], e["metric"]) for e in results["intervals"]}
    assert ("video", "random", 0.056, "tag_f1") in cells and ("image", "iwp", 0.222, "caption_attribute_accuracy") in cells
    assert "Paired bootstrap 95 % intervals" in report and "| random | 22.2 % |" in report


def test_eval_runs_the_production_peers_from_any_scene_index(tiny_model_dir, tmp_path):
    from scenes.scene import make_scene

    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--images", "2", "--videos", "1",
               "--media", "video", "--methods", "evs,cdpruner", "--keep-ratios", "0.353", "--split", "val",
               "--first-scene", "7"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["first_scene"] == 7
    assert [(r["method"], r["keep_ratio"]) for r in results["rows"]] == [
        ("none", 1.0), ("blind", 1.0), ("evs", 0.353), ("cdpruner", 0.353)]
    assert results["rows"][0]["samples"][0]["seed"] == make_scene("val", "video", 7).seed
    assert all(r["kept_tokens_mean"] == round(896 * 0.353) for r in results["rows"][2:])


def test_eval_refuses_an_unknown_method_before_loading_anything(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--methods", "iwp,evs2"]) == 2
    assert "unknown method(s) evs2" in capsys.readouterr().err


def test_report_names_a_model_inside_the_working_directory_by_its_relative_path(tmp_path, monkeypatch):
    from jobs.eval_report import _shown

    monkeypatch.chdir(tmp_path)
    assert _shown(str(tmp_path / "reference" / "model")) == "reference/model"
    assert _shown("/elsewhere/model") == "/elsewhere/model"


def test_every_tunable_method_is_tuned_on_its_own_knob_and_ties_keep_the_default(monkeypatch):
    """Each knob value runs on the given (validation) data; the best score wins and a tie keeps the
    official default; the test rows are each method at its defaults plus `<method>@val` where the
    choice differs."""
    import jobs.eval as ev

    seen = []

    def fake_run(model, processor, handle, items, method, ratio, size, **settings):
        seen.append((method, ratio, settings))
        good = {"fastv": settings.get("attention_layer") == 2, "dart": True}.get(method, False)
        return {"caption_attribute_accuracy": 0.9 if good else 0.5, "tag_f1": 1.0, "samples": []}

    monkeypatch.setattr(ev, "run_config", fake_run)
    tuning = ev.tune(None, None, None, {"image": ["x"]}, ("fastv", "dart", "random"), (0.056,), 4, progress=False)
    assert set(tuning) == {"fastv", "dart"}
    assert tuning["fastv"]["chosen"] == 2 and tuning["dart"]["chosen"] == 4  # dart: all tie, default kept
    assert ("dart", 0.056, {"image_pivots": 8, "text_pivots": 8}) in seen
    assert ev.configurations(("fastv", "dart", "random"), tuning) == [
        ("fastv", "fastv", {}), ("fastv@val", "fastv", {"attention_layer": 2}), ("dart", "dart", {}),
        ("random", "random", {})]


@pytest.mark.parametrize("report", ["eval", "eval-layer3", "eval-shipped"])
def test_the_committed_report_reproduces_at_head(report):
    """One low-budget cell per modality of a committed report (reports/eval: the training-free
    model; eval-layer3: the same, pruning at layer 3; eval-shipped: the demo model), rerun from the
    report's own settings, layer and model (a shipped one, named by the report).

    With the recorded torch threads and versions the answers are identical on the machine that
    made the report; another CPU may sum in another order and flip a greedy answer at a
    near-tie, so one scene may differ; kept-token counts depend on no float and must match
    exactly (every scene of a modality has the same token count). A report with per-scene
    results is checked scene by scene on its first scenes; an older one, made before those were
    recorded, on its whole (small) cell's means."""
    import torch

    import iwp_ops
    from jobs.default_model import shipped_model_path
    from jobs.eval import knob_settings, load, prepare, run_config

    for media in ("image", "video"):
        path = Path(__file__).parents[2] / "reports" / report / media / "results.json"
        committed = json.loads(path.read_text())
        torch.set_num_threads(committed["environment"]["torch_threads"])
        row = next(r for r in committed["rows"] if r["method"] == "fastv" and r["keep_ratio"] == 0.056)
        scenes = min(committed["counts"][media], 16 if media == "image" else 6) if "per_scene" in row \
            else committed["counts"][media]
        model, processor = load(shipped_model_path(Path(committed["model"]).name))
        handle = iwp_ops.enable_pruning(model, layer=committed["layer"])
        counts = {"image": 0, "video": 0, media: scenes}
        items = prepare(processor, committed["split"], counts, committed.get("first_scene", 0))[media]
        got = run_config(model, processor, handle, items, "fastv", 0.056, 16 if media == "image" else 4)
        assert got["kept_tokens_mean"] == row["kept_tokens_mean"]
        if "per_scene" in row:
            for metric, values in got["per_scene"].items():
                differ = sum(g != c for g, c in zip(values, row["per_scene"][metric][:scenes]))
                assert differ <= 1, (media, metric, values, row["per_scene"][metric][:scenes])
        else:
            assert got["caption_attribute_accuracy"] == pytest.approx(row["caption_attribute_accuracy"], abs=1 / scenes)
            assert got["tag_f1"] == pytest.approx(row["tag_f1"], abs=1 / scenes)
        tuned = committed.get("tuning", {}).get("fastv")
        if tuned is not None:
            best = max(tuned["scores"])
            assert tuned["chosen"] == next(v for v, s in zip(tuned["values"], tuned["scores"]) if s == best)
            assert knob_settings("fastv", tuned["chosen"]) == {"attention_layer": tuned["chosen"]}


def test_slices_run_apart_and_merged_equal_one_run_over_their_union(tiny_model_dir, tmp_path):
    from jobs.eval_stats import main as pool_main

    def run(out, images, first):
        assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--images", str(images), "--videos", "0",
                     "--media", "image", "--methods", "iwp", "--keep-ratios", "0.111", "--first-scene", str(first),
                     "--tune-images", "0", "--tune-videos", "0", "--threads", "1"]) == 0
        return out / "results.json"

    whole = json.loads(run(tmp_path / "whole", 3, 0).read_text())
    pool_main([str(run(tmp_path / "b", 2, 1)), str(run(tmp_path / "a", 1, 0)), "--out", str(tmp_path / "pooled")])
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["counts"]["image"] == 3 and pooled["spans"] == [[0, 1], [1, 3]]
    # blind asks each scene about the next one's pixels within its own run, so only it may differ
    rows = [(w, p) for w, p in zip(whole["rows"], pooled["rows"]) if w["method"] != "blind"]
    assert [(w["method"], w["keep_ratio"]) for w, _ in rows] == [(p["method"], p["keep_ratio"]) for _, p in rows]
    for w, p in rows:
        assert p["per_scene"] == w["per_scene"] and p["items"] == w["items"] == 3
        for field in ("caption_attribute_accuracy", "caption_exact", "tag_f1", "kept_tokens_mean"):
            assert p[field] == pytest.approx(w[field])
        assert p["relative"] == pytest.approx(w["relative"])
    assert "| iwp | 11.1 % |" in (tmp_path / "pooled" / "report.md").read_text()
