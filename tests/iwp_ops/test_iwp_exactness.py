"""The optimised code against explicit float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

import iwp_ops


@pytest.mark.parametrize("seed", range(4))
def test_magnitude_matches_explicit_formula(ref, seed):
    keys, values = ref.make_kv(seed, 2, 3, 20, 8, key_scale=1.5)
    per_head, layer = ref.magnitude(keys, values)
    got_heads = iwp_ops.information_magnitude(keys.float(), values.float(), per_head=True)
    got_layer = iwp_ops.information_magnitude(keys.float(), values.float())
    assert got_heads.shape == (2, 3, 20) and got_layer.shape == (2, 20)
    torch.testing.assert_close(got_heads.double(), per_head.log(), rtol=0, atol=2e-5)
    torch.testing.assert_close(got_layer.double(), layer.log(), rtol=0, atol=2e-5)


def test_query_aware_magnitude_matches_explicit_formula(ref):
    keys, values = ref.make_kv(7, 1, 2, 10, 4)
    queries = torch.randn(1, 6, 3, 4, generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(10, dtype=torch.float64)
    for i in range(10):
        total = 0.0
        for hq in range(6):
            h = hq // 3  # three query heads per KV head
            for t in range(3):
                kappa = math.exp(float(queries[0, hq, t].double() @ keys[0, h, i].double()) / 2.0)
                total += (kappa * float(values[0, h, i].double().norm())) ** 2 / 3
        expected[i] = 0.5 * math.log(total)
    got = iwp_ops.information_magnitude(keys.float(), values.float(), queries=queries)
    torch.testing.assert_close(got[0].double(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("heads", ["layer", "mean"])
@pytest.mark.parametrize("seed", range(3))
def test_duplication_matches_explicit_formula(ref, heads, seed):
    keys, values = ref.make_kv(seed, 2, 3, 16, 6)
    every = torch.arange(16).expand(2, 16)
    got = iwp_ops.information_duplication(keys.float(), values.float(), every, every, heads=heads)
    expected = ref.similarity(keys, values) if heads == "layer" else ref.mean_similarity(keys, values)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6)
    if heads == "layer":
        torch.testing.assert_close(torch.diagonal(got, dim1=1, dim2=2), torch.ones(2, 16), rtol=0, atol=1e-5)


# (seed, lam): chosen so the float64 reference never has a near-tie (margin asserted below).
@pytest.mark.parametrize("seed,lam", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.5), (4, 0.9)])
@pytest.mark.parametrize("heads", ["layer", "mean"])
def test_chunk_one_equals_brute_force_greedy_mmr(ref, seed, lam, heads):
    keys, values = ref.make_kv(seed, 2, 3, 40, 6, key_scale=1.3)
    mask = torch.rand(2, 40, generator=torch.Generator().manual_seed(seed)) < 0.8
    per_head, layer = ref.magnitude(keys, values)
    if heads == "layer":
        mhat, sim = ref.log_minmax(layer.log(), mask), ref.similarity(keys, values)
    else:
        mhat = torch.stack([ref.log_minmax(per_head[:, h].log(), mask) for h in range(3)], 1).mean(1)
        sim = ref.mean_similarity(keys, values)
    expected, margin = ref.greedy_mmr(mhat, sim, mask, 18, lam)
    assert margin > 1e-5, "reference has a near-tie; pick another seed"
    got = iwp_ops.select_tokens(keys.float(), values.float(), 18, mask=mask, chunk=1, lam=lam, heads=heads)
    assert got.tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_weight_fidelity_matches_explicit_gram(ref, seed):
    keys, values = ref.make_kv(seed, 3, 2, 30, 5, key_scale=1.5)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, 30, generator=g) < 0.7
    kept = [sorted(torch.nonzero(mask[i]).flatten()[torch.randperm(int(mask[i].sum()), generator=g)[:4 + 3 * i]].tolist())
            for i in range(3)]
    width = max(len(k) for k in kept) + 2
    indices = torch.tensor([k + [-1] * (width - len(k)) for k in kept])
    got = iwp_ops.weight_fidelity(keys.float(), values.float(), indices, mask=mask)
    expected = torch.tensor(ref.fidelity(keys, values, kept, mask), dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)
    full = torch.nonzero(mask[0]).flatten()[None]
    one = iwp_ops.weight_fidelity(keys[:1].float(), values[:1].float(), full, mask=mask[:1])
    torch.testing.assert_close(one, torch.ones(1), rtol=0, atol=1e-6)


def test_linear_kernel_fidelity_is_cosine_of_explicit_weights(ref):
    keys, values = ref.make_kv(11, 2, 3, 12, 4)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :3] = False
    kept = [[0, 2, 5, 9], [3, 4, 10]]
    indices = torch.tensor([[0, 2, 5, 9], [3, 4, 10, -1]])
    got = iwp_ops.weight_fidelity(keys.float(), values.float(), indices, mask=mask, kernel="linear")
    expected = torch.tensor(ref.linear_fidelity(keys, values, kept, mask), dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def _large_keys(seed: int, b: int, h: int, n: int, d: int, low: float, high: float):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    norm = low + (high - low) * torch.rand(b, h, n, 1, generator=g, dtype=torch.float64)
    keys = direction / direction.norm(dim=-1, keepdim=True) * norm
    return keys, torch.randn(b, h, n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_with_key_norms_over_40(ref, dtype):
    keys, values = _large_keys(4, 2, 2, 36, 32, 40.0, 46.0)
    k, v = keys.to(dtype), values.to(dtype)
    k64, v64 = k.double(), v.double()  # the rounded inputs, exactly
    assert float(k64.norm(dim=-1).min()) >= 39.9

    per_head, layer = ref.magnitude(k64, v64)
    got = iwp_ops.information_magnitude(k, v)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), layer.log(), rtol=0, atol=5e-4)

    every = torch.arange(36).expand(2, 36)
    sim = iwp_ops.information_duplication(k, v, every, every)
    assert bool(torch.isfinite(sim).all())
    torch.testing.assert_close(sim.double(), ref.similarity(k64, v64), rtol=0, atol=5e-4)

    mask = torch.ones(2, 36, dtype=torch.bool)
    mhat = ref.log_minmax(layer.log(), mask)
    expected, margin = ref.greedy_mmr(mhat, ref.similarity(k64, v64), mask, 12, 0.5)
    assert margin > 3e-4  # fp32 S carries ~1e-4 cancellation error at these norms
    chosen = iwp_ops.select_tokens(k, v, 12, chunk=1, heads="layer")  # the reference scores the whole layer
    assert chosen.tolist() == expected
    assert iwp_ops.select_tokens(k, v, 12, heads="layer").tolist() == \
        iwp_ops.select_tokens(k.float(), v.float(), 12, heads="layer").tolist()

    fid = iwp_ops.weight_fidelity(k, v, chosen)
    assert bool(torch.isfinite(fid).all())
    expected_fid = torch.tensor(ref.fidelity(k64, v64, expected, mask), dtype=torch.float64)
    torch.testing.assert_close(fid.double(), expected_fid, rtol=0, atol=1e-4)


def test_huge_key_norms_stay_finite_and_match_log_space_reference():
    keys, values = _large_keys(9, 1, 3, 24, 8, 80.0, 120.0)  # exp(‖k‖²/√d) overflows even float64
    for dtype in (torch.float16, torch.bfloat16):
        k, v = keys.to(dtype), values.to(dtype)
        k64, v64 = k.double(), v.double()
        log_heads = k64.square().sum(-1) / (2 * math.sqrt(8)) + v64.norm(dim=-1).log()
        expected = 0.5 * torch.logsumexp(2 * log_heads, dim=1)
        torch.testing.assert_close(iwp_ops.information_magnitude(k, v).double(), expected, rtol=0, atol=2e-3)
        every = torch.arange(24)[None]
        sim = iwp_ops.information_duplication(k, v, every, every)
        assert bool(torch.isfinite(sim).all()) and float(sim.abs().max()) <= 1 + 1e-3
        # fp32 cancellation in ‖kᵢ‖² + ‖kⱼ‖² − 2kᵢ·kⱼ at ‖k‖²/√d ≈ 5000 costs ~ulp(5000) = 5e-4
        torch.testing.assert_close(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(1, 24), rtol=0, atol=2e-3)
        kept = iwp_ops.select_tokens(k, v, 8)
        assert kept.shape == (1, 8) and bool((kept >= 0).all())
        fid = iwp_ops.weight_fidelity(k, v, kept)
        assert bool(torch.isfinite(fid).all()) and 0 < float(fid) <= 1 + 1e-6


def test_fastv_matches_explicit_attention_row(ref):
    keys, _ = ref.make_kv(2, 1, 2, 20, 4)
    queries = torch.randn(1, 4, 5, 4, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, 3:15] = True
    logits = torch.stack([queries[0, hq, -1].double() @ keys[0, hq // 2].double().T / 2.0 for hq in range(4)])
    received = logits.softmax(-1).mean(0)
    expected = sorted(received.masked_fill(~mask[0], -1).topk(5).indices.tolist())
    got = iwp_ops.select_tokens(keys.float(), keys.float(), 5, method="fastv", mask=mask, queries=queries)
    assert got[0].tolist() == expected


def test_divprune_matches_official_greedy(ref):
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 30, 5, generator=g, dtype=torch.float64)
    unit = emb[0] / emb[0].norm(dim=-1, keepdim=True)
    dist = 1 - unit @ unit.T
    kept = [int(torch.topk(dist, 2, dim=0, largest=False).values[1].argmax())]
    while len(kept) < 9:
        kept.append(int(dist[kept].min(0).values.argmax()))
    keys, values = ref.make_kv(0, 1, 1, 30, 2)
    got = iwp_ops.select_tokens(keys.float(), values.float(), 9, method="divprune", embeddings=emb.float())
    assert got[0].tolist() == sorted(kept)


def test_dart_matches_pivot_rule(ref):
    keys, _ = ref.make_kv(6, 1, 2, 24, 3)
    hidden = torch.randn(1, 24, 5, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, 2:20] = True  # image tokens; 0-1 system, 20-23 text
    norm = keys[0].abs().sum((0, 2))
    image = sorted(range(2, 20), key=lambda i: -float(norm[i]))[:2]
    text = sorted(range(20, 24), key=lambda i: -float(norm[i]))[:1]
    unit = hidden[0] / hidden[0].norm(dim=-1, keepdim=True)
    kept = set(image)
    shares = [3, 3, 2]  # budget 10 = 2 image pivots + 8 split over 3 pivots
    for pivot, share in zip(image + text, shares):
        rest = [i for i in range(2, 20) if i not in kept]
        rest.sort(key=lambda i: float(unit[pivot] @ unit[i]))
        kept.update(rest[:share])
    got = iwp_ops.select_tokens(keys.float(), keys.float(), 10, method="dart", mask=mask, hidden=hidden,
                                image_pivots=2, text_pivots=1, text_mask=torch.arange(24)[None] >= 20)
    assert got[0].tolist() == sorted(kept)


@pytest.mark.parametrize("n", [1, 7, 30])
def test_column_totals_equal_explicit_gram_column_sums(ref, n):
    from iwp_ops.fidelity import column_totals, gram_features

    keys, values = ref.make_kv(n, 2, 2, n, 5, key_scale=1.5)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 1::3] = False
    g = ref.gram(keys, values) * (mask[:, :, None] & mask[:, None, :])
    got = column_totals(gram_features(keys.float(), values.float(), mask, "softmax"))
    # gram_features shifts every term by one per-item constant; the ratios to the total are unshifted
    torch.testing.assert_close(got / got.sum(-1, keepdim=True), g.sum(1) / g.sum((1, 2))[:, None], rtol=0, atol=1e-5)


def test_kernel_terms_below_fp32_normal_range_are_exactly_zero():
    from iwp_ops.scoring import pair_features

    d = 4
    keys = torch.zeros(1, 1, 3, d, dtype=torch.float64)
    keys[0, 0, 1, 0] = 6.0 * d ** 0.25   # ‖k̂₀ − k̂₁‖²/2 = 18: term e^-18, kept
    keys[0, 0, 2, 0] = -14.0 * d ** 0.25  # ‖k̂₀ − k̂₂‖²/2 = 98: e^-98 ≈ 3e-43, below fp32's normal range
    values = torch.ones(1, 1, 3, d, dtype=torch.float64)
    base, _ = pair_features(keys.float(), values.float())
    got = base.pair(base)[0]
    assert float(got[0, 2]) == 0.0 and float(got[2, 0]) == 0.0 and float(got[1, 2]) == 0.0
    torch.testing.assert_close(got[0, 1].double(), torch.tensor(math.exp(-18.0), dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.diagonal(got), torch.ones(3))
    dropped = base.with_logw(torch.tensor([[[0.0, float("-inf"), 0.0]]])).pair(base)[0]
    assert bool((dropped[1] == 0).all())
