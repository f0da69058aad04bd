"""Turn decoded frames into ready model inputs on CPU workers with the model's own processor.

The GPU stage then only pads, concatenates and runs the model. The processor is loaded
once per worker process (Ray reuses task workers), not once per row.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from pipeline.config import GenerationConfig
from pipeline.schema import FAILED, is_present, mark_failed
from pipeline.tensors import pack, unpack

SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


@functools.lru_cache(maxsize=4)
def load_processor(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)


def build_inputs(processor, frames: np.ndarray, media_type: str, prompt: str, fps: float) -> dict[str, np.ndarray]:
    """Chat-template the prompt around one image or video and run the processor on it."""
    messages = [{"role": "user", "content": [{"type": media_type}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if media_type == "video":
        media = {"videos": [frames], "do_sample_frames": False, "cap_pixels_per_frame": True}
        # The frames' own rate, as metadata: transformers 5.24 ignores an `fps` keyword for pre-sampled
        # frames. Qwen2.5-VL's seconds per temporal patch and Qwen3-VL's timestamps come from it.
        if fps > 0:
            media["video_metadata"] = [{"fps": fps, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}]
    else:
        media = {"images": [frames[0]]}
    encoded = processor(text=[text], return_tensors="np", **media)
    return {k: (np.asarray(v)[0] if k in SEQUENCE_KEYS else np.asarray(v)) for k, v in encoded.items()}


def visual_token_count(processor, input_ids: np.ndarray) -> int:
    ids = [processor.image_token_id, processor.video_token_id]
    return int(np.isin(input_ids, ids).sum())


def preprocess_row(row: dict, model_path: str, gen: GenerationConfig, trust_remote_code: bool = False,
                   task_prompt: str | None = None) -> dict:
    """`task_prompt`, when set (tagging), replaces the caption prompts as the default question."""
    row["inputs"] = b""
    if row["status"] == FAILED:
        row["frames"] = b""
        return row
    started = time.perf_counter()
    try:
        processor = load_processor(model_path, trust_remote_code)
        frames = unpack(row["frames"])["frames"]
        default = task_prompt or (gen.video_prompt if row["media_type"] == "video" else gen.prompt)
        prompt = row.get("prompt") if is_present(row.get("prompt")) else default
        inputs = build_inputs(processor, frames, row["media_type"], prompt, row.get("fps") or 0.0)
        row["num_visual_tokens"] = visual_token_count(processor, inputs["input_ids"])
        row["inputs"] = pack(inputs)
    except Exception as exc:  # one bad item must become a failed row, whatever it raised
        mark_failed(row, "preprocess", exc)
    row["frames"] = b""
    row["latency_s"] += time.perf_counter() - started
    return row
