"""What every loss shares: the compute precision, row reductions, and ``LossRows``, the one result type."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossRows:
    """One loss evaluated per row: the value, and how many logits each led side compared."""

    loss: torch.Tensor
    """(N,) the loss of each row."""
    k_teacher: torch.Tensor
    """(N,) long: entries of the teacher-led comparison (the knee, the fixed k, or V for a full KL)."""
    k_student: torch.Tensor
    """(N,) long: the same for the student-led side."""


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The precision every loss computes in: float64 stays float64 (tests compare there), the rest float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its compute dtype (half precision becomes float32; no copy when already there)."""
    return x.to(compute_dtype(x))


def reduce_rows(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_row.mean() if per_row.numel() else per_row.sum()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
