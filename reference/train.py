"""Train the shipped reference VLM on procedural scenes, on a CPU or one GPU, reproducibly.

The model is transformers' own Qwen2_5_VLForConditionalGeneration with a small config,
the word-level tokenizer and the stock Qwen2-VL processors (as in `reference.builders`),
trained to caption and to tag images and videos from `scenes.scene`. Inputs go through
the pipeline's own `build_inputs`, so training sees exactly what a job feeds the model; data-loader
workers render each step's scenes (`StepBatches`). Besides the answer loss, training-only signals
speed it up on a small budget: the per-token probes of `reference.token_labels` (what object and
how it moves, which cell) and the caption pointer (`pointer_loss`). From `prune_from` of the
schedule on, a share of the batches runs with visual tokens pruned at decoder layer `PRUNE_LAYER`
(`pruned_steps`), so the model learns to answer from a subset of its tokens, whichever method picked it.

    python -m reference.train --out reference/model --steps 2800 --device cuda --workers 14 \
        --image-batch 16 --video-batch 8 --video-every 2      # the shipped model: 7.9 min on one H100
    python -m reference.train --out reference/model            # the CPU schedule: 1,800 steps, ~45 min on 2 cores

writes the model (bf16 safetensors + processor) and `train_log.json` / `loss.png` beside it.
`reference/train_gpu.sh` fits the step count to a GPU lease.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

import iwp_ops
from pipeline.collate import collate
from scenes.inputs import TASKS, model_inputs
from scenes.scene import Scene, make_scene
from reference.token_labels import TokenProbe, token_cells, token_labels, token_objects
from reference.builders import qwen_model

# Text: 4 layers of width 256 (8 heads of 32). M-RoPE gives the width section the lowest
# frequencies; with the usual base 10^4 they barely rotate across a 16-token row. Base 100
# lets height and width resolve the grid while the lowest frequencies still rotate little
# over an answer, so matching by content does not depend on how far into the answer a
# token is (base 20 trained to a plateau here).
TEXT = {"hidden": 256, "layers": 4, "rope_theta": 100.0, "mrope_section": [4, 6, 6]}
VISION = {"depth": 2, "hidden_size": 96, "intermediate_size": 192, "num_heads": 2, "fullatt_block_indexes": [1],
          "window_size": 112}
# (decoder layer, query head) whose attention is taught where each caption object is; see `pointer_loss`.
POINTER_HEADS = ((2, 0), (3, 0))
# Pruning in training: at the evaluation's layer, each pruned batch with the next method in turn
# (every method the same share) and per-item keep ratios drawn from this range.
PRUNE_LAYER = 2
PRUNE_KEEP = (0.05, 0.4)


def build_model_and_processor(seed: int):
    """A fresh Qwen2.5-VL of the reference size, and its processor."""
    torch.manual_seed(seed)
    model, processor = qwen_model("qwen2_5_vl", TEXT["hidden"], TEXT["layers"],
                                  vision={**VISION, "out_hidden_size": TEXT["hidden"]}, rope_theta=TEXT["rope_theta"],
                                  mrope_section=TEXT["mrope_section"], heads=(TEXT["hidden"] // 32, TEXT["hidden"] // 64))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model, processor


def answer_ids(tokenizer, scene: Scene, task: str) -> tuple[list[int], list[int]]:
    """The answer's token ids and, per id, the index of the scene object it describes (-1: none).

    A caption is its objects' phrases joined by " , ": each phrase and the comma before it
    belong to that object; the closing " ." and tag answers belong to none.
    """
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if task == "tag":
        answer = ids(scene.tag_answer())
        return answer, [-1] * len(answer)
    answer, owner = [], []
    for j, o in enumerate(scene.objects):
        piece = ids((", " if j else "") + o.phrase(scene.media_type == "video"))
        answer += piece
        owner += [j] * len(piece)
    end = ids(".")
    return answer + end, owner + [-1] * len(end)


def training_example(processor, scene: Scene, task: str) -> dict[str, np.ndarray]:
    """Inputs with the answer and end-of-turn appended; `labels` score only those tokens.

    `pointer` holds, per position, the object its next token describes (-1: none), and
    `key_object` the object under each visual token (-1: background or text), for `pointer_loss`.
    """
    item = model_inputs(processor, scene, task)
    tok = processor.tokenizer
    ids, owner = answer_ids(tok, scene, task)
    answer = np.asarray(ids + [tok.eos_token_id])
    n = len(item["input_ids"])
    visual = np.isin(item["input_ids"], [processor.image_token_id, processor.video_token_id])
    item["input_ids"] = np.concatenate([item["input_ids"], answer])
    item["attention_mask"] = np.concatenate([item["attention_mask"], np.ones_like(answer)])
    if "mm_token_type_ids" in item:
        item["mm_token_type_ids"] = np.concatenate([item["mm_token_type_ids"], np.zeros_like(answer)])
    item["labels"] = np.concatenate([np.full(n, -100), answer])
    item["pointer"] = np.concatenate([np.full(n - 1, -1), owner, [-1, -1]])
    key_object = np.full(len(item["input_ids"]), -1)
    key_object[np.flatnonzero(visual)] = token_objects(scene) - 1
    item["key_object"] = key_object
    return item


TARGETS = ("labels", "pointer", "key_object")


def batch_of(items: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate([{k: v for k, v in x.items() if k not in TARGETS} for x in items], pad_id, torch.device("cpu"),
                    torch.float32)
    width = batch["input_ids"].shape[1]
    for key in TARGETS:
        batch[key] = torch.from_numpy(np.stack([np.pad(x[key], (width - len(x[key]), 0),
                                                       constant_values=-100 if key == "labels" else -1)
                                                for x in items]))
    return batch


class StepBatches(torch.utils.data.Dataset):
    """Step `s`'s batch and probe labels, made from its own scenes alone.

    A step's scenes follow from how many steps of its media came before it, so data-loader
    workers build steps in parallel and any number of workers gives the same batches.
    """

    def __init__(self, processor, video_every: int, image_batch: int, video_batch: int, first_scene: int):
        self.processor, self.video_every, self.first_scene = processor, video_every, first_scene
        self.size = {"image": image_batch, "video": video_batch}

    def media(self, step: int) -> str:
        return "video" if self.video_every and step % self.video_every == self.video_every - 1 else "image"

    def scenes_seen(self, steps: int) -> dict[str, int]:
        """Index of the next unseen training scene per media after `steps` steps."""
        videos = steps // self.video_every if self.video_every else 0
        return {media: self.first_scene + count * self.size[media]
                for media, count in (("image", steps - videos), ("video", videos))}

    def __getitem__(self, step: int) -> tuple[str, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        media = self.media(step)
        first = self.scenes_seen(step)[media]
        items, labels, cells = [], [], []
        for index in range(first, first + self.size[media]):
            scene = make_scene("train", media, index)
            items.append(training_example(self.processor, scene, TASKS[index % 2]))
            labels.append(token_labels(scene))
            cells.append(token_cells(scene))
        batch = batch_of(items, self.processor.tokenizer.pad_token_id)
        return media, batch, torch.from_numpy(np.concatenate(labels)), torch.from_numpy(np.concatenate(cells))


def pointer_loss(attentions: tuple[torch.Tensor, ...], pointer: torch.Tensor, key_object: torch.Tensor) -> torch.Tensor:
    """Mean -log of the attention mass that `POINTER_HEADS` put on the object each caption token is about.

    A caption token must find the one to twelve tokens of its object among hundreds of
    background tokens. This names them; with it the two heads put ~80 % of their attention on
    the right object within a few hundred steps. The weights stay a plain Qwen2.5-VL, and the
    supervision is used only in training.
    """
    target = (pointer[:, :, None] >= 0) & (pointer[:, :, None] == key_object[:, None, :])
    rows = target.any(-1)
    if not rows.any():
        return attentions[0].new_zeros(())
    mass = torch.stack([(attentions[layer][:, head] * target).sum(-1)[rows] for layer, head in POINTER_HEADS])
    return -torch.log(mass + 1e-6).mean()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled answer tokens (as the model's own loss).

    Pruning drops visual tokens only; the answer ends every row and stays, right-aligned, so
    the last `logits.shape[1]` labels line up with the logits of the pruned sequence too.
    """
    labels = labels[:, -logits.shape[1]:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=-100)


# The methods the shipped model's pruned steps rotate through: the eight there were when it was
# trained, named here so that peers added since (EVS, CDPruner) do not change the recipe.
TRAINED_METHODS = ("iwp", "magnitude", "random", "uniform", "fastv", "divprune", "dart", "visionzip")


def pruned_steps(steps: int, prune_from: float, share: float, seed: int) -> dict[int, str]:
    """Which steps run pruned (from `prune_from` of the schedule, each with probability `share`) and
    with which method: the methods in turn, so each is trained against equally."""
    rng = random.Random(seed)
    chosen = [s for s in range(steps) if s >= prune_from * steps and rng.random() < share]
    return {s: TRAINED_METHODS[i % len(TRAINED_METHODS)] for i, s in enumerate(chosen)}


def unit_scale(features: torch.Tensor) -> torch.Tensor:
    """RMS-normalised features for the probes, so that a probe cannot lower its loss by the model
    scaling its hidden states up instead of encoding the labels."""
    return torch.nn.functional.rms_norm(features, features.shape[-1:])


def schedule(step_fraction: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak learning rate."""
    if step_fraction < warmup:
        return step_fraction / warmup
    progress = min(1.0, (step_fraction - warmup) / (1 - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def load_for_training(path: Path):
    """A saved model (fp32 for training) and its processor, to continue training from."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return model, AutoProcessor.from_pretrained(path, local_files_only=True)


def train(out: Path, *, steps: int, seed: int, lr: float, image_batch: int, video_batch: int,
          video_every: int, aux_weight: float = 1.0, pointer_weight: float = 1.0, cell_layer: int = 1,
          prune_from: float = 0.3, prune_share: float = 0.5, checkpoint_every: int = 100, stop_after: int | None = None,
          init: Path | None = None, first_scene: int = 0, device: str = "cpu", workers: int = 0) -> dict:
    """Train for `steps` steps: image batches, and every `video_every`-th step a video batch.

    `aux_weight` scales the per-token probe losses (`reference.token_labels`; the cell probe
    reads the output of decoder layer `cell_layer`), `pointer_weight` the caption pointer loss
    (0 turns it off, and the decoder keeps SDPA attention; pruned batches skip it, their attention
    maps cover the kept tokens only). `prune_from` and `prune_share`: see `pruned_steps` (share 0:
    never prune). The model is saved every
    `checkpoint_every` steps and at the end; `stop_after` ends early on the learning-rate
    schedule of the full `steps`, reproducing that checkpoint. `init` continues from a saved
    model; `first_scene` starts the training scenes there, so a continuation sees new scenes.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device(device)
    model, processor = load_for_training(init) if init else build_model_and_processor(seed)
    model.to(device)
    if pointer_weight > 0:
        model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})  # SDPA returns no weights
    model.train()
    hidden = model.config.text_config.hidden_size
    probe, cell_probe = TokenProbe(hidden).to(device), torch.nn.Linear(hidden, 9).to(device)
    if cell_layer >= PRUNE_LAYER:
        raise ValueError(f"cell_layer must read a layer below the pruning layer {PRUNE_LAYER}")
    pruning = iwp_ops.enable_pruning(model, layer=PRUNE_LAYER, record_fidelity=False)
    pruning.disable()
    prune_at = pruned_steps(steps, prune_from, prune_share, seed)
    seen: dict[str, torch.Tensor] = {}
    model.model.visual.register_forward_hook(lambda _m, _i, out: seen.__setitem__("vision", out.pooler_output))
    model.model.language_model.layers[cell_layer].register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("decoder", out[0] if isinstance(out, tuple) else out))
    visual_ids = torch.tensor([processor.image_token_id, processor.video_token_id], device=device)
    params = [p for m in (model, probe, cell_probe) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    last = min(steps, stop_after or steps)
    batches = StepBatches(processor, video_every, image_batch, video_batch, first_scene)
    # Its own generator: a loader draws a base seed when iterated, and from the global one that draw
    # would shift the random pruning method's draws on CPU.
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(last), num_workers=workers,
                                         prefetch_factor=4 if workers else None, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(seed))
    log: list[dict] = []
    started = time.perf_counter()
    settings = {"seed": seed, "steps": steps, "stop_after": stop_after, "init": str(init) if init else None,
                "first_scene": first_scene, "lr": lr, "image_batch": image_batch, "video_batch": video_batch,
                "video_every": video_every, "aux_weight": aux_weight, "pointer_weight": pointer_weight,
                "pointer_heads": POINTER_HEADS, "cell_layer": cell_layer, "prune_from": prune_from,
                "prune_share": prune_share, "prune_layer": PRUNE_LAYER, "prune_keep": PRUNE_KEEP, "text": TEXT,
                "vision": VISION, "parameters": sum(p.numel() for p in model.parameters()), "device": str(device)}
    for step, (media, batch, labels, cells) in enumerate(loader):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels, cells = labels.to(device, non_blocking=True), cells.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step / steps)
        pointer, key_object, answer = batch.pop("pointer"), batch.pop("key_object"), batch.pop("labels")
        method = prune_at.get(step)
        if method:
            pruning.enable()
            pruning.configure(method=method, keep_ratio=[random.uniform(*PRUNE_KEEP) for _ in range(len(answer))])
        else:
            pruning.disable()
        pointing = pointer_weight > 0 and not method
        outputs = model(**batch, output_attentions=pointing)
        loss = answer_loss(outputs.logits, answer)
        decoder_visual = unit_scale(seen["decoder"][torch.isin(batch["input_ids"], visual_ids)])
        aux = probe(unit_scale(seen["vision"]), labels) + \
            torch.nn.functional.cross_entropy(cell_probe(decoder_visual), cells)
        opt.zero_grad(set_to_none=True)
        point = pointer_loss(outputs.attentions, pointer, key_object) if pointing else loss.new_zeros(())
        (loss + aux_weight * aux + pointer_weight * point).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_v, aux_v, point_v = torch.stack([loss.detach(), aux.detach(), point.detach()]).tolist()
        log.append({"step": step, "media": media, "pruned": method, "loss": loss_v, "probe_loss": aux_v,
                    "pointer_loss": point_v, "elapsed_s": time.perf_counter() - started})
        if step % 10 == 0 or step == last - 1:
            print(f"step {step:5d} {media:5s} {method or '':9s} loss {loss_v:.4f} probe {aux_v:.4f} pointer {point_v:.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {time.perf_counter() - started:7.1f} s", flush=True)
        if (step + 1) % checkpoint_every == 0 or step == last - 1:
            summary = {**settings, "steps_done": step + 1, "scenes_seen": batches.scenes_seen(step + 1),
                       "train_seconds": time.perf_counter() - started, "log": log}
            save(model, processor, out, summary)
    return summary


def save(model, processor, out: Path, summary: dict) -> None:
    """bf16 safetensors (half the bytes; the model is trained in fp32), processor files, log and loss plot."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state)
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    plot_loss(summary, out / "loss.png")


def plot_loss(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for media in ("image", "video"):
        pts = [(r["step"], r["loss"]) for r in summary["log"] if r["media"] == media]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, label=f"{media} batches", lw=0.8)
    ax.set(xlabel="step", ylabel="cross-entropy on answer tokens", yscale="log",
           title=f"reference model training ({summary['train_seconds'] / 60:.1f} min, {summary.get('device', 'cpu')})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reference/model"))
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=6e-4,
                    help="peak learning rate; at 2e-3, three directions held 99%% of the visual tokens' hidden-state "
                         "energy by decoder layer 2 and the attended values carried no colour")
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--video-batch", type=int, default=3)
    ap.add_argument("--video-every", type=int, default=2)
    ap.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-token probe loss")
    ap.add_argument("--pointer-weight", type=float, default=1.0, help="weight of the caption pointer loss (0: off)")
    ap.add_argument("--prune-from", type=float, default=0.3, help="fraction of the schedule after which batches may run pruned")
    ap.add_argument("--prune-share", type=float, default=0.5, help="share of the batches after --prune-from that run pruned")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of the schedule")
    ap.add_argument("--init", type=Path, default=None, help="continue training this saved model")
    ap.add_argument("--first-scene", type=int, default=0, help="index of the first training scene per modality")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="save the model every this many steps")
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    ap.add_argument("--workers", type=int, default=0, help="data-loader processes that render scenes (0: in the main one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    summary = train(args.out, steps=args.steps, seed=args.seed, lr=args.lr, image_batch=args.image_batch,
                    video_batch=args.video_batch, video_every=args.video_every, aux_weight=args.aux_weight,
                    pointer_weight=args.pointer_weight, prune_from=args.prune_from, prune_share=args.prune_share,
                    init=args.init, first_scene=args.first_scene, stop_after=args.stop_after, device=args.device,
                    checkpoint_every=args.checkpoint_every, workers=args.workers)
    print(f"saved {args.out} after {summary['steps_done']} steps, {summary['train_seconds'] / 60:.1f} min; "
          f"final loss {summary['log'][-1]['loss']:.4f}")


if __name__ == "__main__":
    main()
