"""`iwp-annotate eval`: what visual-token pruning costs in accuracy on held-out scenes.

Runs the model on a split of `scenes.scene` (images and videos separately), unpruned, blind
(each question about another scene's pixels: what the answer format and priors alone score), and
with every pruning method at each keep ratio, and grades captions (attribute accuracy, exact
match) and tag answers (F1). Inputs are built once with the pipeline's own `build_inputs`
and reused by every configuration; generation is greedy and batched as in the model stage.

Every method gets the same tuning budget: its own main knob (`KNOBS`: IWP's λ, FastV's attention
layer, DART's pivot count, VisionZip's dominant share, EVS's features, CDPruner's relevance
weight) is chosen on the validation split at the
low keep ratios, and the choice runs on the test split as its own row (`<method>@val`) beside the
official default (`<method>`), so the reader sees both. `magnitude` is IWP with λ = 1 and IWP's
head setting (the paper's ablation); DivPrune, random and uniform have no knob. Torch's thread
count and seed are pinned and recorded with the library versions, so the report reproduces.
Each row keeps its per-scene scores, from which `jobs.eval_stats` draws paired bootstrap 95 %
intervals (each row's % of unpruned, and its difference from IWP); `first_scene` starts at any
scene index of the split, so a fresh slice can be drawn. Writes results.json, report.md and PNG
plots to the output folder.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.eval_stats import add_relative, intervals
from pipeline.config import ModelConfig
from pipeline.generation import GenerationEngine, GenerationRequest, load_model
from pipeline.preprocess import load_processor
from scenes.grading import caption_scores, tag_f1
from scenes.scene import MEDIA_TYPES, Scene, scenes
from scenes.inputs import TASKS, model_inputs

KEEP_RATIOS = (0.353, 0.222, 0.111, 0.056)
TUNE_RATIOS = (0.111, 0.056)  # where choices matter; as jobs.ablate
# method -> (the knob: a handle setting or method option, its values with the official default first)
KNOBS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "iwp": ("lam", (0.5, 0.25, 0.75)),
    "fastv": ("attention_layer", (1, 0, 2)),  # K-1 (official), K-2, K; pruning stays at K for all methods
    "dart": ("pivots", (4, 2, 8)),  # image and text pivots alike, as the official 4 + 4
    "visionzip": ("dominant_ratio", (54 / 64, 0.5, 1.0)),
    "evs": ("features", ("embeddings", "hidden")),  # vLLM's vision embeddings, or layer K's hidden states
    "cdpruner": ("relevance_weight", (1.0, 0.5, 0.0)),  # the paper's kernel, OpenVINO's sample, similarity only
}
THREADS = 2
# Handle settings a configuration may change, back at their defaults for the next one (settings persist).
RESET = {"attention_layer": None, "query_aware": False, "rotary_keys": True, "temporal_rotary": True,
         "per_frame": False}
PAPER_RETENTION = {0.353: 97.9, 0.222: 95.6, 0.111: 90.5}  # IWP on LLaVA-OneVision-7B, % of unpruned
METRICS = ("caption_attribute_accuracy", "caption_exact", "tag_f1")


@dataclass
class Item:
    scene: Scene
    task: str
    inputs: dict[str, np.ndarray]


def prepare(processor, split: str, counts: dict[str, int], first_scene: int = 0) -> dict[str, list[Item]]:
    """Both tasks for `counts[media]` scenes of each modality from scene index `first_scene`; inputs built once."""
    if first_scene < 0:
        raise ValueError(f"first_scene must be >= 0, got {first_scene}")
    out: dict[str, list[Item]] = {}
    for media in MEDIA_TYPES:
        out[media] = [Item(s, t, model_inputs(processor, s, t))
                      for s in scenes(split, media, counts[media], start=first_scene) for t in TASKS]
    return out


def load(model_path: str | Path):
    """The model as a job loads it (`load_model`: the same vision packing, the same device rule), in
    float32 so the report reproduces bit for bit on a CPU."""
    model = load_model(ModelConfig(path=str(model_path), dtype="float32"))
    return model, load_processor(str(model_path), False)


def generate(model, processor, items: list[Item], batch_size: int, max_new_tokens: int = 32,
             handle: Any = None) -> tuple[list[str], float, list[Any]]:
    """Greedy answers in item order through the job's engine (at most `batch_size` rows per
    forward), prefill seconds, per-item pruning stats."""
    engine = GenerationEngine(model, processor.tokenizer, handle, max_batch_size=batch_size)
    results = engine.generate([GenerationRequest(it.inputs, max_new_tokens=max_new_tokens) for it in items])
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise failed[0]
    stats = [r.stats if handle is not None and handle.enabled else None for r in results]
    return [r.text for r in results], engine.last_run.prefill_s, stats


def grade(items: list[Item], texts: list[str]) -> dict[str, float]:
    """Means over the items: the report's metrics, and per caption attribute and object count
    (`caption_<name>`, in results.json) to see which attribute a method costs."""
    captions = [caption_scores(it.scene, t) for it, t in zip(items, texts) if it.task == "caption"]
    tags = [tag_f1(it.scene, t) for it, t in zip(items, texts) if it.task == "tag"]
    return {
        **{f"caption_{k}": float(np.mean([c[k] for c in captions])) for k in captions[0]},
        "tag_f1": float(np.mean(tags)),
    }


def per_scene(items: list[Item], texts: list[str]) -> dict[str, list[float]]:
    """Each scene's caption attribute accuracy, exact caption and tag F1, in scene order (the
    items are scene after scene, both tasks): what the bootstrap resamples."""
    caption = [caption_scores(it.scene, t) for it, t in zip(items, texts) if it.task == "caption"]
    tags = [tag_f1(it.scene, t) for it, t in zip(items, texts) if it.task == "tag"]
    return {"caption_attribute_accuracy": [round(c["attribute_accuracy"], 6) for c in caption],
            "caption_exact": [c["exact"] for c in caption], "tag_f1": [round(f, 6) for f in tags]}


def value_text(value: Any) -> str:
    """A knob value as the reports print it (numbers to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def run_config(model, processor, handle, items: list[Item], method: str, keep_ratio: float, batch_size: int,
               **options: Any) -> dict[str, Any]:
    """One (method, keep ratio) on one modality; method 'none' runs unpruned."""
    if method == "none":
        handle.disable()
    else:
        handle.enable()
        handle.configure(method=method, keep_ratio=keep_ratio, **{**RESET, **options})
    texts, prefill, stats = generate(model, processor, items, batch_size, handle=handle)
    fid = [s.fidelity for s in stats if s is not None and s.fidelity is not None]
    kept = [s.visual_after for s in stats if s is not None]
    return {
        "method": method,
        "keep_ratio": 1.0 if method == "none" else keep_ratio,
        "options": {k: v for k, v in options.items() if k != "layer"},
        **grade(items, texts),
        "per_scene": per_scene(items, texts),
        "weight_fidelity": float(np.mean(fid)) if fid else None,
        "kept_tokens_mean": float(np.mean(kept)) if kept else None,
        "prefill_s_per_item": prefill / len(items),
        "samples": [{"seed": it.scene.seed, "task": it.task, "answer": t} for it, t in list(zip(items, texts))[:4]],
    }


def knob_settings(method: str, value: Any) -> dict[str, Any]:
    """The handle settings or method options that set `method`'s knob to `value`."""
    name = KNOBS[method][0]
    return {"image_pivots": value, "text_pivots": value} if name == "pivots" else {name: value}


def score(rows: list[dict[str, Any]]) -> float:
    """The tuning score: mean of caption attribute accuracy and tag F1 over the rows (as jobs.ablate)."""
    return float(np.mean([(r["caption_attribute_accuracy"] + r["tag_f1"]) / 2 for r in rows]))


def tune(model, processor, handle, data: dict[str, list[Item]], methods: tuple[str, ...], ratios: tuple[float, ...],
         batch_size: int, progress: bool = True) -> dict[str, Any]:
    """Every value of each tunable method's knob at `ratios` on `data` (the validation split); the
    chosen value has the best score, the official default on ties (it is listed first)."""
    out = {}
    for method in (m for m in methods if m in KNOBS):
        name, values = KNOBS[method]
        rows, scores = [], {}
        for value in values:
            cells = []
            for media, items in data.items():
                size = batch_size if media == "image" else max(1, batch_size // 4)
                for ratio in ratios:
                    row = {"media": media, "value": value,
                           **run_config(model, processor, handle, items, method, ratio, size, **knob_settings(method, value))}
                    cells.append(row)
                    if progress:
                        print(f"val {media:5s} {method:9s} {name}={value_text(value)} keep {ratio:.3f}: caption "
                              f"{row['caption_attribute_accuracy']:.3f} tag F1 {row['tag_f1']:.3f}", flush=True)
            scores[value] = score(cells)
            rows += [{k: v for k, v in r.items() if k not in ("samples", "per_scene")} for r in cells]
        out[method] = {"knob": name, "values": list(values), "default": values[0], "scores": [scores[v] for v in values],
                       "chosen": max(values, key=lambda v: scores[v]), "rows": rows}
    return out


def environment() -> dict[str, Any]:
    """What a rerun must match to reproduce the numbers bit for bit: library versions, threads, machine."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": platform.processor() or "unknown", "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def configurations(methods: tuple[str, ...], tuning: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, method, settings): each method at its official defaults, and where val chose
    another knob value, `<method>@val` with it."""
    out = []
    for method in methods:
        out.append((method, method, {}))
        chosen = tuning.get(method, {}).get("chosen")
        if method in tuning and chosen != tuning[method]["default"]:
            out.append((f"{method}@val", method, knob_settings(method, chosen)))
    return out


def evaluate(model_path: str | Path, *, split: str = "test", images: int = 100, videos: int = 50, first_scene: int = 0,
             methods: tuple[str, ...] | None = None, keep_ratios: tuple[float, ...] = KEEP_RATIOS, layer: int = 2,
             batch_size: int = 16, media_types: tuple[str, ...] = MEDIA_TYPES, progress: bool = True,
             partial: Path | None = None, tune_images: int = 40, tune_videos: int = 16,
             tune_ratios: tuple[float, ...] = TUNE_RATIOS, threads: int = THREADS) -> dict[str, Any]:
    """Every method at every keep ratio, per modality, with % of the unpruned score and paired
    bootstrap intervals, on `images` / `videos` scenes of `split` from index `first_scene`; first
    each tunable method's knob on the validation split (`tune_images` / `tune_videos` scenes from
    index 0; 0 and 0 skip it), unless `split` is itself the validation split.

    `partial`: a JSON file rewritten with the rows so far after each configuration, so a long
    run that is stopped keeps what it measured."""
    import iwp_ops

    methods = tuple(methods or iwp_ops.METHODS)
    torch.set_num_threads(threads)  # float sums, hence greedy answers at near-ties, depend on it
    torch.manual_seed(0)
    model, processor = load(model_path)
    handle = iwp_ops.enable_pruning(model, layer=layer)
    tuning: dict[str, Any] = {}
    if split != "val" and (tune_images or tune_videos):
        val = prepare(processor, "val", {"image": tune_images if "image" in media_types else 0,
                                         "video": tune_videos if "video" in media_types else 0})
        tuning = tune(model, processor, handle, {m: v for m, v in val.items() if v}, methods, tune_ratios, batch_size,
                      progress)
    data = prepare(processor, split, {"image": images if "image" in media_types else 0,
                                      "video": videos if "video" in media_types else 0}, first_scene)
    rows = []
    configs = configurations(methods, tuning)
    for media in media_types:
        size = batch_size if media == "image" else max(1, batch_size // 4)
        cells = [("none", "none", {}, 1.0), ("blind", "none", {}, 1.0)] + [
            (name, method, settings, r) for name, method, settings in configs for r in keep_ratios]
        for name, method, settings, ratio in cells:
            began = time.perf_counter()
            items = blind(data[media]) if name == "blind" else data[media]
            row = {"media": media, "items": len(items) // len(TASKS), "layer": layer,
                   **run_config(model, processor, handle, items, method, ratio, size, **settings),
                   "method": name, "base_method": method}
            rows.append(row)
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(rows))
            if progress:
                print(f"{media:5s} {name:13s} keep {row['keep_ratio']:.3f}: caption {row['caption_attribute_accuracy']:.3f} "
                      f"exact {row['caption_exact']:.3f} tag F1 {row['tag_f1']:.3f} ({time.perf_counter() - began:.0f} s)",
                      flush=True)
    add_relative(rows, METRICS)
    return {"model": str(model_path), "split": split, "layer": layer, "counts": {"image": images, "video": videos},
            "first_scene": first_scene, "intervals": intervals(rows, METRICS),
            "keep_ratios": list(keep_ratios), "methods": [name for name, _, _ in configs],
            "tuning": {m: {k: v for k, v in t.items() if k != "rows"} for m, t in tuning.items()},
            "tuning_counts": {"image": tune_images, "video": tune_videos}, "tuning_ratios": list(tune_ratios),
            "tuning_rows": [dict(r, method=m) for m, t in tuning.items() for r in t["rows"]],
            "environment": environment(), "rows": rows}


def blind(items: list[Item]) -> list[Item]:
    """Each question asked about the next scene's pixels: the score of answering without looking."""
    media_keys = [k for k in items[0].inputs if k.startswith("pixel") or k.endswith("grid_thw") or k == "second_per_grid_ts"]
    out = []
    for i, it in enumerate(items):
        other = items[(i + len(TASKS)) % len(items)].inputs
        out.append(Item(it.scene, it.task, {**it.inputs, **{k: other[k] for k in media_keys}}))
    return out
