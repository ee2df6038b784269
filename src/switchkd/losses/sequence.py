"""From sequences to rows: the causal shift, the label mask and normalisation by supervised tokens.

Position ``t`` predicts ``labels[t + 1]``; rows are taken only where that label is not -100.
Sums are divided by ``num_items_in_batch`` (supervised tokens in the whole accumulated batch) when
given, so gradient accumulation and data parallelism weight every token equally.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from switchkd.losses.kl import upcast

IGNORE_INDEX = -100


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions (B, T) bool, targets (M,))``: where logits are needed, and what they predict."""
    nxt = labels[:, 1:]
    keep = nxt != IGNORE_INDEX
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = keep
    return positions, nxt[keep]


def normaliser(num_rows: int, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor | int:
    if num_items_in_batch is None:
        return max(num_rows, 1)
    return num_items_in_batch


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Plain LM cross-entropy at temperature 1 over rows (M, V)."""
    return F.cross_entropy(upcast(logits), targets, reduction=reduction)


def sequence_loss(fn: Callable[..., torch.Tensor], student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor, *, num_items_in_batch: int | torch.Tensor | None = None,
                  chunk_rows: int | None = None, **kwargs) -> torch.Tensor:
    """A row-level loss over (B, T, V) logits at supervised positions, summed and normalised.

    ``chunk_rows`` bounds the rows processed at once (peak memory); the result is unchanged.
    """
    positions, _ = supervised_positions(labels)
    s_rows, t_rows = student_logits[positions], teacher_logits[positions]
    if chunk_rows is None or s_rows.shape[0] <= chunk_rows:
        total = fn(s_rows, t_rows, reduction="sum", **kwargs)
    else:
        total = sum(fn(s_rows[i : i + chunk_rows], t_rows[i : i + chunk_rows], reduction="sum", **kwargs)
                    for i in range(0, s_rows.shape[0], chunk_rows))
    return total / normaliser(s_rows.shape[0], num_items_in_batch)
