"""Invariants every method must keep, on random, tied, constant, zero and duplicated inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import iwp_ops

KINDS = ("random", "ties", "equal", "zeros", "duplicates")


@st.composite
def problems(draw):
    b, h = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    n, d = draw(st.integers(1, 20)), draw(st.integers(1, 5))
    seed, kind = draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from(KINDS))
    g = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    if kind == "ties":
        keys, values = torch.randint(-1, 2, keys.shape, generator=g).float(), torch.randint(-1, 2, values.shape, generator=g).float()
    elif kind == "equal":
        keys, values = keys[:, :, :1].expand_as(keys).clone(), values[:, :, :1].expand_as(values).clone()
    elif kind == "zeros":
        zero = torch.rand(b, 1, n, 1, generator=g) < 0.5
        keys, values = keys.masked_fill(zero, 0.0), values.masked_fill(torch.rand(b, 1, n, 1, generator=g) < 0.5, 0.0)
    elif kind == "duplicates":
        source = torch.randint(0, max(1, n // 3), (n,), generator=g)
        keys, values = keys[:, :, source], values[:, :, source]
    mask = torch.rand(b, n, generator=g) < draw(st.sampled_from([0.3, 0.8, 1.0]))
    if draw(st.booleans()):
        budget = draw(st.integers(0, n + 3))
    else:
        budget = torch.tensor(draw(st.lists(st.integers(0, n + 3), min_size=b, max_size=b)))
    return keys, values, mask, budget, seed


def check(out: torch.Tensor, mask: torch.Tensor, budget) -> None:
    b, n = mask.shape
    asked = [budget] * b if isinstance(budget, int) else budget.tolist()
    assert out.dtype == torch.long and out.shape == (b, max(asked))
    for i in range(b):
        row = out[i].tolist()
        count = min(asked[i], int(mask[i].sum()))
        valid = row[:count]
        assert all(x == -1 for x in row[count:]), row
        assert all(0 <= x < n and bool(mask[i, x]) for x in valid), row
        assert valid == sorted(set(valid)), row


def options(method, keys, seed):
    b, h, n, d = keys.shape
    g = torch.Generator().manual_seed(seed)
    if method == "fastv":
        return {"queries": torch.randn(b, 2 * h, 2, d, generator=g)}
    if method == "visionzip":
        return {"queries": torch.randn(b, 2 * h, n, d, generator=g)}
    if method == "divprune":
        return {"embeddings": torch.randn(b, n, 3, generator=g).masked_fill(torch.rand(b, n, 1, generator=g) < 0.2, 0)}
    if method == "random":
        return {"seed": seed % 1000}
    if method in ("evs", "cdpruner") and seed % 2:
        return {"embeddings": torch.randn(b, n, 3, generator=g), "tokens_per_frame": 1 + seed % 4}
    if method == "uniform" and seed % 2:
        return {"tokens_per_frame": 1 + seed % 5}
    if method == "iwp" and seed % 3 == 1:
        return {"tokens_per_frame": 1 + seed % 4, "chunk": [1, 3]}
    if method == "iwp" and seed % 3 == 2:
        return {"queries": torch.randn(b, h, 2, d, generator=g), "heads": "mean"}
    return {}


@pytest.mark.parametrize("method", iwp_ops.METHODS)
@settings(max_examples=30, deadline=None)
@given(problem=problems())
def test_every_method_returns_valid_ascending_unique_masked_indices(method, problem):
    keys, values, mask, budget, seed = problem
    out = iwp_ops.select_tokens(keys, values, budget, method=method, mask=mask, **options(method, keys, seed))
    check(out, mask, budget)


@settings(max_examples=30, deadline=None)
@given(problem=problems())
def test_fidelity_and_adaptive_budget_are_well_defined(problem):
    keys, values, mask, budget, _ = problem
    width = budget if isinstance(budget, int) else int(budget.max())
    out = iwp_ops.select_tokens(keys, values, budget, mask=mask)
    fid = iwp_ops.weight_fidelity(keys, values, out, mask=mask)
    assert fid.shape == (keys.shape[0],) and bool(torch.isfinite(fid).all())
    assert bool((fid <= 1 + 1e-5).all()) and bool((fid >= -1 - 1e-5).all())
    chosen = iwp_ops.adaptive_budget(keys, values, 0.9, min_tokens=min(1, width), max_tokens=width, mask=mask)
    assert chosen.dtype == torch.long and bool((chosen >= min(1, width)).all()) and bool((chosen <= width).all())


@pytest.mark.parametrize("method", iwp_ops.METHODS)
def test_budget_at_least_candidates_keeps_every_candidate(method, ref):
    keys, values = ref.make_kv(1, 2, 2, 9, 3)
    mask = torch.tensor([[True, False, True, True, False, True, True, False, True],
                         [False] * 8 + [True]])
    out = iwp_ops.select_tokens(keys, values, 12, method=method, mask=mask, **ref.method_options(method, keys))
    assert out.tolist() == [[0, 2, 3, 5, 6, 8] + [-1] * 6, [8] + [-1] * 11]


@pytest.mark.parametrize("method", iwp_ops.METHODS)
def test_per_item_budgets_pad_with_minus_one(method, ref):
    keys, values = ref.make_kv(2, 3, 2, 8, 3)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[2, 5:] = False
    out = iwp_ops.select_tokens(keys, values, torch.tensor([3, 0, 7]), method=method, mask=mask,
                                **ref.method_options(method, keys))
    assert out.shape == (3, 7)
    assert [int((row >= 0).sum()) for row in out] == [3, 0, 5]
    assert out[1].tolist() == [-1] * 7 and out[2, 5:].tolist() == [-1, -1]
    assert out[2, :5].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", iwp_ops.METHODS)
def test_all_equal_tokens_give_a_full_selection(method, ref):
    keys, values = ref.make_kv(3, 1, 2, 1, 4)
    keys, values = keys.expand(1, 2, 30, 4).contiguous(), values.expand(1, 2, 30, 4).contiguous()
    opts = ref.method_options(method, keys)
    if method in ("divprune", "evs", "cdpruner"):
        opts["embeddings"] = torch.ones(1, 30, 6)
    out = iwp_ops.select_tokens(keys, values, 10, method=method, **opts)
    assert out.shape == (1, 10) and len(set(out[0].tolist())) == 10 and bool((out >= 0).all())


def test_zero_vectors_score_nothing_and_are_picked_last(ref):
    keys, values = ref.make_kv(4, 1, 2, 12, 4)
    values[:, :, 6:] = 0.0
    assert bool(torch.isneginf(iwp_ops.information_magnitude(keys, values)[0, 6:]).all())
    out = iwp_ops.select_tokens(keys, values, 8)
    assert out[0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    every = torch.arange(12)[None]
    sim = iwp_ops.information_duplication(keys, values, every, every)
    assert float(sim[0, 6:].abs().max()) == 0.0 and bool(torch.isfinite(sim).all())


BAD = float("nan"), float("inf"), float("-inf")


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("where", ["keys", "values"])
def test_non_finite_inputs_are_refused(ref, bad, where):
    keys, values = ref.make_kv(0, 1, 1, 5, 2)
    (keys if where == "keys" else values)[0, 0, 3, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        iwp_ops.select_tokens(keys, values, 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        iwp_ops.weight_fidelity(keys, values, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        iwp_ops.adaptive_budget(keys, values, 0.9, min_tokens=1, max_tokens=3)


@pytest.mark.parametrize("method,name", [("fastv", "queries"), ("divprune", "embeddings"), ("dart", "hidden"),
                                         ("iwp", "queries"), ("visionzip", "queries"), ("evs", "embeddings"),
                                         ("cdpruner", "embeddings")])
def test_non_finite_method_inputs_are_refused(ref, method, name):
    keys, values = ref.make_kv(0, 1, 2, 5, 2)
    extra = torch.randn(1, 2, 1, 2) if name == "queries" else torch.randn(1, 5, 3)
    extra.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        iwp_ops.select_tokens(keys, values, 2, method=method, **{name: extra})


def test_malformed_arguments_are_refused(ref):
    keys, values = ref.make_kv(0, 2, 2, 6, 3)
    cases = [
        (lambda: iwp_ops.select_tokens(keys[0], values[0], 2), "keys must be a float tensor"),
        (lambda: iwp_ops.select_tokens(keys.long(), values, 2), "keys must be a float tensor"),
        (lambda: iwp_ops.select_tokens(keys, values[:, :, :5], 2), "share batch"),
        (lambda: iwp_ops.select_tokens(keys, values, -1), "must not be negative"),
        (lambda: iwp_ops.select_tokens(keys, values, torch.tensor([2, -3])), "must not be negative"),
        (lambda: iwp_ops.select_tokens(keys, values, 2.0), "budget must be an int"),
        (lambda: iwp_ops.select_tokens(keys, values, True), "budget must be an int"),
        (lambda: iwp_ops.select_tokens(keys, values, torch.tensor([1, 2, 3])), "budget must be an int"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, mask=torch.ones(2, 6)), "mask must be a bool"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, mask=torch.ones(2, 5, dtype=torch.bool)), "mask must be"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, method="nope"), "known methods: cdpruner, dart, divprune, evs"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, lamda=0.3), "does not take option"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, lam=1.5), "lam must be"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, chunk=0), "chunk must be a positive int"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, chunk=[]), "chunk must be None"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, normalise="rank"), "normalise must be one of"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, queries=torch.randn(2, 3, 1, 3)), "queries must have shape"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, method="fastv"), "needs the keyword argument"),
        (lambda: iwp_ops.select_tokens(keys, values, 2, frame_ids=torch.zeros(2, 6)), "frame_ids must be"),
        (lambda: iwp_ops.weight_fidelity(keys, values, torch.tensor([[0, 6], [1, 2]])), "indices must lie"),
        (lambda: iwp_ops.weight_fidelity(keys, values, torch.tensor([[0], [1]]), kernel="rbf"), "kernel must be"),
        (lambda: iwp_ops.adaptive_budget(keys, values, 1.2, min_tokens=1, max_tokens=3), "target must be"),
        (lambda: iwp_ops.adaptive_budget(keys, values, 0.9, min_tokens=4, max_tokens=3), "must not exceed"),
        (lambda: iwp_ops.adaptive_budget(keys, values, 0.9, min_tokens=1, max_tokens=3, tokens_per_frame=2),
         "per-frame"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
