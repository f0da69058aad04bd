"""Write an evaluation's results as JSON, a markdown report and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.eval import PAPER_RETENTION, value_text
from jobs.eval_stats import DRAWS, REFERENCE

LABELS = {"caption_attribute_accuracy": "caption attribute acc.", "caption_exact": "caption exact",
          "tag_f1": "tag F1"}


def _media(results: dict[str, Any]) -> list[str]:
    """The modalities the run measured, images first."""
    return [m for m in ("image", "video") if any(r["media"] == m for r in results["rows"])]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def summary(results: dict[str, Any], metric: str = "caption_attribute_accuracy") -> str:
    """Methods x (modality, keep ratio): `metric` as % of unpruned, with the blind floor."""
    ratios = results["keep_ratios"]
    rows = results["rows"]
    media = _media(results)
    head = " | ".join(f"{m} {100 * r:.1f} %" for m in media for r in ratios)
    lines = [f"| {LABELS[metric]}, % of unpruned | {head} |", "|---" * (1 + len(media) * len(ratios)) + "|"]
    blind = {r["media"]: r["relative"][metric] for r in rows if r["method"] == "blind"}
    if blind:
        lines.append("| blind (other scene's pixels) | " + " | ".join(_pct(blind.get(m)) for m in media
                                                                      for _ in ratios) + " |")
    for method in results["methods"]:
        by = {(r["media"], r["keep_ratio"]): r["relative"][metric] for r in rows if r["method"] == method}
        lines.append(f"| {method} | " + " | ".join(_pct(by.get((m, k))) for m in media for k in ratios) + " |")
    return "\n".join(lines)


def tuning_table(results: dict[str, Any]) -> list[str]:
    """Each tunable method's knob values with their validation score, the official default and the choice."""
    tuning = results.get("tuning") or {}
    if not tuning:
        return []
    counts, ratios = results["tuning_counts"], ", ".join(f"{100 * r:.1f} %" for r in results["tuning_ratios"])
    scenes = " and ".join(f"{counts[m]} validation {m}s" for m in _media(results) if counts.get(m))
    lines = ["### Tuning on the validation split", "",
             f"Each method's own knob, {scenes} at {ratios} kept; score = mean of caption attribute accuracy and tag F1. The official default is listed first; "
             "the best value (the default on ties) runs on test as `<method>@val` when it is not the default.", "",
             "| method | knob | values (val score) | chosen |", "|---|---|---|---|"]
    for method, t in tuning.items():
        cells = ", ".join(f"{value_text(v)}{' (default)' if i == 0 else ''}: {sc:.3f}"
                          for i, (v, sc) in enumerate(zip(t["values"], t["scores"])))
        lines.append(f"| {method} | {t['knob']} | {cells} | {value_text(t['chosen'])} |")
    return lines + [""]


def _ci(low_high: tuple[float, float] | list[float] | None) -> str:
    return "–" if low_high is None else f"{low_high[0]:.1f} – {low_high[1]:.1f}"


def verdict(entry: dict[str, Any]) -> str:
    """Whether a row's difference from IWP is more than resampling noise, and which way."""
    if "significant" not in entry:
        return "–"
    if not entry["significant"]:
        return "no"
    return "yes, ahead of iwp" if entry["difference"] > 0 else "yes, behind iwp"


def interval_table(results: dict[str, Any], media: str, metric: str = "caption_attribute_accuracy") -> list[str]:
    """One modality's rows: % of unpruned with its 95 % interval, the difference from IWP with its
    interval, and whether that difference is significant (its interval excludes 0)."""
    entries = [e for e in results.get("intervals", []) if e["media"] == media and e["metric"] == metric]
    if not entries:
        return []
    order = {m: i for i, m in enumerate(results["methods"])}
    entries.sort(key=lambda e: (-e["keep_ratio"], order.get(e["method"], len(order))))
    lines = [f"| {media}: {LABELS[metric]} | keep | % of unpruned | 95 % CI | − {REFERENCE} (points) | 95 % CI "
             "| significant |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        diff = "–" if e.get("difference") is None else f"{e['difference']:+.1f}"
        lines.append(f"| {e['method']} | {100 * e['keep_ratio']:.1f} % | {_pct(e['relative'])} | {_ci(e['relative_ci'])} "
                     f"| {diff} | {_ci(e.get('difference_ci'))} | {verdict(e)} |")
    return lines + [""]


def _interval_of(results: dict[str, Any]) -> dict[tuple[str, str, float, str], tuple[float, float]]:
    return {(e["media"], e["method"], e["keep_ratio"], e["metric"]): tuple(e["relative_ci"])
            for e in results.get("intervals", []) if e["relative_ci"] is not None}


def _shown(path: str) -> str:
    """A model path as the reader can reproduce it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def markdown(results: dict[str, Any]) -> str:
    """Summary tables, then one table per modality: absolute scores, % of unpruned, fidelity, prefill time."""
    scenes = ", ".join(f"{results['counts'][m]} {m}s" for m in _media(results))
    first = results.get("first_scene", 0)
    start = f" from scene index {first}" if first else ""
    lines = [f"Model `{_shown(results['model'])}`, split `{results['split']}` ({scenes}{start}, each asked to caption "
             f"and to tag), pruning at decoder layer {results['layer']}.", ""]
    for metric in ("caption_attribute_accuracy", "tag_f1"):
        lines += [summary(results, metric), ""]
    if results.get("intervals"):
        lines += ["### Paired bootstrap 95 % intervals", "",
                  f"{DRAWS} resamples of the scenes (seeded), the same draw for every row of a modality, unpruned "
                  f"included; the difference from {REFERENCE} is at the same keep ratio, and it is significant "
                  "when its interval excludes 0.", ""]
        for media in _media(results):
            for metric in ("caption_attribute_accuracy", "tag_f1"):
                lines += interval_table(results, media, metric)
    for media in ("image", "video"):
        rows = [r for r in results["rows"] if r["media"] == media]
        if not rows:
            continue
        lines += [f"### {media}", "",
                  "| method | keep | kept tokens | caption attr. acc. | % unpruned | exact | tag F1 | % unpruned "
                  "| weight fidelity | prefill s/item |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            rel = r["relative"]
            fid = "–" if r["weight_fidelity"] is None else f"{r['weight_fidelity']:.3f}"
            kept = "all" if r["kept_tokens_mean"] is None else f"{r['kept_tokens_mean']:.0f}"
            lines.append(f"| {r['method']} | {100 * r['keep_ratio']:.1f} % | {kept} | {r['caption_attribute_accuracy']:.3f} "
                         f"| {_pct(rel['caption_attribute_accuracy'])} | {r['caption_exact']:.3f} | {r['tag_f1']:.3f} "
                         f"| {_pct(rel['tag_f1'])} | {fid} | {r['prefill_s_per_item']:.3f} |")
        lines.append("")
    lines += tuning_table(results)
    env = results.get("environment")
    if env:
        lines += ["Run with " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", ""]
    lines += ["Paper (IWP on LLaVA-OneVision-7B, average over its benchmarks): "
              + ", ".join(f"{v} % of unpruned at {100 * k:.1f} % kept" for k, v in PAPER_RETENTION.items()) + ".", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """accuracy_vs_keep.png (one line per method, per modality and metric) and fidelity_vs_accuracy.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = results["rows"]
    bands = _interval_of(results)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("none", "blind")]
    measured = _media(results)
    fig, axes = plt.subplots(2, len(measured), figsize=(5.5 * len(measured), 8), sharex=True, squeeze=False)
    for col, media in enumerate(measured):
        for row_i, metric in enumerate(("caption_attribute_accuracy", "tag_f1")):
            ax = axes[row_i][col]
            for method in methods:
                pts = sorted((r["keep_ratio"], r["relative"][metric]) for r in rows
                             if r["media"] == media and r["method"] == method and r["relative"][metric] is not None)
                if pts:
                    x, y = zip(*pts)
                    line = ax.plot([100 * v for v in x], y, marker="o", lw=2.2 if method == "iwp" else 1, label=method)[0]
                    ci = [bands.get((media, method, k, metric)) for k in x]
                    if all(c is not None for c in ci):
                        ax.fill_between([100 * v for v in x], [c[0] for c in ci], [c[1] for c in ci],
                                        color=line.get_color(), alpha=0.2 if method == REFERENCE else 0.05, lw=0)
            ax.axhline(100, color="grey", lw=0.8, ls=":")
            floor = [r["relative"][metric] for r in rows if r["media"] == media and r["method"] == "blind"]
            if floor and floor[0] is not None:
                ax.axhline(floor[0], color="black", lw=0.8, ls="--", label="blind (other scene's pixels)")
            ax.set(title=f"{media}: {LABELS[metric]}", ylabel="% of unpruned", xscale="log")
            ax.set_xticks([5.6, 11.1, 22.2, 35.3], labels=["5.6", "11.1", "22.2", "35.3"])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes[1]:
        ax.set_xlabel("visual tokens kept (%)")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"shaded: each method's paired bootstrap 95 % interval ({REFERENCE}'s darker);\ndifferences from "
                 f"{REFERENCE} are tighter than the bands suggest (report.md)" if bands else "", fontsize=9)
    fig.tight_layout()
    paths = [out / "accuracy_vs_keep.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(measured), figsize=(5.5 * len(measured), 4.5), squeeze=False)
    axes = axes[0]
    for ax, media in zip(axes, measured):
        for method in methods:
            cells = [r for r in rows if r["media"] == media and r["method"] == method and r["weight_fidelity"] is not None
                     and r["relative"]["caption_attribute_accuracy"] is not None]
            if cells:
                x = [r["weight_fidelity"] for r in cells]
                y = [r["relative"]["caption_attribute_accuracy"] for r in cells]
                ci = [bands.get((media, method, r["keep_ratio"], "caption_attribute_accuracy")) for r in cells]
                err = None if any(c is None for c in ci) else [[v - c[0] for v, c in zip(y, ci)],
                                                               [c[1] - v for v, c in zip(y, ci)]]
                ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2, lw=0.8, label=method)
        ax.set(title=f"{media}: weight fidelity vs caption accuracy", xlabel="mean weight fidelity",
               ylabel="caption attribute acc. (% of unpruned)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "fidelity_vs_accuracy.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    (out / "report.md").write_text("# Pruning accuracy on held-out scenes\n\n" + markdown(results))
    return out / "report.md"

