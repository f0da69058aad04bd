"""Choose IWP's defaults on the validation split: one option changed at a time from BASE.

    python -m jobs.ablate --out reports/ablation

Each variant runs at the low keep ratios (where choices matter) on val images and videos (or one
modality, `--media video`), both tasks; the score is the mean of caption attribute accuracy and
tag F1 over modalities and ratios. The test split is never used here, so the report on test
stays held out. The video variants ask why IWP can lose on video: per-frame budgets, the
temporal part of the duplication term (keys rotated by M-RoPE's spatial sections only), the
chunk schedule, λ, the normalisation and the layer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from jobs.default_model import default_model_path
from jobs.eval import THREADS, load, prepare, run_config
from jobs.eval_stats import intervals

# Where the screen starts: IWP's defaults when reports/ablation and reports/ablation-shipped were
# run (an earlier screen, on an earlier model, had moved `heads` from "layer" to "mean"), pinned
# so that the committed numbers stay reproducible after defaults change.
BASE: dict[str, Any] = {"lam": 0.5, "chunk": None, "normalise": "log_minmax", "heads": "mean", "dup_threshold": 0.9,
                        "layer": 2, "query_aware": False, "rotary_keys": True, "temporal_rotary": True,
                        "per_frame": False}
# name -> settings changed from BASE (method options, or the handle's layer / query_aware / rotary_keys /
# temporal_rotary / per_frame)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "lam=0.25": {"lam": 0.25},
    "lam=0.75": {"lam": 0.75},
    "lam=1 (magnitude only)": {"lam": 1.0},
    "chunk=1 (exact greedy)": {"chunk": 1},
    "chunk=16": {"chunk": 16},
    "chunk=64": {"chunk": 64},
    "normalise=max": {"normalise": "max"},
    "heads=layer": {"heads": "layer"},
    "no in-chunk suppression": {"dup_threshold": 2.0},
    "query-aware magnitude": {"query_aware": True},
    "keys before RoPE (no positions in duplication)": {"rotary_keys": False},
    "no temporal RoPE in duplication": {"temporal_rotary": False},
    "per-frame budgets": {"per_frame": True},
    "layer K=1": {"layer": 1},
    "layer K=3": {"layer": 3},
}


def peer_layer(peer: str, methods: Sequence[str]) -> tuple[str, int]:
    """`method` or `method@K` as (method, layer); checked before the model loads, so a typo costs
    nothing."""
    method, at, layer = peer.partition("@")
    if method not in methods:
        raise ValueError(f"unknown peer method {method!r} in {peer!r}; known: {list(methods)}")
    if not at:
        return method, BASE["layer"]
    if not layer.isdigit():
        raise ValueError(f"peer {peer!r}: the layer after '@' must be a decoder layer index, e.g. {method}@3")
    return method, int(layer)


def ablate(model_path: str | Path, *, images: int, videos: int, keep_ratios: tuple[float, ...],
           variants: tuple[str, ...] | None = None, batch_size: int = 16, peers: tuple[str, ...] = (),
           threads: int = THREADS) -> dict[str, Any]:
    """`variants`: names from VARIANTS to run (default: all), e.g. to confirm a screen on more scenes;
    a modality with 0 scenes is skipped. `peers`: methods run at their defaults on the same scenes,
    as rows `peer <method>` beside the variants (never chosen as best: the yardstick); `method@K`
    runs an in-LLM peer at layer K instead of BASE's, so a variant that moves IWP's layer can be
    met at the same depth (the same share of the model run on every token)."""
    import iwp_ops

    unknown = [name for name in variants or () if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    chosen = {name: VARIANTS[name] for name in (variants or VARIANTS)}
    peer_layers = {peer: peer_layer(peer, iwp_ops.METHODS) for peer in peers}

    torch.set_num_threads(threads)  # pinned, as in jobs.eval: greedy answers at near-ties depend on it
    torch.manual_seed(0)
    model, processor = load(model_path)
    data = prepare(processor, "val", {"image": images, "video": videos})
    handle = iwp_ops.enable_pruning(model)
    rows = []
    for media, items in ((m, v) for m, v in data.items() if v):
        size = batch_size if media == "image" else max(1, batch_size // 4)
        base = run_config(model, processor, handle, items, "none", 1.0, size)
        rows.append({"variant": "unpruned", "media": media, **base})
        for peer, (method, layer) in peer_layers.items():
            for ratio in keep_ratios:
                row = {"variant": f"peer {peer}", "media": media, "layer": layer,
                       **run_config(model, processor, handle, items, method, ratio, size, layer=layer)}
                rows.append(row)
                print(f"{media:5s} {row['variant']:48s} keep {ratio:.3f}: caption {row['caption_attribute_accuracy']:.3f} "
                      f"tag F1 {row['tag_f1']:.3f}", flush=True)
        for name, changes in chosen.items():
            for ratio in keep_ratios:
                began = time.perf_counter()
                settings = {**BASE, **changes}
                row = {"variant": name, "media": media, "layer": settings["layer"],
                       **run_config(model, processor, handle, items, "iwp", ratio, size, **settings)}
                rows.append(row)
                print(f"{media:5s} {name:48s} keep {ratio:.3f}: caption {row['caption_attribute_accuracy']:.3f} "
                      f"tag F1 {row['tag_f1']:.3f} fidelity {row['weight_fidelity']:.3f} "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)
    def mean_score(name: str) -> float:
        return float(np.mean([(r["caption_attribute_accuracy"] + r["tag_f1"]) / 2 for r in rows if r["variant"] == name]))

    scores = {name: mean_score(name) for name in chosen}
    # Paired bootstrap of each row against `default` at the same keep ratio (scenes resampled jointly).
    paired = [{**r, "method": "none" if r["variant"] == "unpruned" else r["variant"],
               "keep_ratio": r["keep_ratio"]} for r in rows]
    against = intervals(paired, ("caption_attribute_accuracy", "tag_f1"), reference="default") if "default" in chosen \
        else []
    return {"model": str(model_path), "split": "val", "counts": {"image": images, "video": videos},
            "keep_ratios": list(keep_ratios), "threads": threads, "variants": chosen, "scores": scores,
            "peer_scores": {f"peer {m}": mean_score(f"peer {m}") for m in peers},
            "best": max(scores, key=scores.get), "intervals": against,
            "rows": [{k: v for k, v in r.items() if k != "per_scene"} for r in rows]}


def markdown(results: dict[str, Any]) -> str:
    ratios = results["keep_ratios"]
    media = [m for m in ("image", "video") if any(r["media"] == m for r in results["rows"])]
    head = " | ".join(f"{m} {100 * r:.1f} % caption / tag" for m in media for r in ratios)
    lines = [f"IWP variants on the validation split ({results['counts']['image']} images, "
             f"{results['counts']['video']} videos, each captioned and tagged). Score: mean of caption attribute "
             "accuracy and tag F1 over the modalities and keep ratios.", "",
             f"| variant | score | {head} |", "|---|---|" + "---|" * (2 * len(ratios))]
    unpruned = {r["media"]: r for r in results["rows"] if r["variant"] == "unpruned"}
    cells = " | ".join(f"{unpruned[m]['caption_attribute_accuracy']:.3f} / {unpruned[m]['tag_f1']:.3f}"
                       for m in media for _ in ratios)
    lines.append(f"| unpruned | – | {cells} |")
    ranked = {**results["scores"], **results.get("peer_scores", {})}
    for name, score in sorted(ranked.items(), key=lambda kv: -kv[1]):
        by = {(r["media"], r["keep_ratio"]): r for r in results["rows"] if r["variant"] == name}
        cells = " | ".join(f"{by[(m, r)]['caption_attribute_accuracy']:.3f} / {by[(m, r)]['tag_f1']:.3f}"
                           for m in media for r in ratios)
        lines.append(f"| {name} | {score:.3f} | {cells} |")
    lines += ["", f"`default` is BASE, the defaults when this screen was run: {BASE}. Best on val: **{results['best']}**.", ""]
    diffs = [e for e in results.get("intervals", []) if e["metric"] == "caption_attribute_accuracy" and "difference" in e]
    if diffs:
        lines += ["Caption attribute accuracy, each row minus `default` at the same keep ratio, in points of % of "
                  "unpruned, with its paired bootstrap 95 % interval (significant where it excludes 0):", "",
                  "| variant | media | keep | − default | 95 % CI | significant |", "|---|---|---|---|---|---|"]
        for e in diffs:
            ci = e["difference_ci"]
            cell = "–" if ci is None else f"{ci[0]:+.1f} to {ci[1]:+.1f}"
            diff = "–" if e["difference"] is None else f"{e['difference']:+.1f}"
            lines.append(f"| {e['method']} | {e['media']} | {100 * e['keep_ratio']:.1f} % | {diff} | {cell} | "
                         f"{'yes' if e['significant'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/ablation"))
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--videos", type=int, default=30)
    ap.add_argument("--keep-ratios", default="0.111,0.056")
    ap.add_argument("--variants", default=None, help="semicolon-separated variant names (default: all)")
    ap.add_argument("--peers", default="", help="comma-separated methods to run beside the variants, as yardsticks; "
                    "method@K runs one at decoder layer K")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads (pinned: results depend on it)")
    args = ap.parse_args(argv)
    results = ablate(args.model or default_model_path(), images=args.images, videos=args.videos,
                     keep_ratios=tuple(float(r) for r in args.keep_ratios.split(",")),
                     variants=tuple(args.variants.split(";")) if args.variants else None,
                     peers=tuple(m for m in args.peers.split(",") if m), threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text("# IWP ablation (validation split)\n\n" + markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
