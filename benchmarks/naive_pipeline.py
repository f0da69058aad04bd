"""The caption job a user would write with Ray Data and transformers alone, without this project.

The baseline of `benchmarks.bench_naive`: read the manifest, decode with decord / PIL in a
`map_batches` task, caption fixed batches of rows with the unpruned model's `generate()` in one
actor, write Parquet. Written as a competent user would, not as a strawman: the same sampling
(8 uniform frames, longest side 448), the same chat prompts, dtype (float32 on CPU), greedy
decoding, `max_new_tokens`, one CPU (so one torch thread) for the model actor as ours has, and a
batch of 8 rows, our `max_batch_size`. It has none of our guarantees: a bad file fails the job.

Usage: ``python -m benchmarks.naive_pipeline --input MANIFEST --output DIR [--model DIR]``
"""

from __future__ import annotations

import argparse

import numpy as np
import ray
from PIL import Image

PROMPTS = {"image": "describe this image .", "video": "describe this video ."}
NUM_FRAMES, MAX_SIDE = 8, 448


def fit(frame: np.ndarray) -> np.ndarray:
    img = Image.fromarray(frame)
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    return np.asarray(img)


def decode(batch: dict[str, np.ndarray]) -> dict[str, list]:
    import decord

    frames, fps, kinds = [], [], []
    for uri in batch["uri"]:
        if uri.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            frames.append(fit(np.asarray(Image.open(uri).convert("RGB")))[None])
            fps.append(0.0), kinds.append("image")
            continue
        video = decord.VideoReader(uri, num_threads=1)
        index = np.linspace(0, len(video) - 1, min(NUM_FRAMES, len(video))).round().astype(int)
        frames.append(np.stack([fit(f) for f in video.get_batch(list(index)).asnumpy()]))
        fps.append(video.get_avg_fps() * (len(index) - 1) / max(1, index[-1] - index[0])), kinds.append("video")
    return {"id": list(batch["id"]), "frames": frames, "fps": fps, "kind": kinds}


class Captioner:
    def __init__(self, model: str, max_new_tokens: int):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues on the right
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import torch

        texts, images, videos, metadata = [], [], [], []
        for frames, fps, kind in zip(batch["frames"], batch["fps"], batch["kind"]):
            chat = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": PROMPTS[kind]}]}]
            texts.append(self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
            if kind == "image":
                images.append(frames[0])
            else:
                videos.append(frames)
                metadata.append({"fps": fps, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))})
        inputs = self.processor(text=texts, images=images or None, videos=videos or None,
                                video_metadata=metadata or None, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        captions = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return {"id": list(batch["id"]), "caption": [c.strip() for c in captions]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="manifest Parquet with id and uri columns")
    p.add_argument("--output", required=True, help="folder for the captions' Parquet files")
    p.add_argument("--model", default="reference/model")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    ds = ray.data.read_parquet(args.input, columns=["id", "uri"])
    ds = ds.map_batches(decode, batch_size=4)
    ds = ds.map_batches(Captioner, fn_constructor_kwargs={"model": args.model, "max_new_tokens": args.max_new_tokens},
                        batch_size=args.batch_size, concurrency=1, num_cpus=1)
    ds.write_parquet(args.output)


if __name__ == "__main__":
    main()
