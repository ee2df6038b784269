"""The histogram-pruned knee equals the sorting knee (k and led order) on every row."""

import pytest
import torch

import switchkd.losses.knee as knee_module
from switchkd.losses import fast_select, sort_select

LARGE_OFFSET_ROW = 11  # the one row the bin arithmetic cannot resolve: it alone takes the reference


def hard_rows(vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [
        torch.randn(vocab, generator=g) * 3,  # bell-shaped
        torch.distributions.StudentT(1.2).sample((vocab,)).clamp(-60, 60),  # heavy-tailed
        torch.full((vocab,), 1.5),  # constant
        torch.zeros(vocab).index_fill_(0, torch.tensor([vocab // 3]), 25.0),  # one dominant logit
        (torch.randn(vocab, generator=g) * 2).round(),  # massive ties (integers)
        (torch.randn(vocab, generator=g) * 4).round(decimals=1),  # ties at 0.1
        # sorted, with a sharp knee
        torch.cat([torch.linspace(10, 2, vocab // 10), torch.linspace(2, 0, vocab - vocab // 10)]),
        torch.rand(vocab, generator=g),  # uniform
        -torch.empty(vocab).exponential_(1.0, generator=g),  # skewed down
        torch.empty(vocab).exponential_(0.5, generator=g),  # skewed up
        torch.where(torch.rand(vocab, generator=g) < 0.5, torch.zeros(vocab), torch.ones(vocab)),  # two values
        torch.randn(vocab, generator=g) * 1e-3 + 1e4,  # large offset, tiny spread
        # signed zeros tie with each other (the sort keys must not tell -0.0 from +0.0)
        torch.tensor([-0.0, 0.0, -1.0, 0.5])[torch.randint(0, 4, (vocab,), generator=g)],
        # LLM-like: a bell-shaped bulk and a few confident tokens
        (torch.randn(vocab, generator=g) * 3).index_add_(
            0, torch.randint(0, vocab, (8,), generator=g), 6 + 4 * torch.rand(8, generator=g)
        ),
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("vocab", [257, 5000, 151_936])
def test_fast_knee_equals_sorting_knee(dtype, vocab):
    rows = hard_rows(vocab, seed=vocab).to(dtype)
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))]
    for kwargs in ({}, {"k_min": 5}, {"k_max": 40}):
        fast = fast_select(rows, chunk_rows=5, **kwargs)  # chunks of 5 rows: exercise the chunk seams
        ref = sort_select(rows, **kwargs)
        assert fast.k.tolist() == ref.k.tolist(), kwargs
        assert torch.equal(fast.index[fast.valid], ref.index[ref.valid]), kwargs


def test_fast_knee_bins_do_not_change_the_result():
    rows = hard_rows(3000, seed=7)
    want = sort_select(rows)
    for bins in (8, 64, 1024, 4096):
        got = fast_select(rows, bins=bins)
        assert got.k.tolist() == want.k.tolist()
        assert torch.equal(got.index[got.valid], want.index[want.valid])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_only_unresolvable_rows_take_the_reference(monkeypatch, dtype):
    """The comparisons above exercise the fast path: every row but the large-offset one is selected
    without the reference sort, in every chunk and dtype."""
    rows = hard_rows(5000, seed=3).to(dtype)
    want = sort_select(rows)
    seen = []

    def counting_sort_select(x, *args):
        seen.append(x.shape[0])
        return sort_select(x, *args)

    monkeypatch.setattr(knee_module, "sort_select", counting_sort_select)
    for chunk_rows in (4, 16):
        seen.clear()
        got = fast_select(rows, chunk_rows=chunk_rows)
        # one call for one row; float64 positions resolve even that row
        assert seen == ([] if dtype == torch.float64 else [1]), chunk_rows
        assert got.k.tolist() == want.k.tolist()
        assert torch.equal(got.index[got.valid], want.index[want.valid])
    no_offset = torch.cat([rows[:LARGE_OFFSET_ROW], rows[LARGE_OFFSET_ROW + 1 :]])
    seen.clear()
    fast_select(no_offset)
    assert seen == []


def test_torch_sort_of_the_keys_equals_numpy_sort(monkeypatch):
    """The GPU branch (torch.sort of the same int64 keys) gives the same knee and order; run here on CPU."""
    rows = hard_rows(5000, seed=11)
    want = fast_select(rows)
    sort_keys = knee_module._sort_keys_descending
    monkeypatch.setattr(knee_module, "_sort_keys_descending", lambda keys, numpy: sort_keys(keys, numpy=False))
    got = fast_select(rows)
    assert got.k.tolist() == want.k.tolist()
    assert torch.equal(got.index[got.valid], want.index[want.valid])
