"""How close the default model's greedy choices were on the demo scenes.

    python -m jobs.margins

For each demo scene's caption, with the demo's pruning (`PruningConfig` defaults), the smallest
gap between the top two next-token logits over the generated tokens, and the two tokens there.
A gap near zero is a near tie that another machine's float rounding or another encoder's pixels
could flip. Frames come straight from the scene generator, not from the demo's encoded files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import iwp_ops
from jobs.default_model import default_model_path
from jobs.eval import load
from jobs.sample_data import demo_scenes
from pipeline.config import PruningConfig
from pipeline.generation import GenerationEngine, GenerationRequest
from scenes.inputs import model_inputs


def closest_calls(model_path: str | Path, max_new_tokens: int = 40) -> list[dict]:
    """Per demo scene: the caption, whether it is exact, and its smallest top-two score gap, from
    the job's own engine (the scores it chose from, after the banned ids)."""
    model, processor = load(model_path)
    tok = processor.tokenizer
    cfg = PruningConfig()
    handle = iwp_ops.enable_pruning(model, method=cfg.method, keep_ratio=cfg.keep_ratio, layer=cfg.layer)
    engine = GenerationEngine(model, tok, handle)
    scenes = demo_scenes()
    tops: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(scenes))}

    def observe(rows: list[int], steps: torch.Tensor, scores: torch.Tensor) -> None:
        values, indices = scores.topk(2, dim=-1)
        for j, row in enumerate(rows):
            tops[row].append(torch.stack([values[j, 0] - values[j, 1], indices[j, 0], indices[j, 1]]))

    engine.observer = observe
    try:
        results = engine.generate([GenerationRequest(model_inputs(processor, scene, "caption"), max_new_tokens)
                                   for scene in scenes.values()])
    finally:
        handle.remove()
    rows = []
    for i, ((item_id, scene), result) in enumerate(zip(scenes.items(), results)):
        gaps = torch.stack(tops[i])
        step = int(gaps[:, 0].argmin())
        pair = tok.convert_ids_to_tokens([int(gaps[step, 1]), int(gaps[step, 2])])
        rows.append({"id": item_id, "caption": result.text, "exact": result.text == scene.caption(),
                     "min_gap": float(gaps[step, 0]), "at_token": step, "chose": pair[0], "over": pair[1]})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped reference model)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for r in closest_calls(args.model or default_model_path()):
        print(f"{r['id']:8s} exact {str(r['exact']):5s} smallest gap {r['min_gap']:6.2f} logits at token {r['at_token']:2d}: "
              f"{r['chose']!r} over {r['over']!r}")


if __name__ == "__main__":
    main()
