"""Model batches from separately preprocessed items generate what each item generates alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from pipeline.collate import collate
from pipeline.preprocess import build_inputs, load_processor
from tests.support.tiny_models import build_tiny_model

RNG = np.random.default_rng(0)
# Different aspects: LLaVA-OneVision crops them into different numbers of patches.
ITEMS = [("image", RNG.integers(0, 255, (1, 64, 150, 3), dtype=np.uint8)),
         ("video", RNG.integers(0, 255, (4, 64, 96, 3), dtype=np.uint8)),
         ("image", RNG.integers(0, 255, (1, 60, 60, 3), dtype=np.uint8)),
         ("video", RNG.integers(0, 255, (4, 96, 64, 3), dtype=np.uint8))]


@pytest.mark.parametrize("arch", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_a_mixed_batch_generates_what_each_item_generates_alone(tmp_path, arch):
    path = str(build_tiny_model(tmp_path, arch=arch))
    processor = load_processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    inputs = [build_inputs(processor, frames, kind, "describe this", 4.0 if kind == "video" else 0.0)
              for kind, frames in ITEMS]
    if arch == "llava_onevision":
        patches = {x["pixel_values"].shape[1] for x in inputs if "pixel_values" in x}
        assert len(patches) == 2, "the two images should need different numbers of crops"

    def run(items):
        batch = collate(items, processor.tokenizer.pad_token_id, torch.device("cpu"), torch.float32)
        with torch.no_grad():
            last = model(**batch).logits[:, -1]  # left padded: every row's own last token
            out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        return last, out[:, -4:]

    logits, tokens = run(inputs)
    for i, x in enumerate(inputs):
        alone_logits, alone_tokens = run([x])
        torch.testing.assert_close(logits[i], alone_logits[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(alone_tokens[0], tokens[i]), (arch, i)


def test_stack_key_separates_only_stacked_videos_of_different_shapes():
    from pipeline.collate import stack_key

    llava = [{"pixel_values_videos": np.zeros((1, frames, 3, 56, 56), np.float32)} for frames in (4, 4, 2)]
    assert stack_key(llava[0]) == stack_key(llava[1]) != stack_key(llava[2])
    qwen = [{"pixel_values_videos": np.zeros((patches, 1176), np.float32)} for patches in (128, 64)]
    assert stack_key(qwen[0]) == stack_key(qwen[1]) == stack_key({"pixel_values": np.zeros((1, 5, 3, 56, 56))}) == ()
