"""Left-padded model batches from preprocessed items: what the model stage and training both feed the model.

Kept apart from the engine so that code without Ray (training, evaluation) can build the same batches.
"""

from __future__ import annotations

import numpy as np
import torch

MEDIA_KEYS = {
    "image": ("pixel_values", "image_grid_thw", "image_sizes", "batch_num_images"),
    "video": ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
}


def _stack_images(parts: list[np.ndarray]) -> np.ndarray:
    """LLaVA-OneVision gives each image ``[1, patches, C, H, W]`` with as many crops as its aspect
    needs; the model trims each back to its own count (from ``image_sizes``), so shorter ones are
    zero-padded, as its processor pads them within one call. Qwen's flat patches just concatenate."""
    if parts[0].ndim == 5 and len({p.shape[1] for p in parts}) > 1:
        most = max(p.shape[1] for p in parts)
        parts = [np.pad(p, [(0, 0), (0, most - p.shape[1])] + [(0, 0)] * 3) for p in parts]
    return np.concatenate(parts)


def stack_key(inputs: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Items with different keys cannot share a model batch: LLaVA-OneVision stacks a video's
    frames (``[1, frames, C, H, W]``), so its videos batch only with equal frame counts and sizes.
    Qwen's flat patches stack whatever their count (key ``()``)."""
    videos = inputs.get("pixel_values_videos")
    return tuple(videos.shape[1:]) if videos is not None and videos.ndim == 5 else ()


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
                tensor = torch.from_numpy(_stack_images(parts) if key == "pixel_values" else np.concatenate(parts))
                batch[key] = tensor.to(device, dtype if tensor.is_floating_point() and key.startswith("pixel") else None)
    return batch
