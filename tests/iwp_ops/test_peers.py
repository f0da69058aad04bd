"""EVS and CDPruner against their official algorithms, written the plain way (one item, loops)."""

from __future__ import annotations

import pytest
import torch

import iwp_ops


def vllm_retention(embeds: torch.Tensor, t: int, tokens_per_frame: int, keep: int) -> list[int]:
    """vLLM's `compute_retention_mask` for one video already merged to (T, H'·W'), with `keep` given."""
    video = embeds.double().view(t, tokens_per_frame, -1)
    dissimilarity = 1 - torch.nn.functional.cosine_similarity(video[1:], video[:-1], dim=-1)
    dissimilarity = torch.cat([255 * torch.ones(1, tokens_per_frame, dtype=torch.float64), dissimilarity])
    order = torch.argsort(dissimilarity.view(-1), descending=True, stable=True)
    return sorted(order[:keep].tolist())


def cdpruner_official(features: torch.Tensor, text: torch.Tensor, keep: int, weight: float = 1.0) -> list[int]:
    """`encode_images`' relevance, kernel and DPP loop for one image (no CLIP negation, as for Qwen),
    with OpenVINO's relevance_weight mixing."""
    x = features.double() / features.double().norm(dim=-1, keepdim=True)
    similarity = x @ x.T
    t = text.double() / text.double().norm(dim=-1, keepdim=True)
    relevance = (x @ t.T).mean(-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = weight * relevance[:, None] * similarity * relevance[None, :] + (1 - weight) * similarity
    n = x.shape[0]
    cis = torch.zeros(keep, n, dtype=torch.float64)
    di2s = torch.diagonal(kernel).clone()
    chosen = []
    for i in range(keep):
        j = int(torch.argmax(di2s))
        chosen.append(j)
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(di2s[j])
        cis[i] = eis
        di2s -= eis.square()
        di2s[j] = -float("inf")
    return sorted(chosen)


@pytest.mark.parametrize("keep", [12, 17, 30])
def test_evs_is_vllms_retention_mask_when_the_budget_covers_the_first_frame(keep):
    g = torch.Generator().manual_seed(0)
    t, per = 4, 12
    base = torch.randn(per, 8, generator=g)
    drift = torch.rand(t, per, 1, generator=g) * torch.randn(t, per, 8, generator=g)
    embeds = (base[None] + drift).reshape(1, t * per, 8)
    keys = torch.randn(1, 2, t * per, 4, generator=g)
    got = iwp_ops.select_tokens(keys, keys, keep, method="evs", embeddings=embeds, tokens_per_frame=per)
    assert got[0].tolist() == vllm_retention(embeds[0], t, per, keep)


def test_evs_keeps_the_first_frame_then_the_changed_patches_and_ties_go_to_the_earlier_token():
    """Frame 1 repeats frame 0 except token 2 (flipped); frame 2 repeats frame 1 except token 0;
    the unchanged copies tie at exactly 0 and the stable sort keeps the earliest."""
    g = torch.Generator().manual_seed(1)
    frame = torch.eye(6)[:4] * torch.tensor([[1.0], [2.0], [4.0], [0.5]])  # cos exactly 1 with itself
    embeds = torch.cat([frame, frame, frame])[None].clone()
    embeds[0, 4 + 2] = embeds[0, 8 + 2] = -frame[2]
    embeds[0, 8 + 0] = frame[0] + torch.randn(6, generator=g)
    keys = torch.zeros(1, 1, 12, 2)
    kept = lambda b: iwp_ops.select_tokens(keys, keys, b, method="evs", embeddings=embeds, tokens_per_frame=4)[0].tolist()
    assert kept(5) == [0, 1, 2, 3, 6]  # the flipped token (1 − cos = 2) first
    assert kept(6) == [0, 1, 2, 3, 6, 8]
    assert kept(7) == [0, 1, 2, 3, 4, 6, 8]  # then an unchanged token: the earliest
    assert kept(2) == [1, 3]  # below one frame: the first frame thinned by an even stride


def test_evs_on_an_image_is_the_even_stride_and_frames_of_another_size_count_as_first():
    g = torch.Generator().manual_seed(2)
    keys, emb = torch.randn(1, 2, 16, 4, generator=g), torch.randn(1, 16, 5, generator=g)
    image = iwp_ops.select_tokens(keys, keys, 4, method="evs", embeddings=emb)
    assert image.tolist() == iwp_ops.select_tokens(keys, keys, 4, method="uniform").tolist()
    # An image (frame 0, 4 tokens) before a 2-frame video of 6 tokens a frame: only the
    # video's second frame has predecessors, so a budget of 10 keeps the image and frame 1 whole.
    frame_ids = torch.tensor([[0] * 4 + [1] * 6 + [2] * 6])
    got = iwp_ops.select_tokens(keys, keys, 10, method="evs", embeddings=emb, frame_ids=frame_ids)
    assert got[0].tolist() == list(range(10))


def test_evs_features_choose_what_is_compared():
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 1, 8, 2, generator=g)
    still = torch.randn(4, 3, generator=g).repeat(2, 1)[None]
    moving = torch.randn(1, 8, 3, generator=g)
    moving[0, 4:] = moving[0, :4]
    moving[0, 7] = -moving[0, 3]
    by_emb = iwp_ops.select_tokens(keys, keys, 5, method="evs", embeddings=moving, hidden=still, tokens_per_frame=4)
    assert by_emb.tolist() == [[0, 1, 2, 3, 7]]
    by_hidden = iwp_ops.select_tokens(keys, keys, 5, method="evs", embeddings=moving, hidden=still, features="hidden",
                                      tokens_per_frame=4)
    assert by_hidden.tolist() == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="features must be one of"):
        iwp_ops.select_tokens(keys, keys, 5, method="evs", features="keys")


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.2])
def test_cdpruner_is_the_official_greedy_dpp_on_the_conditional_kernel(weight):
    g = torch.Generator().manual_seed(4)
    b, n_vis, n_txt, e = 3, 40, 6, 16
    feats = torch.randn(b, n_vis + n_txt, e, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, n_vis + n_txt, dtype=torch.bool)
    mask[:, :n_vis] = True
    keys = torch.randn(b, 1, n_vis + n_txt, 2, generator=g)
    got = iwp_ops.select_tokens(keys, keys, 9, method="cdpruner", mask=mask, embeddings=feats.float(),
                                relevance_weight=weight)
    for i in range(b):
        assert got[i].tolist() == cdpruner_official(feats[i, :n_vis], feats[i, n_vis:], 9, weight)


def test_cdpruner_prefers_the_token_the_instruction_is_about_and_per_frame_splits_the_budget():
    """Token 5 points at the one text token: it is kept first; relevance off, it is not special."""
    e = 8
    vis = torch.eye(e)[None, :, :].repeat(1, 2, 1)  # 16 tokens: two copies of each axis
    vis = vis + 0.01 * torch.randn(1, 16, e, generator=torch.Generator().manual_seed(5))
    text = torch.eye(e)[5][None, None] + torch.full((1, 1, e), 0.05)
    feats = torch.cat([vis, text], 1)
    mask = torch.ones(1, 17, dtype=torch.bool)
    mask[0, 16] = False
    keys = torch.zeros(1, 1, 17, 2)
    one = iwp_ops.select_tokens(keys, keys, 1, method="cdpruner", mask=mask, embeddings=feats)
    assert one[0].tolist() in ([5], [13])
    eight = iwp_ops.select_tokens(keys, keys, 8, method="cdpruner", mask=mask, embeddings=feats, tokens_per_frame=8)
    kept = eight[0].tolist()
    assert sum(k < 8 for k in kept) == 4 and sum(k >= 8 for k in kept) == 4


def test_cdpruner_past_the_kernels_rank_takes_the_rest_by_relevance():
    """Features of width 2 give a kernel of rank 2: the third and later tokens have no gain left."""
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(1, 10, 2, generator=g)
    keys = torch.randn(1, 1, 10, 2, generator=g)
    got = iwp_ops.select_tokens(keys, keys, 6, method="cdpruner", embeddings=feats)
    assert len(set(got[0].tolist())) == 6 and bool((got >= 0).all())
