"""The knee of sorted logits (paper Eqs. 8-9) and the led order of the top-k.

For one row sorted descending, ``v_1 >= ... >= v_N``:
``x_i = i/N``, ``y_i = (v_i - v_min)/(v_max - v_min)``, ``d_i = (1 - x_i) - y_i``, ``k = argmax_i d_i``
(1-based; the first index on ties), clamped to ``[k_min, k_max]``; a constant row gets ``k_min``.
The led order sorts by value, descending, ties broken by vocabulary index, ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """The led side's top-k per row: ``index[r, :k[r]]`` in led order; the rest is padding."""

    k: torch.Tensor  # (N,) long
    index: torch.Tensor  # (N, K) long, K = max k in the batch
    valid: torch.Tensor  # (N, K) bool

    @classmethod
    def from_order(cls, order: torch.Tensor, k: torch.Tensor) -> Selection:
        width = int(k.max()) if k.numel() else 0
        valid = torch.arange(width, device=k.device) < k[:, None]
        return cls(k, order[:, :width], valid)


def knee_distance(values_desc: torch.Tensor, ranks: torch.Tensor, v_min: torch.Tensor, v_max: torch.Tensor,
                  n: int) -> torch.Tensor:
    """``d = (1 - rank/N) - (v - v_min)/(v_max - v_min)`` in float64. Every knee implementation calls
    this one expression, so a faster search reproduces the sorting knee bit for bit."""
    span = (v_max - v_min).double()
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (1.0 - ranks.double() / n) - (values_desc.double() - v_min.double()) / span


def clamp_k(k: torch.Tensor, constant: torch.Tensor, n: int, k_min: int, k_max: int | None) -> torch.Tensor:
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
    d = knee_distance(values, ranks, values[:, -1:], values[:, :1], n)
    k = d.argmax(dim=-1) + 1  # argmax returns the first maximum: the smallest rank on ties
    k = clamp_k(k, values[:, 0] == values[:, -1], n, k_min, k_max)
    return Selection.from_order(order, k)


def knee_k(logits: torch.Tensor, k_min: int = 2, k_max: int | None = None) -> torch.Tensor:
    """The knee rank per row, (N,) long."""
    return sort_select(logits, k_min, k_max).k


@torch.no_grad()
def fixed_select(logits: torch.Tensor, k: int) -> Selection:
    """The top-k in led order for a fixed k (BiLD)."""
    _check(logits, 2, k)
    if k > logits.shape[1]:
        raise ValueError(f"k={k} exceeds the vocabulary of {logits.shape[1]}")
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
    return Selection.from_order(order, torch.full((logits.shape[0],), k, device=logits.device))
