"""The knee of sorted logits (paper Eqs. 8-9) and the led order of the top-k.

For one row sorted descending, ``v_1 >= ... >= v_N``:
``x_i = i/N``, ``y_i = (v_i - v_min)/(v_max - v_min)``, ``d_i = (1 - x_i) - y_i``, ``k = argmax_i d_i``
(1-based; the first index on ties), clamped to ``[k_min, k_max]``; a constant row gets ``k_min``.
The led order sorts by value, descending, ties broken by vocabulary index, ascending.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from switchkd.syncs import sync_free


@dataclass
class Selection:
    """The led side's top-k per row: ``index[r, :k[r]]`` in led order; the rest is padding."""

    k: torch.Tensor  # (N,) long
    index: torch.Tensor  # (N, K) long, K = max k in the batch
    valid: torch.Tensor  # (N, K) bool

    @classmethod
    def from_order(cls, order: torch.Tensor, k: torch.Tensor, width: int | None = None) -> Selection:
        """The first ``k[r]`` entries of each row of ``order``. ``width``: the padded width when known
        (a fixed k); otherwise the largest k, which on a GPU is the one host synchronisation per call.
        While ``torch.compile`` traces it, the whole of ``order`` (a static shape, no synchronisation;
        the entries past each k are masked, so the sums are the same)."""
        if width is None and torch.compiler.is_compiling():
            width = order.shape[1]
        elif width is None:
            width = int(k.max()) if k.numel() else 0
        valid = torch.arange(width, device=k.device) < k[:, None]
        return cls(k, order[:, :width], valid)


def knee_distance(
    values_desc: torch.Tensor, ranks: torch.Tensor, *, v_min: torch.Tensor, v_max: torch.Tensor, n: int
) -> torch.Tensor:
    """``d = (1 - rank/N) - (v - v_min)/(v_max - v_min)`` in float64. Every knee implementation calls
    this one expression, so a faster search reproduces the sorting knee bit for bit."""
    span = (v_max - v_min).double()
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (1.0 - ranks.double() / n) - (values_desc.double() - v_min.double()) / span


def clamp_k(k: torch.Tensor, constant: torch.Tensor, *, n: int, k_min: int, k_max: int | None) -> torch.Tensor:
    k = torch.where(constant, torch.full_like(k, k_min), k)
    k = k.clamp(min=k_min, max=n)
    return k if k_max is None else k.clamp(max=max(k_max, k_min))


def _check(logits: torch.Tensor, k_min: int, k_max: int | None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"knee expects rows (N, V), got shape {tuple(logits.shape)}")
    if k_min < 2:
        raise ValueError("k_min must be >= 2: a single logit has no pair")
    if k_max is not None and k_max < k_min:
        raise ValueError(f"k_max ({k_max}) must be >= k_min ({k_min})")
    if logits.shape[1] < k_min:
        raise ValueError(f"vocabulary of {logits.shape[1]} is smaller than k_min={k_min}")


@torch.no_grad()
def sort_select(logits: torch.Tensor, k_min: int = 2, k_max: int | None = None) -> Selection:
    """Knee and led order from one full stable sort per row (the reference definition)."""
    _check(logits, k_min, k_max)
    values, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    n = logits.shape[1]
    ranks = torch.arange(1, n + 1, device=logits.device)
    d = knee_distance(values, ranks, v_min=values[:, -1:], v_max=values[:, :1], n=n)
    k = d.argmax(dim=-1) + 1  # argmax returns the first maximum: the smallest rank on ties
    k = clamp_k(k, values[:, 0] == values[:, -1], n=n, k_min=k_min, k_max=k_max)
    return Selection.from_order(order, k)


def knee_k(logits: torch.Tensor, k_min: int = 2, k_max: int | None = None, method: str = "fast") -> torch.Tensor:
    """The knee rank per row, (N,) long. ``method``: "fast" (histogram-pruned) or "sort" (reference)."""
    return knee_select(logits, k_min, k_max, method).k


def knee_select(logits: torch.Tensor, k_min: int = 2, k_max: int | None = None, method: str = "fast") -> Selection:
    """Knee k and led top-k order per row; both methods give identical results.

    "fast" on CPU prunes with a histogram and sorts only each row's top (``fast_select``). On a GPU it
    is the full sort: a segmented radix sort of the rows is cheap there, while the pruned extraction's
    data-dependent sizes would cost several host synchronisations per 16 rows. The GPU path
    synchronises once per call, to size the top-k (``Selection.from_order``).
    """
    if method == "fast":
        return sort_select(logits, k_min, k_max) if sync_free(logits.device) else fast_select(logits, k_min, k_max)
    if method == "sort":
        return sort_select(logits, k_min, k_max)
    raise ValueError(f"knee method must be 'fast' or 'sort', got {method!r}")


@torch.no_grad()
def fixed_select(logits: torch.Tensor, k: int) -> Selection:
    """The top-k in led order for a fixed k (BiLD)."""
    _check(logits, 2, k)
    if k > logits.shape[1]:
        raise ValueError(f"k={k} exceeds the vocabulary of {logits.shape[1]}")
    fixed = torch.full((logits.shape[0],), k, device=logits.device)
    if sync_free(logits.device):  # GPU: one stable sort, no data-dependent branch, no host sync
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
        return Selection.from_order(order, fixed, width=k)
    # topk picks an arbitrary member among ties at the boundary; take a margin and order exactly.
    width = min(logits.shape[1], 2 * k + 16)
    values, cand = torch.topk(logits, width, dim=-1, sorted=False)
    boundary = values.sort(dim=-1, descending=True).values[:, k - 1 : k]
    if bool((values.min(dim=-1, keepdim=True).values >= boundary).any()) and width < logits.shape[1]:
        # So many ties at the boundary that the margin may miss lower indices: sort the full rows.
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    else:
        by_index, pos = cand.sort(dim=-1)  # index ascending, then a stable sort by value
        vals = values.gather(1, pos)
        order = by_index.gather(1, torch.sort(vals, dim=-1, descending=True, stable=True).indices)
    return Selection.from_order(order, fixed, width=k)


# ---- the exact knee without a full sort ----------------------------------------------------------
#
# The knee maximises d(v, r) = 1 - r/N - (v - v_min)/span over (value, rank) pairs. A histogram of
# each row gives, per bin b, the exact rank of its largest element (1 + the count above the bin) and
# bounds on its values, hence an upper bound UB_b on d inside the bin and a lower bound LB_b that the
# bin's largest element reaches. Bins with UB_b below max_b LB_b cannot hold the knee. Everything at
# or above the lowest surviving bin is extracted and sorted: those are the row's top-M elements, so
# their ranks are exact, the knee is among them, and their sorted prefix is the led top-k order.


def _position_dtype(dtype: torch.dtype) -> torch.dtype:
    """Bin positions in float32 (float64 for float64 logits): half precision cannot resolve 1,024 bins."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Workspace:
    """Buffers reused across row chunks: on CPU a fresh (rows, V) tensor costs far more in page
    faults than the arithmetic that fills it."""

    def __init__(self, rows: int, n: int, dtype: torch.dtype, device: torch.device):
        self.pos = torch.empty(rows, n, dtype=_position_dtype(dtype), device=device)
        self.bins = torch.empty(rows, n, dtype=torch.int32, device=device)
        self.mask = torch.empty(rows, n, dtype=torch.bool, device=device)

    def views(self, rows: int):
        return self.pos[:rows], self.bins[:rows], self.mask[:rows]

    def fits(self, rows: int, n: int, dtype: torch.dtype, device: torch.device) -> bool:
        p = self.pos
        return p.shape[0] >= rows and p.shape[1] == n and p.dtype == _position_dtype(dtype) and p.device == device


_local = threading.local()


def _get_workspace(rows: int, n: int, dtype: torch.dtype, device: torch.device) -> _Workspace:
    """One cached workspace per thread (a few tens of MB at V = 152k): every knee of a step reuses its pages."""
    work = getattr(_local, "work", None)
    if work is None or not work.fits(rows, n, dtype, device):
        work = _local.work = _Workspace(rows, n, dtype, device)
    return work


class BinGrid(NamedTuple):
    """Per-row bin geometry: value range, values-to-bins scale, position error bound, constant rows."""

    v_min: torch.Tensor
    v_max: torch.Tensor
    scale: torch.Tensor
    eps: torch.Tensor
    constant: torch.Tensor


def _bin_positions(x: torch.Tensor, bins: int, pos: torch.Tensor, out: torch.Tensor) -> BinGrid:
    """Per-row bin index of every element (with row offsets) into ``out``, and the grid it used."""
    rows = x.shape[0]
    v_min, v_max = x.amin(dim=-1), x.amax(dim=-1)  # two vectorised passes beat one aminmax on CPU
    lo64, hi64 = v_min.double(), v_max.double()
    span = hi64 - lo64
    constant = span == 0
    span = torch.where(constant, torch.ones_like(span), span)
    scale = (bins - 0.5) / span  # the row's values map to [0.25, bins - 0.25]
    offset = 0.25 - lo64 * scale + torch.arange(rows, dtype=torch.float64, device=x.device) * bins
    torch.addcmul(offset.to(pos.dtype)[:, None], x, scale.to(pos.dtype)[:, None], out=pos)  # (R, V)
    out.copy_(pos)  # truncation toward zero = floor, positions are positive
    # A few roundings in the positions' dtype, each at most half an ulp of the magnitudes involved.
    unit = torch.finfo(pos.dtype).eps
    magnitude = torch.maximum(lo64.abs(), hi64.abs()) * scale + offset.abs() + bins
    eps = 4 * unit * magnitude + 1e-6
    return BinGrid(v_min, v_max, scale, eps, constant)


def _lowest_bin(counts: torch.Tensor, grid: BinGrid, *, n: int, k_min: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest bin that may hold the knee (or rank k_min), and how many elements lie at or above it."""
    v_min, v_max, scale, eps = grid.v_min, grid.v_max, grid.scale, grid.eps
    bins = counts.shape[1]
    at_or_above = counts.flip(-1).cumsum(-1).flip(-1)  # elements in bins >= b
    first_rank = at_or_above - counts + 1  # rank of each bin's largest element
    b = torch.arange(bins, dtype=torch.float64, device=counts.device)
    lo = v_min.double()[:, None] + (b - 0.25 - eps[:, None]) / scale[:, None]
    hi = v_min.double()[:, None] + (b + 0.75 + eps[:, None]) / scale[:, None]
    upper = knee_distance(lo, first_rank, v_min=v_min[:, None], v_max=v_max[:, None], n=n)
    lower = knee_distance(hi, first_rank, v_min=v_min[:, None], v_max=v_max[:, None], n=n)
    occupied = counts > 0
    best_lower = lower.masked_fill(~occupied, float("-inf")).amax(dim=-1, keepdim=True)
    survive = occupied & (upper >= best_lower - 1e-12)
    lowest = survive.int().argmax(dim=-1)  # first True from the bottom
    # Also reach rank k_min, so a clamped k always has its elements.
    lowest = torch.minimum(lowest, (at_or_above >= k_min).sum(-1) - 1)
    return lowest, at_or_above.gather(1, lowest[:, None])[:, 0]


def _sort_keys_descending(keys: torch.Tensor, numpy: bool) -> torch.Tensor:
    """Each row of int64 keys sorted descending: on CPU with NumPy's vectorised sort (x86-simd-sort,
    several times torch.sort's speed there), elsewhere with torch.sort (radix sort on GPUs)."""
    if numpy:
        return torch.from_numpy(np.sort(keys.numpy(), axis=-1)[:, ::-1].copy())
    return torch.sort(keys, dim=-1, descending=True).values


def _sort_descending(x: torch.Tensor, row: torch.Tensor, col: torch.Tensor, *, slot: torch.Tensor, width: int):
    """Values ``x[row, col]`` of each row sorted descending, ties by ``col`` ascending, padded to ``width``
    (padding: index 0, value -inf or ``x[:, 0]``; callers mask it by rank). Returns (values, index)."""
    rows, n = x.shape
    bits = max(1, (n - 1).bit_length())
    if x.dtype == torch.float64 or bits > 31:
        values = torch.full((rows, width), float("-inf"), dtype=x.dtype, device=x.device)
        index = torch.zeros((rows, width), dtype=torch.long, device=x.device)
        values[row, slot] = x[row, col]
        index[row, slot] = col
        values, order = torch.sort(values, dim=-1, descending=True, stable=True)  # stable: ties by index
        return values, index.gather(1, order)
    # One int64 key per element: the value's order-preserving 32-bit pattern, then the complement of the
    # index (ties by index ascending), so an unstable sort of distinct keys gives the stable order.
    low = (1 << bits) - 1
    pattern = (x[row, col].float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = (pattern ^ ((pattern >> 31) & 0x7FFFFFFF)).long()  # negative floats: flip the magnitude bits
    keys = torch.full((rows, width), torch.iinfo(torch.int64).min + low, dtype=torch.long, device=x.device)
    keys[row, slot] = (ordered << bits) | (low - col)
    keys = _sort_keys_descending(keys, numpy=keys.device.type == "cpu")
    index = low - (keys & low)  # padding decodes to index 0
    return x.gather(1, index), index


def _merge_rows(rows: int, parts: list[tuple[torch.Tensor, Selection]]) -> Selection:
    """One selection from selections of disjoint row subsets (given by boolean masks)."""
    k = torch.empty(rows, dtype=torch.long, device=parts[0][1].k.device)
    index = torch.zeros(rows, max(sel.index.shape[1] for _, sel in parts), dtype=torch.long, device=k.device)
    for where, sel in parts:
        k[where] = sel.k
        index[where, : sel.index.shape[1]] = sel.index
    return Selection.from_order(index, k)


@torch.no_grad()
def _fast_chunk(x: torch.Tensor, work: _Workspace, *, k_min: int, k_max: int | None, bins: int) -> Selection:
    rows, n = x.shape
    device = x.device
    pos, flat_bins, mask = work.views(rows)
    grid = _bin_positions(x, bins, pos, flat_bins)
    v_min, v_max, constant = grid.v_min, grid.v_max, grid.constant
    coarse = grid.eps >= 0.25  # values too large for the bin arithmetic (a huge offset, a tiny spread)
    if bool(coarse.any()):  # those rows take the reference, the others the fast path
        parts = [(coarse, sort_select(x[coarse], k_min, k_max))]
        if not bool(coarse.all()):
            parts.append((~coarse, _fast_chunk(x[~coarse], work, k_min=k_min, k_max=k_max, bins=bins)))
        return _merge_rows(rows, parts)
    counts = torch.bincount(flat_bins.view(-1), minlength=rows * bins).view(rows, bins)  # ascending values
    lowest, taken = _lowest_bin(counts, grid, n=n, k_min=k_min)
    lowest = torch.where(constant, torch.full_like(lowest, bins), lowest)  # constant rows extract nothing
    taken = torch.where(constant, torch.zeros_like(taken), taken)

    # Extract the row's top elements (index ascending within a row), then sort them by value.
    row_offsets = torch.arange(rows, device=device, dtype=torch.int32) * bins
    torch.ge(flat_bins, (lowest.to(torch.int32) + row_offsets)[:, None], out=mask)
    row, col = mask.nonzero(as_tuple=True)
    width = max(int(taken.max()), 1)
    starts = torch.cumsum(taken, 0) - taken
    slot = torch.arange(row.numel(), device=device) - starts[row]
    values, index = _sort_descending(x, row, col, slot=slot, width=width)
    ranks = torch.arange(1, width + 1, device=device)
    d = knee_distance(values, ranks, v_min=v_min[:, None], v_max=v_max[:, None], n=n)
    d = d.masked_fill(ranks[None] > taken[:, None], float("-inf"))
    k = clamp_k(d.argmax(dim=-1) + 1, constant, n=n, k_min=k_min, k_max=k_max)
    if bool(constant.any()):  # constant rows extracted nothing: their led order is by index
        need = int(k[constant].max())
        if need > width:
            index = torch.cat([index, index.new_zeros(rows, need - width)], dim=1)
        index[constant] = torch.arange(index.shape[1], device=device).expand(int(constant.sum()), -1)
    return Selection.from_order(index, k)


@torch.no_grad()
def fast_select(
    logits: torch.Tensor, k_min: int = 2, k_max: int | None = None, *, bins: int = 1024, chunk_rows: int = 16
) -> Selection:
    """The same knee and led order as ``sort_select``, without sorting whole rows.

    Rows are processed ``chunk_rows`` at a time to bound temporary memory; logits must be finite.
    """
    _check(logits, k_min, k_max)
    rows, n = logits.shape
    if rows == 0:
        return sort_select(logits, k_min, k_max)
    work = _get_workspace(min(rows, chunk_rows), n, logits.dtype, logits.device)
    parts = [
        _fast_chunk(logits[i : i + chunk_rows], work, k_min=k_min, k_max=k_max, bins=bins)
        for i in range(0, rows, chunk_rows)
    ]
    if len(parts) == 1:
        return parts[0]
    width = max(p.index.shape[1] for p in parts)
    index = torch.cat([torch.nn.functional.pad(p.index, (0, width - p.index.shape[1])) for p in parts])
    return Selection.from_order(index, torch.cat([p.k for p in parts]))
