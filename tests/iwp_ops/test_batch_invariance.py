"""Every method keeps the same tokens for an item alone and inside a left-padded mixed batch.

A batch pads its shorter items on the left with tokens that are neither candidates nor real
(`attention_mask` False), and puts other items beside them; none of that may change what an
item keeps. The padding rows hold large random vectors, so a method that let them into a
softmax, a mean or a pivot pool would change its choice.
"""

from __future__ import annotations

import pytest
import torch

import iwp_ops

H, D, E = 2, 8, 6


def item(seed: int, prefix: int, visual: int, suffix: int, frames: int = 1) -> dict:
    """One item's tensors: a text prefix, `visual` candidates (frame after frame), a text suffix."""
    g = torch.Generator().manual_seed(seed)
    n = prefix + visual + suffix
    mask = torch.zeros(n, dtype=torch.bool)
    mask[prefix:prefix + visual] = True
    frame = torch.zeros(n, dtype=torch.long)
    frame[prefix:prefix + visual] = torch.arange(visual) // (visual // frames)
    return {"keys": torch.randn(H, n, D, generator=g), "values": torch.randn(H, n, D, generator=g),
            "prior_keys": torch.randn(H, n, D, generator=g), "queries": torch.randn(2 * H, n, D, generator=g),
            "features": torch.randn(n, E, generator=g), "mask": mask, "frame_ids": frame}


def batch(items: list[dict]) -> dict:
    """Left-pad to the longest item with large random vectors; attention_mask marks the real tokens."""
    g = torch.Generator().manual_seed(99)
    length = max(it["mask"].shape[0] for it in items)
    out: dict[str, list] = {}
    for it in items:
        pad = length - it["mask"].shape[0]
        for name, x in it.items():
            token_dim = 0 if x.dim() < 3 else 1
            if x.dtype == torch.bool or x.dtype == torch.long:
                filler = torch.zeros((pad, *x.shape[1:]) if token_dim == 0 else (x.shape[0], pad, x.shape[2]),
                                     dtype=x.dtype)
            else:
                shape = (pad, *x.shape[1:]) if token_dim == 0 else (x.shape[0], pad, x.shape[2])
                filler = 50 * torch.randn(shape, generator=g)
            out.setdefault(name, []).append(torch.cat([filler, x], dim=token_dim))
        real = torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(it["mask"].shape[0], dtype=torch.bool)])
        out.setdefault("attention_mask", []).append(real)
    return {name: torch.stack(xs) for name, xs in out.items()}


def options(method: str, b: dict, video: bool) -> dict:
    extra = {
        "fastv": {"queries": b["queries"][:, :, -2:], "prior_keys": b["prior_keys"], "attention_mask": b["attention_mask"]},
        "visionzip": {"queries": b["queries"], "attention_mask": b["attention_mask"]},
        "dart": {"hidden": b["features"], "prior_keys": b["prior_keys"]},
        "divprune": {"embeddings": b["features"]},
        "evs": {"embeddings": b["features"]},
        "cdpruner": {"embeddings": b["features"]},
        "random": {"seed": 5},
    }.get(method, {})
    if video and method in ("iwp", "uniform", "evs", "cdpruner"):
        extra["frame_ids"] = b["frame_ids"]
    if video and method == "iwp":
        extra["queries"] = b["queries"][:, :, -1:]
    return extra


def kept(method: str, items: list[dict], budget: int, video: bool) -> list[list[int]]:
    """Each item's kept tokens, as positions within the item (its left padding removed)."""
    b = batch(items)
    got = iwp_ops.select_tokens(b["keys"], b["values"], budget, method=method, mask=b["mask"],
                                **options(method, b, video))
    pads = (~b["attention_mask"]).sum(-1)
    return [[i - int(pad) for i in row if i >= 0] for row, pad in zip(got.tolist(), pads)]


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
@pytest.mark.parametrize("method", iwp_ops.METHODS)
def test_an_item_keeps_the_same_tokens_alone_and_in_a_left_padded_mixed_batch(method, video):
    frames = 4 if video else 1
    a = item(1, prefix=3, visual=48, suffix=5, frames=frames)
    b = item(2, prefix=6, visual=80 if video else 64, suffix=9, frames=frames)
    c = item(3, prefix=2, visual=32, suffix=2, frames=frames)
    budget = 8
    alone = [kept(method, [x], budget, video)[0] for x in (a, b, c)]
    assert all(len(k) == budget for k in alone)
    assert kept(method, [a, b, c], budget, video) == alone
    assert kept(method, [c, a], budget, video) == [alone[2], alone[0]]


def test_tokens_per_frame_counts_each_items_own_candidates():
    """A text prefix or padding before the first candidate does not shift the frames."""
    keys = torch.randn(2, 1, 12, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 0:8] = True
    mask[1, 3:11] = True  # same 8 candidates, 3 tokens later
    got = iwp_ops.select_tokens(keys, keys, 4, method="uniform", mask=mask, tokens_per_frame=2)
    assert got[0].tolist() == [1, 3, 5, 7] and got[1].tolist() == [4, 6, 8, 10]  # the middle (rank 1) of each pair


def test_in_chunk_rescore_keeps_a_negative_similarity_while_nothing_is_selected():
    """One head, equal keys (kernel 1), so S is the value cosine. m̂ = 1, 0, 0.2 for A, B, C;
    S(A,B) = −0.5, S(A,C) = 0, S(B,C) = −0.3. Greedy MMR (λ = 0.5) takes A, then B (0 + 0.25)
    over C (0.1 − 0). A first chunk of 2 pools A, C, B and re-scores B by its max similarity to
    the members above it, −0.3: 0.15, ahead of C. A re-score that lifted that to 0 (nothing is
    selected yet) would take C."""
    keys = torch.zeros(1, 1, 3, 3)
    y = -0.3 / 0.75 ** 0.5
    direction = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.75 ** 0.5, 0.0], [0.0, y, (1 - y * y) ** 0.5]])
    values = (direction * torch.tensor([2.0, 1.0, 1.2]).exp()[:, None])[None, None]
    greedy = iwp_ops.select_tokens(keys, values, 2, chunk=1, dup_threshold=2.0)
    chunked = iwp_ops.select_tokens(keys, values, 2, chunk=2, dup_threshold=2.0)
    assert greedy.tolist() == [[0, 1]]
    assert chunked.tolist() == greedy.tolist()
