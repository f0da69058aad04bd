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
from pipeline.collate import collate
from pipeline.config import PruningConfig
from scenes.inputs import model_inputs


@torch.inference_mode()
def closest_calls(model_path: str | Path, max_new_tokens: int = 40) -> list[dict]:
    """Per demo scene: the caption, whether it is exact, and its smallest top-two logit gap."""
    model, processor = load(model_path)
    tok = processor.tokenizer
    cfg = PruningConfig()
    handle = iwp_ops.enable_pruning(model, method=cfg.method, keep_ratio=cfg.keep_ratio, layer=cfg.layer)
    rows = []
    try:
        for item_id, scene in demo_scenes().items():
            batch = collate([model_inputs(processor, scene, "caption")], tok.pad_token_id, model.device, model.dtype)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            values, indices = torch.stack([s[0] for s in out.scores]).topk(2, dim=-1)
            gaps = values[:, 0] - values[:, 1]
            step = int(gaps.argmin())
            pair = tok.convert_ids_to_tokens(indices[step].tolist())
            caption = tok.decode(out.sequences[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            rows.append({"id": item_id, "caption": caption, "exact": caption == scene.caption(),
                         "min_gap": float(gaps[step]), "at_token": step, "chose": pair[0], "over": pair[1]})
    finally:
        handle.remove()
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
