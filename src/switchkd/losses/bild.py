"""BiLD (fixed k) and DBiLD (knee k): bidirectional logit-difference losses over rows (N, V).

Teacher-led branch: the teacher's top-k indices in its own order; pairs m < n;
``P_mn ∝ exp((t_m - t_n)/τ)``, ``Q_mn ∝ exp((s_m - s_n)/τ)`` (one softmax over the upper triangle).
Student-led branch: the same with the order and k from the student. ``kl="reverse"`` (the paper's
choice) is ``KL(Q || P)``, the trainable side first; ``kl="forward"`` is ``KL(P || Q)``.
The loss per row is the sum of both branches; indices carry no gradient; no τ² factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from switchkd.losses.kl import compute_dtype, reduce_rows
from switchkd.losses.knee import Selection, fixed_select, knee_select
from switchkd.losses.pairs import block_backward, block_forward, prepare, row_blocks

KL_DIRECTIONS = ("reverse", "forward")


@dataclass
class BiLDTerms:
    """Per-row pieces of one (D)BiLD evaluation, for logging and for reuse."""

    teacher_led: torch.Tensor  # (N,)
    student_led: torch.Tensor  # (N,)
    k_teacher: torch.Tensor  # (N,)
    k_student: torch.Tensor  # (N,)

    @property
    def loss(self) -> torch.Tensor:
        return self.teacher_led + self.student_led


class _BiLDBranches(torch.autograd.Function):
    """Both branches' pair KLs, block by block over rows, straight from the (N, V) logits.

    Nothing (N, K)-sized is kept: each block gathers its led top-k values of both models (in their own
    dtype, upcast per block), and backward regathers them, recomputes the pair gradient and adds it
    into one (N, V) gradient buffer. Entries past a row's k get an exactly zero gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, t_index, t_k, s_index, s_k, temperature, kl):
        dtype = compute_dtype(student)
        losses = student.new_empty((2, student.shape[0]), dtype=dtype)
        log_z_q = student.new_empty((2, student.shape[0]), dtype=torch.float64)
        for branch, (index, k) in enumerate(((t_index, t_k), (s_index, s_k))):
            for rows in row_blocks(*index.shape):
                a, b, valid = _block_values(student, teacher, index, k, rows, temperature, dtype, kl)
                losses[branch, rows], log_z_q[branch, rows] = block_forward(a, b, valid)
        ctx.temperature, ctx.kl = temperature, kl
        ctx.save_for_backward(student, teacher, t_index, t_k, s_index, s_k, losses, log_z_q)
        return losses[0], losses[1]

    @staticmethod
    def backward(ctx, grad_teacher_led, grad_student_led):
        student, teacher, t_index, t_k, s_index, s_k, losses, log_z_q = ctx.saved_tensors
        tau, reverse = ctx.temperature, ctx.kl == "reverse"
        grad = torch.zeros_like(student)
        branches = ((t_index, t_k, grad_teacher_led), (s_index, s_k, grad_student_led))
        for branch, (index, k, g) in enumerate(branches):
            if g is None:
                continue
            for rows in row_blocks(*index.shape):
                a, b, valid = _block_values(student, teacher, index, k, rows, tau, losses.dtype, ctx.kl)
                # reverse: P is the student (dKL/dA); forward: Q is the student (dKL/dB)
                grad_a, grad_b = block_backward(a, b, valid, losses[branch, rows], log_z_q[branch, rows],
                                                g[rows] / tau, want_p=reverse, want_q=not reverse)
                grad[rows].scatter_add_(1, index[rows], (grad_a if reverse else grad_b).to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def _block_values(student, teacher, index, k, rows, temperature, dtype, kl):
    """Prepared P and Q values of one block of rows (P is the student for reverse KL) and its 0/1 mask."""
    idx = index[rows]
    valid = torch.arange(idx.shape[1], device=idx.device) < k[rows, None]
    s = prepare(student[rows].gather(1, idx), valid, temperature, dtype)
    t = prepare(teacher[rows].gather(1, idx), valid, temperature, dtype)
    return (s, t, valid.to(dtype)) if kl == "reverse" else (t, s, valid.to(dtype))


def bild_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_sel: Selection,
               student_sel: Selection, *, temperature: float, kl: str) -> BiLDTerms:
    """Both branches from given selections (the teacher's may be shared between loss terms)."""
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits differ in shape; slice both to the shared vocabulary first")
    teacher_led, student_led = _BiLDBranches.apply(student_logits, teacher_logits.detach(), teacher_sel.index,
                                                   teacher_sel.k, student_sel.index, student_sel.k, temperature, kl)
    return BiLDTerms(teacher_led=teacher_led, student_led=student_led, k_teacher=teacher_sel.k,
                     k_student=student_sel.k)


def dbild_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 3.0,
                kl: str = "reverse", k_min: int = 2, k_max: int | None = None,
                teacher_sel: Selection | None = None, knee: str = "fast") -> BiLDTerms:
    if teacher_sel is None:
        teacher_sel = knee_select(teacher_logits.detach(), k_min, k_max, knee)
    student_sel = knee_select(student_logits.detach(), k_min, k_max, knee)
    return bild_terms(student_logits, teacher_logits, teacher_sel, student_sel, temperature=temperature, kl=kl)


def dbild(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 3.0,
          kl: str = "reverse", k_min: int = 2, k_max: int | None = None, reduction: str = "mean",
          knee: str = "fast") -> torch.Tensor:
    """DBiLD: BiLD with k per row at the knee of each led side's sorted logits (paper Eqs. 7-15).

    ``knee``: "fast" (exact, histogram-pruned) or "sort" (the reference full sort); same results.
    """
    terms = dbild_terms(student_logits, teacher_logits, temperature=temperature, kl=kl, k_min=k_min, k_max=k_max,
                        knee=knee)
    return reduce_rows(terms.loss, reduction)


def bild(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, k: int = 8, temperature: float = 3.0,
         kl: str = "reverse", reduction: str = "mean") -> torch.Tensor:
    """BiLD (Li et al. 2024) with a fixed top-k on both branches."""
    terms = bild_terms(student_logits, teacher_logits, fixed_select(teacher_logits.detach(), k),
                       fixed_select(student_logits.detach(), k), temperature=temperature, kl=kl)
    return reduce_rows(terms.loss, reduction)
