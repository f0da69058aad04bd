"""Training targets line up with the tokens they supervise, and a short run saves a loadable model."""

import json

import numpy as np
import pytest
import torch

import iwp_ops
from scenes.scene import make_scene
from reference.token_labels import token_objects
from reference.train import (POINTER_HEADS, PRUNE_LAYER, TRAINED_METHODS, StepBatches, answer_ids, answer_loss, batch_of,
                             build_model_and_processor, pointer_loss, pruned_steps, train, training_example)
from scenes.inputs import TASKS, target_for


@pytest.fixture(scope="module")
def processor():
    return build_model_and_processor(0)[1]


@pytest.mark.parametrize("media", ["image", "video"])
def test_answer_ids_are_the_tokenized_target_with_each_phrase_owned_by_its_object(processor, media):
    tok = processor.tokenizer
    for i in range(20):
        scene = make_scene("val", media, i)
        for task in TASKS:
            ids, owner = answer_ids(tok, scene, task)
            assert ids == tok(target_for(scene, task), add_special_tokens=False)["input_ids"]
            if task == "tag":
                assert set(owner) == {-1}
                continue
            words = tok.convert_ids_to_tokens(ids)
            for j, o in enumerate(scene.objects):
                assert [w for w, k in zip(words, owner) if k == j and w != ","] == o.phrase(media == "video").split()
            assert words[-1] == "." and owner[-1] == -1


@pytest.mark.parametrize("media", ["image", "video"])
def test_pointer_names_the_object_of_the_next_token_and_key_object_its_visual_tokens(processor, media):
    scene = next(s for s in (make_scene("val", media, i) for i in range(20)) if len(s.objects) == 2)
    item = training_example(processor, scene, "caption")
    ids, owner = answer_ids(processor.tokenizer, scene, "caption")
    start = len(item["input_ids"]) - len(ids) - 1
    assert len(item["pointer"]) == len(item["key_object"]) == len(item["input_ids"])
    assert list(item["pointer"][start - 1:start - 1 + len(ids)]) == owner
    assert set(item["pointer"][:start - 1]) == set(item["pointer"][start - 1 + len(ids):]) == {-1}
    visual = np.isin(item["input_ids"], [processor.image_token_id, processor.video_token_id])
    assert list(item["key_object"][visual]) == list(token_objects(scene) - 1)
    assert set(item["key_object"][~visual]) == {-1}
    assert {0, 1} <= set(item["key_object"])


def test_pointer_loss_is_low_when_attention_is_on_the_object_and_high_when_spread():
    pointer = torch.tensor([[-1, 0, 1, -1]])
    key_object = torch.tensor([[0, 1, -1, -1]])
    focused = torch.zeros(1, 1, 4, 4)
    focused[0, 0, 1, 0] = focused[0, 0, 2, 1] = 1.0
    spread = torch.full((1, 1, 4, 4), 0.25)
    layers = max(layer for layer, _ in POINTER_HEADS) + 1
    assert pointer_loss((focused,) * layers, pointer, key_object).item() < 1e-4
    assert pointer_loss((spread,) * layers, pointer, key_object).item() == pytest.approx(np.log(4), rel=1e-4)
    assert pointer_loss((spread,) * layers, torch.full((1, 4), -1), key_object).item() == 0.0


def test_batch_pads_targets_on_the_left_like_the_inputs(processor):
    items = [training_example(processor, make_scene("val", "image", i), t) for i, t in ((0, "caption"), (1, "tag"))]
    batch = batch_of(items, processor.tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    for row, item in enumerate(items):
        pad = width - len(item["input_ids"])
        assert (batch["labels"][row, :pad] == -100).all() and (batch["pointer"][row, :pad] == -1).all()
        assert torch.equal(batch["pointer"][row, pad:], torch.from_numpy(item["pointer"]))


@pytest.fixture(scope="module")
def small_batch(processor):
    items = [training_example(processor, make_scene("val", m, i), t)
             for m, i, t in (("image", 0, "caption"), ("image", 1, "tag"), ("video", 0, "caption"))]
    batch = batch_of(items, processor.tokenizer.pad_token_id)
    return {k: v for k, v in batch.items() if k not in ("pointer", "key_object")}


def test_answer_loss_is_the_model_loss_unpruned_and_sees_the_same_answer_tokens_pruned(small_batch):
    torch.manual_seed(0)
    model = build_model_and_processor(0)[0].eval()
    with torch.no_grad():
        full = model(**small_batch)
        assert answer_loss(full.logits, small_batch["labels"]).item() == pytest.approx(full.loss.item(), rel=1e-5)
        inputs = {k: v for k, v in small_batch.items() if k != "labels"}
        handle = iwp_ops.enable_pruning(model, method="uniform", keep_ratio=0.1, layer=PRUNE_LAYER)
        pruned = model(**inputs).logits
        handle.configure(keep_ratio=1.0)
        kept_all = model(**inputs).logits
    answer = (small_batch["labels"] != -100).sum().item()
    assert pruned.shape[1] < full.logits.shape[1] and answer < pruned.shape[1]
    assert torch.allclose(kept_all, full.logits, atol=1e-4)
    # the answer's logits are the last ones in both; pruning changed them (it dropped what they read)
    assert not torch.allclose(pruned[:, -answer:], full.logits[:, -answer:], atol=1e-3)
    assert answer_loss(pruned, small_batch["labels"]).item() > 0


def test_a_pruned_forward_still_trains_the_layers_below_the_pruning_layer_and_the_vision_tower(small_batch):
    torch.manual_seed(0)
    model = build_model_and_processor(0)[0]
    iwp_ops.enable_pruning(model, method="iwp", keep_ratio=0.2, layer=PRUNE_LAYER)
    inputs = {k: v for k, v in small_batch.items() if k != "labels"}
    answer_loss(model(**inputs).logits, small_batch["labels"]).backward()
    below = model.model.language_model.layers[PRUNE_LAYER - 1].mlp.down_proj.weight.grad
    vision = model.model.visual.merger.mlp[-1].weight.grad
    assert below is not None and below.abs().sum() > 0
    assert vision is not None and vision.abs().sum() > 0


def test_pruned_steps_start_late_and_give_every_method_the_same_share():
    """The shipped model's eight methods, not every method iwp_ops has now (the recipe stays as trained)."""
    plan = pruned_steps(1000, prune_from=0.3, share=0.5, seed=0)
    assert min(plan) >= 300 and 300 < len(plan) < 400
    assert set(plan.values()) == set(TRAINED_METHODS) < set(iwp_ops.METHODS)
    counts = [list(plan.values()).count(m) for m in TRAINED_METHODS]
    assert max(counts) - min(counts) <= 1
    assert pruned_steps(1000, prune_from=0.3, share=0.0, seed=0) == {}


def test_a_short_run_trains_with_and_without_pruning_and_saves_a_model_that_loads(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(min(2, torch.get_num_threads()))
    summary = train(tmp_path, steps=3, seed=0, lr=1e-3, image_batch=2, video_batch=1, video_every=2, prune_from=0.5,
                    prune_share=1.0)
    assert [(r["media"], r["pruned"]) for r in summary["log"]] == [("image", None), ("video", None), ("image", "iwp")]
    assert [r["pointer_loss"] > 0 for r in summary["log"]] == [True, True, False]
    assert all(np.isfinite(r["loss"]) and r["probe_loss"] > 0 for r in summary["log"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True)
    assert model.config.text_config.num_hidden_layers == 4
    assert json.loads((tmp_path / "train_log.json").read_text())["steps_done"] == 3


def test_step_batches_draw_each_media_s_scenes_in_order_whatever_step_asks(processor):
    batches = StepBatches(processor, video_every=3, image_batch=2, video_batch=1, first_scene=5)
    assert [batches.media(s) for s in range(6)] == ["image", "image", "video", "image", "image", "video"]
    assert batches.scenes_seen(6) == {"image": 5 + 4 * 2, "video": 5 + 2}
    media, batch, labels, cells = batches[4]  # the fourth image step: scenes 11 and 12, tagged then captioned
    expected = batch_of([training_example(processor, make_scene("train", "image", i), TASKS[i % 2]) for i in (11, 12)],
                        processor.tokenizer.pad_token_id)
    assert media == "image" and set(batch) == set(expected)
    assert all(torch.equal(batch[k], expected[k]) for k in batch)
    assert labels.shape[0] == cells.shape[0] == int(torch.isin(batch["input_ids"], torch.tensor([5, 6])).sum())


def test_loader_workers_render_the_same_batches_as_the_main_process(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    runs = [train(tmp_path / str(w), steps=2, seed=0, lr=1e-3, image_batch=2, video_batch=1, video_every=2,
                  prune_share=0.0, workers=w)["log"] for w in (0, 1)]
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]
