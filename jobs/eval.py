"""`iwp-annotate eval`: what visual-token pruning costs in accuracy on held-out scenes.

Runs the model on a split of `scenes.scene` (images and videos separately), unpruned, blind
(each question about another scene's pixels: what the answer format and priors alone score), and
with every pruning method at each keep ratio, and grades captions (attribute accuracy, exact
match) and tag answers (F1). Inputs are built once with the pipeline's own `build_inputs`
and reused by every configuration; generation is greedy and batched as in the model stage.
Writes results.json, report.md and PNG plots to the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.collate import collate
from pipeline.engine import _FirstStepClock
from scenes.grading import caption_scores, tag_f1
from scenes.scene import MEDIA_TYPES, Scene, scenes
from scenes.inputs import TASKS, model_inputs

KEEP_RATIOS = (0.353, 0.222, 0.111, 0.056)
PAPER_RETENTION = {0.353: 97.9, 0.222: 95.6, 0.111: 90.5}  # IWP on LLaVA-OneVision-7B, % of unpruned
METRICS = ("caption_attribute_accuracy", "caption_exact", "tag_f1")


@dataclass
class Item:
    scene: Scene
    task: str
    inputs: dict[str, np.ndarray]


def prepare(processor, split: str, counts: dict[str, int]) -> dict[str, list[Item]]:
    """Both tasks for the first `counts[media]` scenes of each modality; inputs built once."""
    out: dict[str, list[Item]] = {}
    for media in MEDIA_TYPES:
        out[media] = [Item(s, t, model_inputs(processor, s, t)) for s in scenes(split, media, counts[media]) for t in TASKS]
    return out


def load(model_path: str | Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32, local_files_only=True)
    return model.eval(), processor


@torch.inference_mode()
def generate(model, processor, items: list[Item], batch_size: int, max_new_tokens: int = 32,
             handle: Any = None) -> tuple[list[str], float, list[Any]]:
    """Greedy answers in item order, prefill seconds summed over batches, per-item pruning stats."""
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    suppress = sorted(set(tok.all_special_ids) - set(eos if isinstance(eos, list) else [eos]))
    order = sorted(range(len(items)), key=lambda i: (items[i].task, len(items[i].inputs["input_ids"])))
    texts: list[str] = [""] * len(items)
    stats: list[Any] = [None] * len(items)
    prefill = 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([items[i].inputs for i in chunk], tok.pad_token_id, model.device, model.dtype)
        clock = _FirstStepClock()
        began = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False,
                             suppress_tokens=suppress, pad_token_id=tok.pad_token_id, logits_processor=[clock])
        prefill += (clock.at or time.perf_counter()) - began
        decoded = processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, i in enumerate(chunk):
            texts[i] = decoded[j].strip()
            stats[i] = handle.last_stats[j] if handle is not None and handle.enabled and handle.last_stats else None
    return texts, prefill, stats


def grade(items: list[Item], texts: list[str]) -> dict[str, float]:
    """Means over the items: the report's metrics, and per caption attribute and object count
    (`caption_<name>`, in results.json) to see which attribute a method costs."""
    captions = [caption_scores(it.scene, t) for it, t in zip(items, texts) if it.task == "caption"]
    tags = [tag_f1(it.scene, t) for it, t in zip(items, texts) if it.task == "tag"]
    return {
        **{f"caption_{k}": float(np.mean([c[k] for c in captions])) for k in captions[0]},
        "tag_f1": float(np.mean(tags)),
    }


def run_config(model, processor, handle, items: list[Item], method: str, keep_ratio: float, batch_size: int,
               **options: Any) -> dict[str, Any]:
    """One (method, keep ratio) on one modality; method 'none' runs unpruned."""
    if method == "none":
        handle.disable()
    else:
        handle.enable()
        handle.configure(method=method, keep_ratio=keep_ratio, **options)
    texts, prefill, stats = generate(model, processor, items, batch_size, handle=handle)
    fid = [s.fidelity for s in stats if s is not None and s.fidelity is not None]
    kept = [s.visual_after for s in stats if s is not None]
    return {
        "method": method,
        "keep_ratio": 1.0 if method == "none" else keep_ratio,
        "options": {k: v for k, v in options.items() if k != "layer"},
        **grade(items, texts),
        "weight_fidelity": float(np.mean(fid)) if fid else None,
        "kept_tokens_mean": float(np.mean(kept)) if kept else None,
        "prefill_s_per_item": prefill / len(items),
        "samples": [{"seed": it.scene.seed, "task": it.task, "answer": t} for it, t in list(zip(items, texts))[:4]],
    }


def evaluate(model_path: str | Path, *, split: str = "test", images: int = 100, videos: int = 50,
             methods: tuple[str, ...] | None = None, keep_ratios: tuple[float, ...] = KEEP_RATIOS, layer: int = 2,
             batch_size: int = 16, media_types: tuple[str, ...] = MEDIA_TYPES, progress: bool = True,
             partial: Path | None = None) -> dict[str, Any]:
    """Every method at every keep ratio, per modality, with % of the unpruned score.

    `partial`: a JSON file rewritten with the rows so far after each configuration, so a long
    run that is stopped keeps what it measured."""
    import iwp_ops

    methods = tuple(methods or iwp_ops.METHODS)
    torch.manual_seed(0)  # the random baseline draws from torch's generator: same run, same numbers
    model, processor = load(model_path)
    data = prepare(processor, split, {"image": images if "image" in media_types else 0,
                                      "video": videos if "video" in media_types else 0})
    handle = iwp_ops.enable_pruning(model, layer=layer)
    rows = []
    for media in media_types:
        size = batch_size if media == "image" else max(1, batch_size // 4)
        configs = [("none", 1.0), ("blind", 1.0)] + [(m, r) for m in methods for r in keep_ratios]
        for method, ratio in configs:
            began = time.perf_counter()
            items = blind(data[media]) if method == "blind" else data[media]
            row = {"media": media, "items": len(items) // len(TASKS), "layer": layer,
                   **run_config(model, processor, handle, items, "none" if method == "blind" else method, ratio, size),
                   "method": method}
            rows.append(row)
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(rows))
            if progress:
                print(f"{media:5s} {method:9s} keep {row['keep_ratio']:.3f}: caption {row['caption_attribute_accuracy']:.3f} "
                      f"exact {row['caption_exact']:.3f} tag F1 {row['tag_f1']:.3f} ({time.perf_counter() - began:.0f} s)",
                      flush=True)
    add_relative(rows)
    return {"model": str(model_path), "split": split, "layer": layer, "counts": {"image": images, "video": videos},
            "keep_ratios": list(keep_ratios), "methods": list(methods), "rows": rows}


def blind(items: list[Item]) -> list[Item]:
    """Each question asked about the next scene's pixels: the score of answering without looking."""
    media_keys = [k for k in items[0].inputs if k.startswith("pixel") or k.endswith("grid_thw") or k == "second_per_grid_ts"]
    out = []
    for i, it in enumerate(items):
        other = items[(i + len(TASKS)) % len(items)].inputs
        out.append(Item(it.scene, it.task, {**it.inputs, **{k: other[k] for k in media_keys}}))
    return out


def add_relative(rows: list[dict[str, Any]]) -> None:
    """`relative`: each metric as % of the unpruned run on the same modality."""
    base = {r["media"]: r for r in rows if r["method"] == "none"}
    for r in rows:
        b = base[r["media"]]
        r["relative"] = {m: (100.0 * r[m] / b[m] if b[m] else None) for m in METRICS}
