"""Pruning inside real transformers models (tiny configs, random weights, built offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from iwp_ops import METHODS, enable_pruning
from tests.support.tiny_models import build_tiny_model

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    items = MIXED_EQUAL_FRAMES if request.param == "llava_onevision" else MIXED
    return request.param, model, AutoProcessor.from_pretrained(path, local_files_only=True), items


def prompt(processor, kind: str, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def media(seed: int, kind: str, frames: int = 4):
    rng = np.random.default_rng(seed)
    if kind == "image":
        return rng.integers(0, 255, (112, 168, 3), dtype=np.uint8)
    return rng.integers(0, 255, (frames, 112, 112, 3), dtype=np.uint8)


def encode(processor, items):
    """items: (kind, seed, text[, frames]); one batch, left padded."""
    texts = [prompt(processor, kind, text) for kind, _, text, *_ in items]
    images = [media(seed, "image") for kind, seed, *_ in items if kind == "image"]
    videos = [media(seed, "video", *rest[1:]) for kind, seed, *rest in items if kind == "video"]
    extra = {"do_sample_frames": False} if videos else {}
    return processor(text=texts, images=images or None, videos=videos or None, return_tensors="pt", padding=True, **extra)


MIXED = [("image", 1, "describe this image ."), ("video", 2, "what is in this clip ?", 4),
         ("video", 3, "caption", 2), ("image", 4, "list the objects in the picture please .")]
# LLaVA-OneVision's processor stacks videos, so they must share a frame count within a batch.
MIXED_EQUAL_FRAMES = [MIXED[0], MIXED[1], ("video", 3, "caption", 4), MIXED[3]]


def generate(model, batch, n=5):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_keep_all_is_exactly_unpruned(family):
    name, model, processor, items = family
    batch = encode(processor, items)
    with torch.no_grad():
        ref_logits = model(**batch).logits
    ref_tokens = generate(model, batch)
    handle = enable_pruning(model, keep_ratio=1.0, layer=2)
    try:
        with torch.no_grad():
            logits = model(**batch).logits
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(generate(model, batch), ref_tokens)
        stats = handle.last_stats
        assert len(stats) == len(items)
        assert all(s.visual_before == s.visual_after > 0 and s.fidelity == pytest.approx(1.0, abs=1e-5) for s in stats)
    finally:
        handle.remove()
    assert torch.equal(generate(model, batch), ref_tokens)


class Capture:
    """Records the inputs of one decoder layer per call."""

    def __init__(self, layer):
        self.calls = []
        self.hook = layer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, _ = kwargs["position_embeddings"]
        self.calls.append((hidden.shape[1], cos.expand(hidden.shape[0], -1, -1).clone()))


def test_pruned_sequence_length_and_original_positions(family):
    name, model, processor, items = family
    layer = 2
    batch = encode(processor, items)
    lm = model.model.language_model
    before, after = Capture(lm.layers[layer - 1]), Capture(lm.layers[layer + 1])
    handle = enable_pruning(model, keep_ratio=0.25, layer=layer)
    try:
        generate(model, batch, n=3)
    finally:
        handle.remove()
        before.hook.remove()
        after.hook.remove()
    visual = torch.isin(batch["input_ids"], torch.tensor([model.config.image_token_id, model.config.video_token_id]))
    text = (batch["attention_mask"].bool() & ~visual).sum(-1)
    kept = torch.tensor([s.visual_after for s in handle.last_stats])
    expected = torch.round(0.25 * visual.sum(-1).double()).long()
    assert torch.equal(kept, expected)
    full_len, full_cos = before.calls[0]
    pruned_len, pruned_cos = after.calls[0]
    assert full_len == batch["input_ids"].shape[1]
    assert pruned_len == int((text + kept).max())
    for b in range(len(items)):
        rows = {tuple(r.tolist()) for r in full_cos[b].round(decimals=5)}
        n_real = int(text[b] + kept[b])
        assert all(tuple(r.tolist()) in rows for r in pruned_cos[b, -n_real:].round(decimals=5))
        torch.testing.assert_close(pruned_cos[b, -1], full_cos[b, -1])
    # Decoding continues after the last original position: the first decode step's rotary
    # rows are the ones the unpruned model uses at that step.
    unpruned = Capture(lm.layers[layer + 1])
    try:
        generate(model, batch, n=3)
    finally:
        unpruned.hook.remove()
    torch.testing.assert_close(after.calls[1][1], unpruned.calls[1][1])


def test_batch_equals_each_item_alone(family):
    name, model, processor, items = family
    handle = enable_pruning(model, keep_ratio=0.3, layer=1)
    try:
        together = generate(model, encode(processor, items), n=4)[:, -4:]
        stats = handle.last_stats
        for i, item in enumerate(items):
            alone = generate(model, encode(processor, [item]), n=4)[:, -4:]
            assert torch.equal(alone[0], together[i]), (name, i)
            assert handle.last_stats[0].visual_after == stats[i].visual_after
    finally:
        handle.remove()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_through_the_model(family, method):
    name, model, processor, items = family
    handle = enable_pruning(model, method=method, keep_ratio=0.2, layer=1)
    try:
        out = generate(model, encode(processor, items[:2]), n=2)
    finally:
        handle.remove()
    assert out.shape[0] == 2
    for s in handle.last_stats:
        assert s.visual_after == max(1, round(0.2 * s.visual_before))
        assert 0.0 < s.fidelity <= 1.0 + 1e-5


def test_layer_zero_per_item_budgets_and_settings(family):
    name, model, processor, items = family
    batch = encode(processor, items[:2])
    handle = enable_pruning(model, layer=0, keep_tokens=[3, 5])
    try:
        generate(model, batch, n=2)
        assert [s.visual_after for s in handle.last_stats] == [3, 5]
        handle.configure(keep_ratio=[0.5, 0.1], layer=3)
        generate(model, batch, n=2)
        assert [s.visual_after for s in handle.last_stats] == [
            round(0.5 * handle.last_stats[0].visual_before), round(0.1 * handle.last_stats[1].visual_before)]
        handle.disable()
        generate(model, batch, n=2)
        assert handle.last_stats == []
        with pytest.raises(ValueError, match="layer must be in"):
            handle.configure(layer=99)
        with pytest.raises(ValueError, match="does not take option"):
            handle.configure(method="random", lam=0.3)
        with pytest.raises(RuntimeError, match="already enabled"):
            enable_pruning(model)
    finally:
        handle.remove()


def test_stats_stay_on_the_device_until_read(family):
    """The forward leaves the stats as one device tensor (no read-back mid-forward); the first
    read of `last_stats` turns them into `ItemStats`, and a new call replaces them."""
    name, model, processor, items = family
    handle = enable_pruning(model, keep_tokens=[3, 5], layer=1)
    try:
        generate(model, encode(processor, items[:2]), n=2)
        assert isinstance(handle._pending, torch.Tensor) and handle._pending.shape == (3, 2)
        first = handle.last_stats
        assert handle._pending is None and handle.last_stats is first
        assert [s.visual_after for s in first] == [3, 5] and all(0.0 < s.fidelity <= 1.0 + 1e-5 for s in first)
        handle.configure(keep_tokens=[4, 2])
        generate(model, encode(processor, items[:2]), n=2)
        assert [s.visual_after for s in handle.last_stats] == [4, 2]
    finally:
        handle.remove()


def test_fixed_budgets_round_half_to_even_and_refuse_a_wrong_count(family):
    """Budgets are worked out on the host from the call's token counts: round(ratio x count), as
    torch.round did on the device, then at least `min_tokens` and at most the count; one value
    serves every item, and a list of the wrong length is refused by name."""
    name, model, processor, items = family
    handle = enable_pruning(model, keep_ratio=0.5, min_tokens=1, layer=1)
    try:
        assert handle.settings.fixed_budgets([25, 27, 1, 0]) == [12, 14, 1, 0]
        handle.configure(keep_ratio=[0.5])
        assert handle.settings.fixed_budgets([25, 27]) == [12, 14]
        handle.configure(keep_tokens=[3, 40])
        assert handle.settings.fixed_budgets([10, 30]) == [3, 30]
        handle.configure(keep_tokens=None, keep_ratio=[0.5, 0.1, 0.2])
        with pytest.raises(ValueError, match="keep_ratio has 3 values for a batch of 2 items"):
            generate(model, encode(processor, items[:2]), n=1)
        handle.configure(fidelity_target=0.9)
        assert handle.settings.fixed_budgets([25, 27]) is None
        for bad in (dict(keep_tokens=2.9), dict(keep_tokens=[3, -1]), dict(min_tokens=1.5), dict(max_tokens=True)):
            with pytest.raises(ValueError, match="must be a non-negative int"):
                handle.configure(**bad)
    finally:
        handle.remove()


def test_adaptive_budget_reaches_target(family):
    name, model, processor, items = family
    handle = enable_pruning(model, fidelity_target=0.95, layer=1)
    try:
        generate(model, encode(processor, items), n=2)
    finally:
        handle.remove()
    stats = handle.last_stats
    assert len(stats) == len(items)
    for s in stats:
        assert 1 <= s.visual_after <= s.visual_before
        assert s.fidelity >= 0.95 - 1e-4, stats


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="pruning does not support Linear"):
        enable_pruning(torch.nn.Linear(2, 2))


def test_rotary_keys_off_scores_with_the_same_keys_before_rotation(family, monkeypatch):
    """The RoPE ablation: with `rotary_keys=False` the method gets the layer's keys before the
    rotary embedding, which differ from the rotated ones by a rotation (same norms, other
    directions); the default hands over the rotated keys."""
    import iwp_ops.models.layer_k as base

    name, model, processor, items = family
    seen = []

    def spy(keys, *args, **kwargs):
        seen.append(keys)
        return base_select(keys, *args, **kwargs)

    base_select = base.select_trusted
    monkeypatch.setattr(base, "select_trusted", spy)
    batch = encode(processor, items[:2])
    handle = enable_pruning(model, layer=1, keep_ratio=0.3)
    try:
        generate(model, batch, n=1)
        handle.configure(rotary_keys=False)
        generate(model, batch, n=1)
        with pytest.raises(ValueError, match="rotary_keys=True"):
            handle.configure(fidelity_target=0.9)
    finally:
        handle.remove()
    rotated, raw = seen
    assert torch.allclose(rotated.norm(dim=-1), raw.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(rotated, raw, atol=1e-3)


@pytest.mark.parametrize("layer", [0, 1])
def test_qwen3_vl_deepstack_features_follow_the_kept_tokens(tmp_path, monkeypatch, layer):
    """Qwen3-VL adds DeepStack features at the visual positions after decoder layers 0-2. Pruned at
    K, those after layers >= K must add to each kept token its own feature row, at its place in the
    kept (left-padded) sequence; those after layers < K still see the full sequence."""
    import iwp_ops.models.layer_k as base

    path = build_tiny_model(tmp_path, arch="qwen3_vl")
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    batch = encode(processor, MIXED)
    text_model = type(model.model.language_model)
    calls, selections = [], []
    deepstack, select = text_model._deepstack_process, base.select_trusted

    def deepstack_spy(self, hidden, mask, embeds):
        calls.append((hidden.shape[:2], mask.clone(), embeds.clone()))
        return deepstack(self, hidden, mask, embeds)

    def select_spy(*args, **kwargs):
        selections.append(select(*args, **kwargs))
        return selections[-1]

    monkeypatch.setattr(text_model, "_deepstack_process", deepstack_spy)
    monkeypatch.setattr(base, "select_trusted", select_spy)
    with torch.no_grad():
        model(**batch)
        full = [embeds for _, _, embeds in calls]
        visual = calls[0][1]
        calls.clear()
        handle = enable_pruning(model, layer=layer, keep_ratio=0.3)
        try:
            model(**batch)
        finally:
            handle.remove()
    assert "_deepstack_process" not in model.model.language_model.__dict__
    assert len(calls) == 3

    attention = batch["attention_mask"].bool()
    rows, flags = [], []
    for b in range(len(MIXED)):
        kept = sorted(p for p in selections[0][b].tolist() if p >= 0)
        before = int(visual[:b].sum())
        rows += [before + int(visual[b, :p].sum()) for p in kept]
        sequence = sorted(set(kept) | {p for p in range(visual.shape[1]) if attention[b, p] and not visual[b, p]})
        flags.append([p in kept for p in sequence])
    length = max(len(f) for f in flags)
    expected_mask = torch.tensor([[False] * (length - len(f)) + f for f in flags])
    for index, (shape, mask, embeds) in enumerate(calls):
        if index < layer:
            assert torch.equal(mask, visual) and torch.equal(embeds, full[index])
            continue
        assert tuple(shape) == (len(MIXED), length)
        assert torch.equal(mask, expected_mask)
        torch.testing.assert_close(embeds, full[index][rows], rtol=0, atol=0)
