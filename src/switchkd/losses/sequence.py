"""From sequences to rows: the causal shift, the label mask, row chunks and the one normaliser.

Position ``t`` predicts ``labels[t + 1]``; rows are taken only where that label is not -100.
Loss sums are divided by ``num_items_in_batch`` (supervised tokens in the whole accumulated batch)
when given, so gradient accumulation and data parallelism weight every token equally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from switchkd.losses.rows import upcast

IGNORE_INDEX = -100


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions (B, T) bool, targets (M,))``: where logits are needed, and what they predict."""
    nxt = labels[:, 1:]
    keep = nxt != IGNORE_INDEX
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = keep
    return positions, nxt[keep]


def per_token(total: torch.Tensor, num_rows: int, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    """A loss summed over supervised rows, divided by the supervised tokens of the accumulated batch
    (``num_items_in_batch``), or by this batch's rows when that is not given."""
    return total / (max(num_rows, 1) if num_items_in_batch is None else num_items_in_batch)


def row_chunks(num_rows: int, chunk_rows: int | None) -> list[slice]:
    """Slices of at most ``chunk_rows`` rows (all rows at once for None). No rows still gives one
    empty slice, so the loss keeps its graph and joins the backward pass."""
    size = num_rows if chunk_rows is None else chunk_rows
    return [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, max(size, 1))] or [slice(0, 0)]


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Plain LM cross-entropy at temperature 1 over rows (M, V)."""
    return F.cross_entropy(upcast(logits), targets, reduction=reduction)
