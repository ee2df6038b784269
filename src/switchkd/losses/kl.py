"""Full-vocabulary KL divergences between student and teacher logits, rows (N, V)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from switchkd.losses.rows import reduce_rows, upcast


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """``(log p_S, log p_T)`` at ``temperature`` in the compute dtype; the teacher carries no gradient."""
    log_q = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(upcast(teacher_logits.detach()) / temperature, dim=-1)
    return log_q, log_p


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """KL(p_T || p_S) with p = softmax(z / temperature), summed over the vocabulary."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return reduce_rows((log_p.exp() * (log_p - log_q)).sum(-1), reduction)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """KL(p_S || p_T): the student's mass where the teacher has little is penalised (mode seeking)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return reduce_rows((log_q.exp() * (log_q - log_p)).sum(-1), reduction)
