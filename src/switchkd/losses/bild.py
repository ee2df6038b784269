"""BiLD (fixed k) and DBiLD (knee k): bidirectional logit-difference losses over rows (N, V).

Teacher-led branch: the teacher's top-k indices in its own order; pairs m < n;
``P_mn ∝ exp((t_m - t_n)/τ)``, ``Q_mn ∝ exp((s_m - s_n)/τ)`` (one softmax over the upper triangle).
Student-led branch: the same with the order and k from the student. ``kl="reverse"`` (the paper's
choice) is ``KL(Q || P)``, the trainable side first; ``kl="forward"`` is ``KL(P || Q)``.
The loss per row is the sum of both branches; indices carry no gradient; no τ² factor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from switchkd.losses.knee import Selection
from switchkd.losses.pairs import block_backward, block_forward, prepare, row_blocks
from switchkd.losses.rows import LossRows, compute_dtype

KL_DIRECTIONS = ("reverse", "forward")


class PairOptions(NamedTuple):
    temperature: float
    kl: str


class _BiLDBranches(torch.autograd.Function):
    """Both branches' pair KLs, block by block over rows, straight from the (N, V) logits.

    Nothing (N, K)-sized is kept: each block gathers its led top-k values of both models (in their own
    dtype, upcast per block), and backward regathers them, recomputes the pair gradient and adds it
    into one (N, V) gradient buffer. Entries past a row's k get an exactly zero gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, selections: tuple[Selection, Selection], options: PairOptions):
        """``selections``: the teacher-led and the student-led top-k; returns both branches' (N,) losses."""
        dtype = compute_dtype(student)
        losses = student.new_empty((2, student.shape[0]), dtype=dtype)
        log_z_q = student.new_empty((2, student.shape[0]), dtype=torch.float64)
        for branch, sel in enumerate(selections):
            for rows in row_blocks(*sel.index.shape, device=student.device):
                a, b, valid = _block_values(student, teacher, (sel.index, sel.k), rows, dtype=dtype, options=options)
                losses[branch, rows], log_z_q[branch, rows] = block_forward(a, b, valid)
        ctx.options = options
        (t_sel, s_sel) = selections
        ctx.save_for_backward(student, teacher, t_sel.index, t_sel.k, s_sel.index, s_sel.k, losses, log_z_q)
        return losses[0], losses[1]

    @staticmethod
    def backward(ctx, grad_teacher_led, grad_student_led):
        student, teacher, t_index, t_k, s_index, s_k, losses, log_z_q = ctx.saved_tensors
        options = ctx.options
        reverse = options.kl == "reverse"
        grad = torch.zeros_like(student)
        branches = (((t_index, t_k), grad_teacher_led), ((s_index, s_k), grad_student_led))
        for branch, (led, g) in enumerate(branches):
            if g is None:
                continue
            for rows in row_blocks(*led[0].shape, device=student.device):
                a, b, valid = _block_values(student, teacher, led, rows, dtype=losses.dtype, options=options)
                # reverse: P is the student (dKL/dA); forward: Q is the student (dKL/dB)
                grad_a, grad_b = block_backward(
                    a,
                    b,
                    valid,
                    kl=losses[branch, rows],
                    log_z_q=log_z_q[branch, rows],
                    grad=g[rows] / options.temperature,
                    want_p=reverse,
                    want_q=not reverse,
                )
                grad[rows].scatter_add_(1, led[0][rows], (grad_a if reverse else grad_b).to(grad.dtype))
        return grad, None, None, None


def _block_values(
    student, teacher, led: tuple[torch.Tensor, torch.Tensor], rows: slice, *, dtype, options: PairOptions
):
    """Prepared P and Q values of one block of rows (P is the student for reverse KL) and its 0/1 mask.
    ``led``: the led side's (index (N, K), k (N,))."""
    index, k = led
    idx = index[rows]
    valid = torch.arange(idx.shape[1], device=idx.device) < k[rows, None]
    s = prepare(student[rows].gather(1, idx), valid, options.temperature, dtype)
    t = prepare(teacher[rows].gather(1, idx), valid, options.temperature, dtype)
    return (s, t, valid.to(dtype)) if options.kl == "reverse" else (t, s, valid.to(dtype))


def bild_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    selections: tuple[Selection, Selection],
    *,
    temperature: float,
    kl: str,
) -> LossRows:
    """Both branches from given selections (teacher-led, student-led): the per-row loss is their sum."""
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "logits differ in shape; slice both to the shared vocabulary first"
        )
    teacher_led, student_led = _BiLDBranches.apply(
        student_logits, teacher_logits.detach(), selections, PairOptions(temperature, kl)
    )
    return LossRows(teacher_led + student_led, k_teacher=selections[0].k, k_student=selections[1].k)
