"""The shipped reference model: loads with from_pretrained, fits the size budget, and has learned.

The captioning test fails for random weights: they cannot name the colour, shape, size and
grid cell of every object in held-out scenes.
"""

from pathlib import Path

import pytest
import torch

from jobs.default_model import default_model_path
from jobs.eval import Item, generate, load
from reference.grading import caption_scores, tag_f1
from reference.scenes import make_scene
from reference.train import model_inputs

MODEL = default_model_path()


def test_default_model_is_the_shipped_directory():
    assert MODEL == (Path(__file__).parents[2] / "reference" / "model").resolve()
    assert (MODEL / "model.safetensors").exists()


def test_shipped_files_fit_in_30_mb():
    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert total <= 30 * 1024 * 1024


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load(MODEL)


def test_loads_as_qwen2_5_vl_with_its_processor(loaded):
    model, processor = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.tokenizer.convert_ids_to_tokens(processor.image_token_id) == "<|image_pad|>"


@pytest.mark.parametrize("media,task", [("image", "caption"), ("video", "caption"), ("image", "tag")])
def test_answers_held_out_scenes(loaded, media, task):
    model, processor = loaded
    items = [Item(s, task, model_inputs(processor, s, task)) for s in (make_scene("test", media, i) for i in range(3))]
    texts, _, _ = generate(model, processor, items, batch_size=3)
    if task == "tag":
        assert min(tag_f1(it.scene, t) for it, t in zip(items, texts)) >= 0.75, texts
    else:
        scores = [caption_scores(it.scene, t)["attribute_accuracy"] for it, t in zip(items, texts)]
        assert sum(scores) / len(scores) >= 0.8, (texts, [it.scene.caption() for it in items])
