"""The model stage: a Ray actor that holds one VLM and annotates batches of ready inputs.

Follows the stage contract (resources at construction, setup once, process a batch): the
actor loads the model once, packs its rows into token-budgeted model batches, and splits a
batch that fails (out of memory or otherwise) until the single culprit is marked failed.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from pipeline.batching import pack_by_tokens
from pipeline.config import PipelineConfig
from pipeline.preprocess import load_processor
from pipeline.schema import FAILED, OK, mark_failed, to_result_table
from pipeline.tensors import unpack

MEDIA_KEYS = {
    "image": ("pixel_values", "image_grid_thw"),
    "video": ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_model(cfg: PipelineConfig):
    """`from_pretrained` on a local directory: no network, remote code only if asked."""
    from transformers import AutoModelForImageTextToText

    device = resolve_device(cfg.model.device)
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.model.path,
        dtype=resolve_dtype(cfg.model.dtype, device),
        local_files_only=True,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return model.to(device).eval()


def collate(items: list[dict[str, np.ndarray]], pad_id: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Left-pad the token sequences and concatenate the visual inputs in item order."""
    width = max(len(x["input_ids"]) for x in items)
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        if key in items[0]:
            rows = [np.pad(x[key], (width - len(x[key]), 0), constant_values=fill) for x in items]
            batch[key] = torch.from_numpy(np.stack(rows)).to(device)
    for keys in MEDIA_KEYS.values():
        for key in keys:
            parts = [x[key] for x in items if key in x]
            if parts:
                tensor = torch.from_numpy(np.concatenate(parts))
                batch[key] = tensor.to(device, dtype if tensor.is_floating_point() and key.startswith("pixel") else None)
    return batch


class ModelEngine:
    """Callable class for `map_batches`: one loaded model per actor, reused for every batch."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.processor = load_processor(cfg.model.path, cfg.model.trust_remote_code)
        self.model = load_model(cfg)
        self.device = self.model.device
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        # Placeholders and padding are never valid caption words; end-of-sequence must stay.
        self.suppress = sorted(set(tok.all_special_ids) - eos_ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = _rows(batch)
        ready = [r for r in rows if r["status"] == OK]
        inputs = [unpack(r["inputs"]) for r in ready]
        packs = pack_by_tokens(
            [len(x["input_ids"]) for x in inputs],
            self.cfg.batching.max_batch_size,
            self.cfg.batching.max_batch_tokens,
        )
        for group in packs:
            self._run([ready[i] for i in group], [inputs[i] for i in group])
        for r in rows:
            r.update(model=self.cfg.model.path, task=self.cfg.task)
            if r["status"] == OK and r.get("num_kept_tokens") is None:
                r["num_kept_tokens"] = r["num_visual_tokens"]
        return to_result_table(rows)

    def _run(self, rows: list[dict], inputs: list[dict[str, np.ndarray]]) -> None:
        """Generate for one model batch; on failure split it so only the culprit fails."""
        started = time.perf_counter()
        try:
            captions = self._generate(inputs)
        except Exception as exc:  # OOM or a model error: isolate the item that causes it
            if isinstance(exc, torch.OutOfMemoryError) and self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rows) == 1:
                mark_failed(rows[0], "model", exc)
                return
            half = len(rows) // 2
            self._run(rows[:half], inputs[:half])
            self._run(rows[half:], inputs[half:])
            return
        elapsed = time.perf_counter() - started
        for row, caption in zip(rows, captions):
            row["latency_s"] += elapsed
            if caption:
                row["caption"] = caption
            else:
                mark_failed(row, "model", ValueError("model produced an empty caption"))

    @torch.inference_mode()
    def _generate(self, inputs: list[dict[str, np.ndarray]]) -> list[str]:
        batch = collate(inputs, self.pad_id, self.device, self.model.dtype)
        out = self.model.generate(
            **batch,
            max_new_tokens=self.cfg.generation.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            suppress_tokens=self.suppress,
            pad_token_id=self.pad_id,
        )
        texts = self.processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts]


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _scalar(batch[k][i]) for k in keys} for i in range(n)]


def _scalar(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
