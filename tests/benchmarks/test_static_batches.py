import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.harness.static_batches import pack_by_tokens


def test_longest_first_and_token_budget():
    lengths = [100, 400, 120, 390, 50]
    batches = pack_by_tokens(lengths, max_batch_size=8, max_batch_tokens=800)
    assert batches == [[1, 3], [2, 0, 4]]


def test_max_batch_size_caps_rows():
    assert pack_by_tokens([10] * 5, max_batch_size=2, max_batch_tokens=10_000) == [[0, 1], [2, 3], [4]]


def test_oversized_item_runs_alone():
    assert pack_by_tokens([5000, 10, 10], max_batch_size=4, max_batch_tokens=1000) == [[0], [1, 2]]


def test_invalid_limits():
    with pytest.raises(ValueError):
        pack_by_tokens([1], max_batch_size=0, max_batch_tokens=10)


def test_groups_never_share_a_batch():
    lengths, groups = [100, 400, 120, 390, 50], ["a", "b", "a", "a", "b"]
    assert pack_by_tokens(lengths, 8, 10_000, groups=groups) == [[3, 2, 0], [1, 4]]  # longest first in each
    assert pack_by_tokens(lengths, 8, 10_000, groups=[()] * 5) == pack_by_tokens(lengths, 8, 10_000)


@given(
    st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 2)), max_size=60),
    st.integers(1, 16),
    st.integers(1, 20000),
    st.booleans(),
)
def test_every_item_exactly_once_within_limits(items, size, tokens, grouped):
    lengths, groups = [n for n, _ in items], [g for _, g in items]
    batches = pack_by_tokens(lengths, size, tokens, groups=groups if grouped else None)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= size
        if len(b) > 1:
            assert max(lengths[i] for i in b) * len(b) <= tokens
        if grouped:
            assert len({groups[i] for i in b}) == 1
