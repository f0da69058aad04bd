"""Turn decoded frames into ready model inputs on CPU workers with the model's own processor.

The GPU stage then only pads, concatenates and runs the model. The processor is loaded
once per worker process (Ray reuses task workers), not once per row; with isolation on
(`FaultToleranceConfig.preprocess_isolation`) it runs in the worker's child process
(`pipeline.sandbox`), so an item that crashes or hangs the processor fails alone.

A manifest prompt is the user's plain text: strings that spell the tokenizer's own tokens
(`<|im_end|>`, `<|image_pad|>`, ...) are tokenized as ordinary text, never as control or
placeholder tokens, and a prompt that cannot fit the model's context fails its row.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from pipeline.config import FaultToleranceConfig, GenerationConfig
from pipeline.sandbox import PREPROCESS, run_isolated
from pipeline.schema import FAILED, is_present, mark_failed
from pipeline.tensors import pack, unpack

SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
# Stands in for a prompt holding reserved strings while the chat template is rendered; a
# private-use character, which no template or tokenizer gives a meaning.
_PROMPT_SLOT = "\ue000"


class PromptTooLong(ValueError):
    """The prompt and media need more tokens than the model's context leaves for them."""


class ReservedTokenError(ValueError):
    """The prompt spells a reserved token that this model's chat template cannot take as text."""


@functools.lru_cache(maxsize=4)
def load_processor(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)


@functools.lru_cache(maxsize=4)
def context_length(model_path: str, trust_remote_code: bool = False) -> int | None:
    """The language model's context (max_position_embeddings); None when the config does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def reserved_in(tokenizer, prompt: str) -> list[str]:
    """The tokenizer's added tokens (special and placeholder tokens) spelled out in `prompt`."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.content and t.content in prompt]


def plain_text_ids(tokenizer, text: str) -> list[int]:
    """`text` tokenized as text: reserved strings become ordinary tokens, never control tokens."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def build_inputs(processor, frames: np.ndarray, media_type: str, prompt: str, fps: float) -> dict[str, np.ndarray]:
    """Chat-template the prompt around one image or video and run the processor on it.

    A prompt with reserved strings is kept out of the processor (which would take them as
    tokens) and spliced in afterwards as plain-text ids; any other prompt goes through the
    processor as it is, so its ids are exactly the model's usual ones.
    """
    reserved = reserved_in(processor.tokenizer, prompt)
    content = [{"type": media_type}, {"type": "text", "text": _PROMPT_SLOT if reserved else prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    after = ""
    if reserved:
        text, _, after = text.partition(_PROMPT_SLOT)
        text += after
    if media_type == "video":
        media = {"videos": [frames], "do_sample_frames": False, "cap_pixels_per_frame": True}
        # The frames' own rate, as metadata: transformers 5.24 ignores an `fps` keyword for pre-sampled
        # frames. Qwen2.5-VL's seconds per temporal patch and Qwen3-VL's timestamps come from it.
        if fps > 0:
            media["video_metadata"] = [{"fps": fps, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}]
    else:
        media = {"images": [frames[0]]}
    encoded = processor(text=[text], return_tensors="np", **media)
    inputs = {k: (np.asarray(v)[0] if k in SEQUENCE_KEYS else np.asarray(v)) for k, v in encoded.items()}
    return _splice_prompt(processor.tokenizer, inputs, prompt, after, reserved) if reserved else inputs


def _splice_prompt(tokenizer, inputs: dict[str, np.ndarray], prompt: str, after: str,
                   reserved: list[str]) -> dict[str, np.ndarray]:
    """Insert the prompt's plain-text ids where the template put the prompt (before `after`)."""
    ids = inputs["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    at = len(ids) - len(tail)
    if at < 0 or ids[at:].tolist() != tail:
        raise ReservedTokenError(f"the prompt contains the reserved token {reserved[0]!r}, which this model's chat "
                                 "template cannot take as plain text; remove it from the prompt")
    words = np.asarray(plain_text_ids(tokenizer, prompt), dtype=ids.dtype)
    out = dict(inputs)
    for key, fill in (("input_ids", None), ("attention_mask", 1), ("mm_token_type_ids", 0)):
        if key in inputs:
            middle = words if fill is None else np.full(len(words), fill, inputs[key].dtype)
            out[key] = np.concatenate([inputs[key][:at], middle, inputs[key][at:]])
    return out


def visual_token_count(processor, input_ids: np.ndarray) -> int:
    ids = [processor.image_token_id, processor.video_token_id]
    return int(np.isin(input_ids, ids).sum())


def check_context(processor, input_ids: np.ndarray, prompt: str, visual: int, context: int | None,
                  max_new_tokens: int) -> None:
    """Refuse an input that, with the answer's tokens, would not fit the model's context."""
    if context is None or len(input_ids) + max_new_tokens <= context:
        return
    words = len(plain_text_ids(processor.tokenizer, prompt))
    fits = context - max_new_tokens - (len(input_ids) - words)
    raise PromptTooLong(
        f"the input is {len(input_ids)} tokens (prompt {words}, visual {visual}) and the answer up to {max_new_tokens}, "
        f"but the model's context is {context} tokens: at most {max(fits, 0)} prompt tokens fit with this media"
    )


def preprocess_media(uri: str, model_path: str, trust_remote_code: bool, frames: bytes, media_type: str, prompt: str,
                     fps: float, max_new_tokens: int) -> tuple[bytes, int]:
    """Packed model inputs and the visual token count of one item; what the isolated child runs.

    `uri` only names the item (the preprocess failpoint matches it).
    """
    processor = load_processor(model_path, trust_remote_code)
    inputs = build_inputs(processor, unpack(frames)["frames"], media_type, prompt, fps)
    visual = visual_token_count(processor, inputs["input_ids"])
    check_context(processor, inputs["input_ids"], prompt, visual, context_length(model_path, trust_remote_code),
                  max_new_tokens)
    return pack(inputs), visual


def preprocess_row(row: dict, model_path: str, gen: GenerationConfig, trust_remote_code: bool = False,
                   task_prompt: str | None = None, isolation: FaultToleranceConfig | None = None) -> dict:
    """`task_prompt`, when set (tagging), replaces the caption prompts as the default question."""
    row["inputs"] = b""
    if row["status"] == FAILED:
        row["frames"] = b""
        return row
    started = time.perf_counter()
    try:
        default = task_prompt or (gen.video_prompt if row["media_type"] == "video" else gen.prompt)
        prompt = row.get("prompt") if is_present(row.get("prompt")) else default
        args = (row["uri"], model_path, trust_remote_code, row["frames"], row["media_type"], prompt,
                row.get("fps") or 0.0, gen.max_new_tokens)
        if isolation is not None and isolation.preprocess_isolation:
            row["inputs"], row["num_visual_tokens"] = run_isolated(
                preprocess_media, args, isolation.preprocess_timeout_s, isolation.preprocess_attempts, PREPROCESS)
        else:
            row["inputs"], row["num_visual_tokens"] = preprocess_media(*args)
    except Exception as exc:  # one bad item must become a failed row, whatever it raised
        mark_failed(row, "preprocess", exc)
    row["frames"] = b""
    row["latency_s"] += time.perf_counter() - started
    return row
