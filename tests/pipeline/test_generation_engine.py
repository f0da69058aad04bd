"""The generation engine against transformers' `generate()`, item by item.

Greedy tokens must equal each item generated alone (fp32 CPU: identical) while rows finish at
different steps, rows join mid-decode (a cap of two rows per forward forces it), images and
videos mix, and every pruning method prunes; memory limits fail only the row that cannot fit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iwp_ops import METHODS, enable_pruning
from pipeline.collate import collate
from pipeline.generation import GenerationEngine, GenerationRequest, OutOfMemory
from pipeline.generation.sampling import uniform_noise
from pipeline.preprocess import build_inputs, load_processor
from tests.support.tiny_models import build_tiny_model

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision")
LIMITS = (9, 2, 6, 1, 12, 4)  # rows finish at different steps; one after its first token


def media(seed: int, kind: str, frames: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "image":
        return rng.integers(0, 255, (1, 112, 168, 3), dtype=np.uint8)
    return rng.integers(0, 255, (frames, 112, 112, 3), dtype=np.uint8)


def items(processor, equal_frames: bool = False) -> list[dict[str, np.ndarray]]:
    specs = [("image", 1, "describe this image ."), ("video", 2, "what is in this clip ?"),
             ("image", 3, "list the objects in the picture please ."), ("video", 4, "caption"),
             ("image", 5, "what colour ?"), ("video", 6, "describe the motion in this video .")]
    out = []
    for kind, seed, text in specs:
        frames = 4 if equal_frames or seed % 4 == 2 else 2
        out.append(build_inputs(processor, media(seed, kind, frames), kind, text, 2.0 if kind == "video" else 0.0))
    return out


def alone(model, tokenizer, inputs, limit: int) -> list[int]:
    """`generate()` on this item by itself, as the model stage called it before the engine."""
    eos = model.generation_config.eos_token_id
    suppress = sorted(set(tokenizer.all_special_ids) - {eos})
    batch = collate([inputs], tokenizer.pad_token_id, model.device, model.dtype)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=limit, min_new_tokens=1, do_sample=False,
                             suppress_tokens=suppress, pad_token_id=tokenizer.pad_token_id)
    return [t for t in out[0, batch["input_ids"].shape[1]:].tolist() if t != eos]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    processor = load_processor(str(path))
    return request.param, model, processor, items(processor, equal_frames=request.param == "llava_onevision")


@pytest.mark.parametrize("method", ["none", "iwp", "fastv", "visionzip"])
def test_greedy_tokens_equal_each_item_alone_while_rows_leave_and_join(family, method):
    name, model, processor, inputs = family
    tok = processor.tokenizer
    handle = None if method == "none" else enable_pruning(model, method=method, keep_ratio=0.3, layer=1)
    try:
        expected = [alone(model, tok, x, n) for x, n in zip(inputs, LIMITS)]
        engine = GenerationEngine(model, tok, handle, max_batch_size=2)
        results = engine.generate([GenerationRequest(x, max_new_tokens=n) for x, n in zip(inputs, LIMITS)])
    finally:
        if handle is not None:
            handle.remove()
    assert [r.error for r in results] == [None] * len(inputs)
    assert [r.tokens for r in results] == expected
    run = engine.last_run
    assert run.micro_batches >= 3 and run.max_decode_batch == 2  # rows joined while others decoded
    if handle is not None:
        assert all(r.stats.visual_after < r.stats.visual_before for r in results)


@pytest.fixture(scope="module")
def shipped():
    from jobs.eval import load
    from scenes.inputs import model_inputs
    from scenes.scene import scenes

    model, processor = load("reference/model")
    data = [model_inputs(processor, s, task) for media_type, n in (("image", 2), ("video", 1))
            for s in scenes("test", media_type, n) for task in ("caption", "tag")]
    return model, processor, data


@pytest.mark.parametrize("method", [*METHODS, "adaptive", "iwp@0"])
def test_the_shipped_model_answers_as_alone_under_every_method(shipped, method):
    """Every method at layer 2; IWP also at layer 0, where every layer holds the kept cache only."""
    model, processor, data = shipped
    tok = processor.tokenizer
    options = {"fidelity_target": 0.9} if method == "adaptive" else {"keep_ratio": 0.111}
    name, _, layer = method.partition("@")
    handle = enable_pruning(model, method="iwp" if name == "adaptive" else name, layer=int(layer or 2), **options)
    limits = [40, 3, 40, 7, 12, 40]
    try:
        expected = [alone(model, tok, x, n) for x, n in zip(data, limits)]
        results = GenerationEngine(model, tok, handle, max_batch_size=3).generate(
            [GenerationRequest(x, max_new_tokens=n) for x, n in zip(data, limits)])
    finally:
        handle.remove()
    assert [r.tokens for r in results] == expected
    assert all(r.text for r in results)


def test_answers_do_not_depend_on_the_memory_budget_or_the_caps(shipped):
    model, processor, data = shipped
    tok = processor.tokenizer
    requests = [GenerationRequest(x, max_new_tokens=40) for x in data]
    roomy = GenerationEngine(model, tok)
    tight = int(1.05 * max(roomy.need_alone(r) for r in requests))  # the largest row, alone, just fits
    roomy = roomy.generate(requests)
    for engine in (GenerationEngine(model, tok, max_batch_size=1), GenerationEngine(model, tok, max_batch_tokens=300),
                   GenerationEngine(model, tok, memory_limit_bytes=tight)):
        assert [r.tokens for r in engine.generate(requests)] == [r.tokens for r in roomy]


def test_a_row_that_cannot_fit_the_budget_fails_alone_with_its_size(shipped):
    model, processor, data = shipped
    tok = processor.tokenizer
    image, video = GenerationRequest(data[0], 40), GenerationRequest(data[-1], 40)
    sizer = GenerationEngine(model, tok)
    assert sizer.need_alone(image) < sizer.need_alone(video)
    limit = (sizer.need_alone(image) + sizer.need_alone(video)) // 2
    engine = GenerationEngine(model, tok, memory_limit_bytes=limit)
    results = engine.generate([image, video, image])
    assert results[0].error is None and results[2].error is None and results[0].tokens == results[2].tokens
    assert isinstance(results[1].error, OutOfMemory)
    assert f"{len(data[-1]['input_ids'])} prompt tokens" in str(results[1].error)
    assert f"memory budget of {limit / 2**20:.1f} MiB" in str(results[1].error)


def test_out_of_memory_in_prefill_or_decode_retries_with_fewer_rows_and_loses_nothing(shipped):
    """The CUDA error is injected on CPU: once in a prefill of several rows, once in a decode step.
    Rows go back to the queue, the estimate grows, and every answer is still the one alone."""
    model, processor, data = shipped
    tok = processor.tokenizer
    requests = [GenerationRequest(x, max_new_tokens=20) for x in data]
    expected = [r.tokens for r in GenerationEngine(model, tok).generate(requests)]
    engine = GenerationEngine(model, tok)
    failures = {"prefill": 1, "decode": 1}

    def inject(module, args, kwargs):
        rows, cached = kwargs["inputs_embeds"].shape[0], kwargs["cache"].get_seq_length()
        if failures["prefill"] and cached == 0 and rows > 1:
            failures["prefill"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if failures["decode"] and cached > 0 and rows > 2:
            failures["decode"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    hook = model.model.language_model.register_forward_pre_hook(inject, with_kwargs=True)
    try:
        results = engine.generate(requests)
    finally:
        hook.remove()
    assert failures == {"prefill": 0, "decode": 0} and engine.last_run.oom_retries == 2
    assert [r.error for r in results] == [None] * len(requests)
    assert [r.tokens for r in results] == expected


def test_forced_lengths_and_reproducible_sampling(shipped):
    model, processor, data = shipped
    tok = processor.tokenizer
    forced = GenerationEngine(model, tok).generate([GenerationRequest(x, max_new_tokens=30, eos_at=n)
                                                    for x, n in zip(data, [3, 17, 1, 30, 8, 5])])
    assert [len(r.tokens) for r in forced] == [3, 17, 1, 30, 8, 5]

    def sample(rows, seeds, cap=None):
        engine = GenerationEngine(model, tok, max_batch_size=cap)
        return [r.tokens for r in engine.generate([GenerationRequest(data[i], 25, temperature=1.5, top_p=0.95, seed=s)
                                                   for i, s in zip(rows, seeds)])]

    drawn = sample(range(6), range(6))
    assert drawn == sample(range(6), range(6), cap=2)  # the batch does not change a row's draws
    assert sample([1, 4], [1, 4]) == [drawn[1], drawn[4]]
    assert sample([1, 4], [100, 101]) != [drawn[1], drawn[4]]
    greedy = [r.tokens for r in GenerationEngine(model, tok).generate([GenerationRequest(x, 25) for x in data])]
    assert drawn != greedy
    nucleus = GenerationEngine(model, tok).generate([GenerationRequest(x, 25, temperature=1.0, top_p=1e-6, seed=1)
                                                     for x in data])
    assert [r.tokens for r in nucleus] == greedy  # a nucleus of one token is the greedy choice


def test_the_noise_is_uniform_and_a_function_of_seed_and_step():
    seeds, steps = torch.arange(64), torch.zeros(64, dtype=torch.long)
    u = uniform_noise(seeds, steps, 4096)
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    assert torch.equal(u[5], uniform_noise(torch.tensor([5]), torch.tensor([0]), 4096)[0])
    assert not torch.equal(u[5], uniform_noise(torch.tensor([5]), torch.tensor([1]), 4096)[0])
