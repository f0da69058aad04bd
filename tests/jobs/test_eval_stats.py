"""The paired bootstrap: identical methods differ by exactly 0, a real shift is detected, noise is not."""

import numpy as np
import pytest

from jobs.eval_report import interval_table, verdict
from jobs.eval_stats import draws, intervals, paired_intervals


def rows_of(scores: dict[str, list[float]], media: str = "image", keep: float = 0.111) -> list[dict]:
    out = [{"media": media, "method": "none", "keep_ratio": 1.0, "per_scene": {"m": scores.pop("none")}}]
    return out + [{"media": media, "method": name, "keep_ratio": keep, "per_scene": {"m": s}} for name, s in scores.items()]


def by_method(entries):
    return {e["method"]: e for e in entries}


def test_identical_methods_differ_by_exactly_zero_and_not_significantly():
    rng = np.random.default_rng(1)
    base = rng.random(50).tolist()
    same = (np.array(base) * rng.random(50)).tolist()
    got = by_method(paired_intervals(rows_of({"none": base, "iwp": same, "twin": list(same)}), "m"))
    assert got["twin"]["difference"] == 0.0 and tuple(got["twin"]["difference_ci"]) == (0.0, 0.0)
    assert got["twin"]["significant"] is False and verdict(got["twin"]) == "no"
    low, high = got["iwp"]["relative_ci"]
    assert low < got["iwp"]["relative"] < high
    assert "difference" not in got["iwp"] and verdict(got["iwp"]) == "–"


def test_a_real_shift_is_detected_and_one_scene_of_noise_is_not():
    rng = np.random.default_rng(2)
    base = (rng.random(300) < 0.9).astype(float)
    iwp = base * (rng.random(300) < 0.8)
    better = np.where(rng.random(300) < 0.5, base, iwp)  # recovers half of IWP's misses: +~9 points
    one_off = iwp.copy()
    one_off[np.flatnonzero(iwp == 0)[0]] = 1.0
    got = by_method(paired_intervals(rows_of({"none": base.tolist(), "iwp": iwp.tolist(), "better": better.tolist(),
                                              "one_off": one_off.tolist()}), "m"))
    assert got["better"]["significant"] and got["better"]["difference_ci"][0] > 0
    assert verdict(got["better"]) == "yes, ahead of iwp"
    assert got["one_off"]["significant"] is False
    low, high = got["one_off"]["difference_ci"]
    assert low <= 0 <= high and got["one_off"]["difference"] > 0


def test_pairing_narrows_the_difference_a_constant_offset_is_significant():
    """Scenes vary a lot, methods differ by a small constant on every scene: paired resampling sees it."""
    rng = np.random.default_rng(3)
    hardness = rng.random(40)
    got = by_method(paired_intervals(rows_of({"none": np.ones(40).tolist(), "iwp": hardness.tolist(),
                                              "plus": (hardness + 0.02).tolist()}), "m"))
    low, high = got["plus"]["difference_ci"]
    assert got["plus"]["significant"] and low == pytest.approx(2.0) and high - low < 1e-6  # 0.02 of 1, every draw
    rel_low, rel_high = got["iwp"]["relative_ci"]
    assert rel_high - rel_low > 10  # each method's own interval is wide


def test_seeded_and_vectorised_draws_and_a_mismatch_is_refused():
    assert (draws(7, 5, seed=4) == draws(7, 5, seed=4)).all() and not (draws(7, 5, seed=4) == draws(7, 5, seed=5)).all()
    scores = {"none": [1.0, 0.5, 1.0], "iwp": [1.0, 0.0, 1.0]}
    a = intervals(rows_of(dict(scores)), ("m",), seed=9)
    assert a == intervals(rows_of(dict(scores)), ("m",), seed=9)
    bad = rows_of({"none": [1.0, 0.5, 1.0], "iwp": [1.0, 0.0]})
    with pytest.raises(ValueError, match="different scenes"):
        paired_intervals(bad, "m")


def test_the_report_table_names_each_verdict():
    rng = np.random.default_rng(5)
    base = (rng.random(200) < 0.9).astype(float)
    iwp = base * (rng.random(200) < 0.7)
    rows = rows_of({"none": base.tolist(), "iwp": iwp.tolist(), "worse": (iwp * (rng.random(200) < 0.5)).tolist()})
    for r in rows:
        r["per_scene"] = {"caption_attribute_accuracy": r["per_scene"]["m"]}
    results = {"methods": ["iwp", "worse"], "intervals": intervals(rows, ("caption_attribute_accuracy",))}
    table = "\n".join(interval_table(results, "image"))
    assert "| worse | 11.1 % |" in table and "yes, behind iwp" in table and "| iwp | 11.1 % |" in table


def test_disjoint_slices_merge_into_one_run_and_overlaps_are_refused():
    from jobs.eval_stats import merge

    def run(first, none, iwp, other):
        rows = rows_of({"none": none, "iwp": iwp, "other": other})
        for r in rows:
            r.update(m=float(np.mean(r["per_scene"]["m"])), weight_fidelity=None, items=len(none), layer=2)
        return {"model": "m", "split": "test", "first_scene": first, "counts": {"image": len(none), "video": 0},
                "methods": ["iwp", "other"], "rows": rows}

    a, b = run(0, [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]), run(2, [1.0, 0.5, 1.0], [0.5, 0.5, 1.0], [1.0, 0.5, 0.0])
    pooled = merge([b, a])
    rows = by_method(pooled["rows"])
    assert rows["other"]["per_scene"]["m"] == [1.0, 1.0, 1.0, 0.5, 0.0] and pooled["spans"] == [(0, 2), (2, 5)]
    assert rows["other"]["m"] == pytest.approx(3.5 / 5) and rows["none"]["m"] == pytest.approx(4.5 / 5)
    assert rows["other"]["relative"]["m"] == pytest.approx(100 * 3.5 / 4.5) and rows["other"]["items"] == 5
    assert rows["iwp"]["weight_fidelity"] is None and rows["iwp"]["layer"] == 2
    assert pooled["counts"] == {"image": 5, "video": 0} and pooled["first_scene"] == 0
    assert by_method(e for e in pooled["intervals"])["other"]["scenes"] == 5
    with pytest.raises(ValueError, match="overlap"):
        merge([a, run(1, [1.0], [1.0], [1.0])])
