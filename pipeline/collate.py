"""Left-padded model batches from preprocessed items: what the model stage and training both feed the model.

Kept apart from the engine so that code without Ray (training, evaluation) can build the same batches.
"""

from __future__ import annotations

import numpy as np
import torch

MEDIA_KEYS = {
    "image": ("pixel_values", "image_grid_thw"),
    "video": ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
}


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
