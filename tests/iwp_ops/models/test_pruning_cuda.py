"""On CUDA, a pruned prefill reads nothing back from the GPU at layer K beyond PC-MMR's one check
that every item's budget is filled, so the host can queue the layers after K while the GPU
selects.

Runs only where a GPU is present (the device machine): `python -m pytest --noconftest
tests/iwp_ops/models/test_pruning_cuda.py`.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from iwp_ops import enable_pruning
from tests.support.tiny_models import build_tiny_model
from tests.iwp_ops.models.test_pruning import MIXED, encode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava_onevision"])
def test_layer_k_waits_on_the_gpu_at_most_once(tmp_path, arch):
    path = build_tiny_model(tmp_path, arch=arch)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True,
                                                        dtype=torch.bfloat16).cuda().eval()
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    items = MIXED if arch != "llava_onevision" else [MIXED[0], MIXED[3]]
    batch = encode(processor, items).to("cuda")
    handle = enable_pruning(model, keep_ratio=0.3, layer=1)
    layer = model.model.language_model.layers[1]
    hooks = [layer.register_forward_pre_hook(lambda *_: torch.cuda.set_sync_debug_mode("warn")),
             layer.register_forward_hook(lambda *_: torch.cuda.set_sync_debug_mode("default"))]
    try:
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            model(**batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        for hook in hooks:
            hook.remove()
        handle.remove()
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, syncs  # PC-MMR's check that every budget is filled, seen: the count is live
    assert all(s.visual_after == round(0.3 * s.visual_before) for s in handle.last_stats)
