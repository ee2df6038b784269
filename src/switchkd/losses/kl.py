"""Full-vocabulary KL divergences between student and teacher logits, rows (N, V)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
               reduction: str = "mean") -> torch.Tensor:
    """KL(p_T || p_S) with p = softmax(z / temperature), summed over the vocabulary."""
    log_q = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(upcast(teacher_logits.detach()) / temperature, dim=-1)
    return reduce_rows((log_p.exp() * (log_p - log_q)).sum(-1), reduction)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
               reduction: str = "mean") -> torch.Tensor:
    """KL(p_S || p_T): the student's mass where the teacher has little is penalised (mode seeking)."""
    log_q = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(upcast(teacher_logits.detach()) / temperature, dim=-1)
    return reduce_rows((log_q.exp() * (log_q - log_p)).sum(-1), reduction)
