"""Paired bootstrap intervals for the eval: which differences between methods are more than noise.

Every configuration of one modality answers the same scenes, so the scenes are resampled, not
the rows: one draw of scene indices (with replacement) is applied to every configuration at
once, unpruned included. Each draw gives each row's score as % of unpruned on the same resampled
scenes (a ratio of means, as the point estimate), and its difference from IWP's at the same keep
ratio; the 2.5th and 97.5th percentiles over the draws are the 95 % interval. The pairing is
what makes the intervals of the differences narrow: a hard scene is hard for every method in the
same draw. A difference is significant when its interval excludes 0. Seeded: a rerun gives the
same intervals. Vectorised with numpy (draws × scenes index arrays), no loop over draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DRAWS = 10_000
SEED = 0
REFERENCE = "iwp"
LEVEL = 0.95


def draws(scenes: int, count: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """``[count, scenes]`` resampled scene indices (with replacement), the same for a seed."""
    return np.random.default_rng(seed).integers(0, scenes, size=(count, scenes))


def resampled_means(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``[configs, draws]``: each configuration's mean over each draw's scenes (``scores`` ``[configs, scenes]``)."""
    return scores[:, index].mean(-1)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The central `level` percentile interval of the finite samples (None where none is: the
    unpruned run scored 0 on every draw)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def relative_samples(scores: np.ndarray, base: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``[configs, draws]``: 100 × resampled mean / the unpruned run's resampled mean (NaN where that is 0)."""
    num = resampled_means(scores, index)
    den = resampled_means(base[None], index)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 100 * num / np.where(den > 0, den, 1), np.nan)


def paired_intervals(rows: list[dict[str, Any]], metric: str, *, count: int = DRAWS, seed: int = SEED,
                     reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Per pruned row with per-scene scores: its % of unpruned with a 95 % interval, and its
    difference from `reference` at the same modality and keep ratio, with interval and verdict."""
    out = []
    for media in dict.fromkeys(r["media"] for r in rows):
        cells = [r for r in rows if r["media"] == media and metric in r.get("per_scene", {})]
        base = next((r for r in cells if r["method"] == "none"), None)
        pruned = [r for r in cells if r["method"] not in ("none", "blind")]
        if base is None or not pruned:
            continue
        scores = np.array([r["per_scene"][metric] for r in pruned], dtype=float)
        unpruned = np.array(base["per_scene"][metric], dtype=float)
        if scores.shape[1] != unpruned.shape[0]:
            raise ValueError(f"{media}: rows were scored on different scenes ({scores.shape[1]} vs {unpruned.shape[0]})")
        rel = relative_samples(scores, unpruned, draws(unpruned.shape[0], count, seed))
        point = relative_samples(scores, unpruned, np.arange(unpruned.shape[0])[None])[:, 0]
        refs = {r["keep_ratio"]: i for i, r in enumerate(pruned) if r["method"] == reference}
        for i, r in enumerate(pruned):
            entry = {"media": media, "method": r["method"], "keep_ratio": r["keep_ratio"], "metric": metric,
                     "scenes": int(unpruned.shape[0]), "relative": _number(point[i]), "relative_ci": interval(rel[i])}
            j = refs.get(r["keep_ratio"])
            if j is not None and r["method"] != reference:
                ci = interval(rel[i] - rel[j])
                entry.update(difference=_number(point[i] - point[j]), difference_ci=ci,
                             significant=ci is not None and bool(ci[0] > 0 or ci[1] < 0))
            out.append(entry)
    return out


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def intervals(rows: list[dict[str, Any]], metrics: tuple[str, ...], **kwargs: Any) -> list[dict[str, Any]]:
    """`paired_intervals` for each metric, one list."""
    return [e for m in metrics for e in paired_intervals(rows, m, **kwargs)]


def add_relative(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> None:
    """`relative`: each metric as % of the unpruned run on the same modality (None where that scored 0)."""
    base = {r["media"]: r for r in rows if r["method"] == "none"}
    for r in rows:
        b = base[r["media"]]
        r["relative"] = {m: (100.0 * r[m] / b[m] if b[m] else None) for m in metrics}


def spans(runs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Each run's scene span ``(first, end)`` in order; refused where two overlap."""
    def span(run: dict[str, Any]) -> tuple[int, int]:
        first = run.get("first_scene", 0)
        return first, first + max(run["counts"][m] for m in {r["media"] for r in run["rows"]})

    if len({(r["model"], r["split"]) for r in runs}) != 1:
        raise ValueError("pooled runs must share the model and the split")
    out = sorted(span(r) for r in runs)
    if any(a[1] > b[0] for a, b in zip(out, out[1:])):
        raise ValueError(f"pooled runs must cover disjoint scenes; their spans overlap: {out}")
    return out


def _weighted(values: list[Any], weights: list[int]) -> Any:
    """The scene-weighted mean of the parts' means (exact: every mean in a row is over its scenes)."""
    if any(v is None for v in values):
        return None
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one model on disjoint slices of a split (`--first-scene`) as one run, in the form
    `jobs.eval_report.write_report` takes: per-scene scores concatenated in scene order, each mean
    weighted by its slice's scene count, % of unpruned and the paired intervals drawn anew over all
    the scenes. Configurations that not every run has are left out. So a long eval can run as
    several processes, one per slice, and still be one report."""
    covered = spans(runs)
    runs = sorted(runs, key=lambda r: r.get("first_scene", 0))
    keyed = [{(r["media"], r["method"], r["keep_ratio"]): r for r in run["rows"] if "per_scene" in r} for run in runs]
    rows = []
    for key in (k for k in keyed[0] if all(k in other for other in keyed[1:])):
        parts = [k[key] for k in keyed]
        row = {f: v for f, v in parts[0].items() if f != "relative"}
        scenes = [len(next(iter(p["per_scene"].values()))) for p in parts]
        for field, value in parts[0].items():
            if field not in ("keep_ratio", "layer", "items") and (value is None or type(value) in (int, float)):
                row[field] = _weighted([p.get(field) for p in parts], scenes)
        row["items"] = sum(scenes)
        row["per_scene"] = {m: [x for p in parts for x in p["per_scene"][m]] for m in parts[0]["per_scene"]}
        rows.append(row)
    metrics = tuple(dict.fromkeys(m for r in rows for m in r["per_scene"]))
    means = tuple(m for m in metrics if all(m in r for r in rows))
    if means:
        add_relative(rows, means)
    measured = {r["media"] for r in rows}
    counts = {m: sum(run["counts"][m] for run in runs) if m in measured else 0 for m in runs[0]["counts"]}
    methods = [m for m in runs[0]["methods"] if any(r["method"] == m for r in rows)]
    return {**runs[0], "counts": counts, "first_scene": covered[0][0], "spans": covered, "methods": methods,
            "parts": [{"first_scene": r.get("first_scene", 0), "counts": r["counts"]} for r in runs],
            "intervals": intervals(rows, metrics), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    """`python -m jobs.eval_stats RUN/results.json ... [--out DIR]`: disjoint slices pooled; their interval
    tables, and with --out the whole report of the pooled run (results.json, report.md, plots)."""
    import argparse
    import json
    from pathlib import Path

    from jobs.eval_report import interval_table, write_report

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("results", nargs="+", type=Path, help="results.json of runs on disjoint slices of one split")
    ap.add_argument("--out", type=Path, default=None, help="folder for the pooled run's results.json, report.md and plots")
    args = ap.parse_args(argv)
    pooled = merge([json.loads(p.read_text()) for p in args.results])
    scenes = sum(b - a for a, b in pooled["spans"])
    print(f"Model `{pooled['model']}`, split `{pooled['split']}`, scene spans {pooled['spans']} ({scenes} scenes per "
          "modality at most), pooled; paired bootstrap as in each report.\n")
    for media in dict.fromkeys(r["media"] for r in pooled["rows"]):
        for metric in ("caption_attribute_accuracy", "tag_f1"):
            print("\n".join(interval_table(pooled, media, metric)))
    if args.out is not None:
        print(f"report: {write_report(pooled, args.out)}")


if __name__ == "__main__":
    main()
