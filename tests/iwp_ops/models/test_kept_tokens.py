"""`ItemStats.kept` names exactly the visual tokens that layers >= K ran on, in their order."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from iwp_ops import enable_pruning
from tests.iwp_ops.models.test_pruning import MIXED, MIXED_EQUAL_FRAMES, encode, generate
from tests.support.tiny_models import build_tiny_model


@pytest.fixture(scope="module", params=("qwen2_5_vl", "qwen3_vl", "llava_onevision"))
def family(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    items = MIXED_EQUAL_FRAMES if request.param == "llava_onevision" else MIXED
    return model, AutoProcessor.from_pretrained(path, local_files_only=True), items


@pytest.mark.parametrize("budget", [{"keep_ratio": 0.25}, {"fidelity_target": 0.9}], ids=["fixed", "adaptive"])
def test_kept_indices_are_the_tokens_layer_k_runs_on(family, budget):
    model, processor, items = family
    layer = 2
    batch = encode(processor, items)
    lm = model.model.language_model
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, kwargs) -> None:  # the prefill's (the first call)
            seen.setdefault(name, kwargs.get("hidden_states", args[0] if args else None))
        return hook

    # Hooks run before the layer's forward, so layer K's sees the full sequence and its attention the kept one.
    hooks = [lm.layers[layer].register_forward_pre_hook(keep("full"), with_kwargs=True),
             lm.layers[layer].self_attn.register_forward_pre_hook(keep("pruned"), with_kwargs=True)]
    handle = enable_pruning(model, layer=layer, **budget)
    handle.record_kept_tokens = True
    try:
        generate(model, batch, n=2)
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()
    stats = handle.last_stats
    visual = torch.isin(batch["input_ids"], torch.tensor([model.config.image_token_id, model.config.video_token_id]))
    with torch.no_grad():
        full = lm.layers[layer].input_layernorm(seen["full"])  # what layer K's attention sees, per token
    pruned = seen["pruned"]
    assert pruned.shape[1] < full.shape[1]
    for b, s in enumerate(stats):
        assert len(s.kept) == s.visual_after and list(s.kept) == sorted(set(s.kept))
        text = int((batch["attention_mask"][b].bool() & ~visual[b]).sum())
        real = pruned[b, -(text + s.visual_after):]  # the row's real tokens (the rest is left padding)
        tokens = full[b][visual[b]]
        distance = torch.cdist(real, tokens, compute_mode="donot_use_mm_for_euclid_dist")
        match = distance < 1e-4 * tokens.norm(dim=-1).min()
        assert match.sum(-1).max() <= 1
        assert match.nonzero()[:, 1].tolist() == list(s.kept)
    if "fidelity_target" in budget:
        assert len({s.visual_after / s.visual_before for s in stats}) > 1  # per-item budgets, so the test can tell


def test_off_by_default_and_nothing_recorded(family):
    model, processor, items = family
    handle = enable_pruning(model, keep_ratio=0.5)
    try:
        generate(model, encode(processor, items), n=1)
        assert all(s.kept is None for s in handle.last_stats)
    finally:
        handle.remove()
