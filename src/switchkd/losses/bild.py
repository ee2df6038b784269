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

from switchkd.losses.kl import reduce_rows, upcast
from switchkd.losses.knee import Selection, fixed_select, knee_select
from switchkd.losses.pairs import pair_kl

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


def _compare(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, temperature: float,
             kl: str) -> torch.Tensor:
    """Pair KL between two gathered sides in one led order."""
    if kl == "reverse":
        return pair_kl(student, teacher, valid, temperature)
    return pair_kl(teacher, student, valid, temperature)


def bild_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_sel: Selection,
               student_sel: Selection, *, temperature: float, kl: str) -> BiLDTerms:
    """Both branches from given selections (the teacher's may be shared between loss terms)."""
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits differ in shape; slice both to the shared vocabulary first")
    s = upcast(student_logits)
    t = upcast(teacher_logits.detach()).to(s.dtype)
    # One gather for both branches: its backward then fills a single (N, V) gradient buffer.
    width_t = teacher_sel.index.shape[1]
    s_vals = s.gather(1, torch.cat([teacher_sel.index, student_sel.index], dim=1))
    return BiLDTerms(
        teacher_led=_compare(s_vals[:, :width_t], t.gather(1, teacher_sel.index), teacher_sel.valid, temperature, kl),
        student_led=_compare(s_vals[:, width_t:], t.gather(1, student_sel.index), student_sel.valid, temperature, kl),
        k_teacher=teacher_sel.k,
        k_student=student_sel.k,
    )


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
