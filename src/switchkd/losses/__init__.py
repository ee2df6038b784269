"""Distillation losses: pure functions over logit rows (N, V), and a registry by name.

    from switchkd.losses import dbild, get_loss
    loss = dbild(student_rows, teacher_rows, temperature=3.0, kl="reverse")
    fn = get_loss("dbild_rkl", temperature=3.0)      # the paper's Table 4 as one config value
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from switchkd.losses.bild import BiLDTerms, bild, bild_terms, dbild, dbild_terms
from switchkd.losses.kl import forward_kl, reduce_rows, reverse_kl
from switchkd.losses.knee import Selection, fast_select, fixed_select, knee_k, knee_select, sort_select
from switchkd.losses.pairs import pair_kl
from switchkd.losses.sequence import (IGNORE_INDEX, cross_entropy_rows, normaliser, sequence_loss,
                                      supervised_positions)

# name -> (family, KL direction)
LOSSES: dict[str, tuple[str, str]] = {
    "fkl": ("kl", "forward"),
    "rkl": ("kl", "reverse"),
    "bild_fkl": ("bild", "forward"),
    "bild_rkl": ("bild", "reverse"),
    "dbild_fkl": ("dbild", "forward"),
    "dbild_rkl": ("dbild", "reverse"),
}


@dataclass(frozen=True)
class DistillLoss:
    """A registered loss with its options bound. ``select_teacher`` once, then call per student.

    The teacher's selection (knee and top-k) depends only on the teacher's logits, so the Align and
    VSD terms of one step share it.
    """

    name: str
    temperature: float = 3.0
    k: int = 8
    k_min: int = 2
    k_max: int | None = None
    knee: str = "fast"

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}; valid: {', '.join(LOSSES)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")

    @property
    def family(self) -> str:
        return LOSSES[self.name][0]

    @property
    def kl(self) -> str:
        return LOSSES[self.name][1]

    def select_teacher(self, teacher_rows: torch.Tensor) -> Selection | None:
        if self.family == "dbild":
            return knee_select(teacher_rows.detach(), self.k_min, self.k_max, self.knee)
        if self.family == "bild":
            return fixed_select(teacher_rows.detach(), self.k)
        return None

    def terms(self, student_rows: torch.Tensor, teacher_rows: torch.Tensor,
              teacher_sel: Selection | None = None) -> BiLDTerms | torch.Tensor:
        """Per-row loss (N,) for KL losses; ``BiLDTerms`` for the pair losses."""
        if self.family == "kl":
            fn = forward_kl if self.kl == "forward" else reverse_kl
            return fn(student_rows, teacher_rows, temperature=self.temperature, reduction="none")
        if teacher_sel is None:
            teacher_sel = self.select_teacher(teacher_rows)
        if self.family == "dbild":
            student_sel = knee_select(student_rows.detach(), self.k_min, self.k_max, self.knee)
        else:
            student_sel = fixed_select(student_rows.detach(), self.k)
        return bild_terms(student_rows, teacher_rows, teacher_sel, student_sel,
                          temperature=self.temperature, kl=self.kl)

    def __call__(self, student_rows: torch.Tensor, teacher_rows: torch.Tensor, *, reduction: str = "mean",
                 teacher_sel: Selection | None = None) -> torch.Tensor:
        out = self.terms(student_rows, teacher_rows, teacher_sel)
        return reduce_rows(out if isinstance(out, torch.Tensor) else out.loss, reduction)


def get_loss(name: str, **options) -> DistillLoss:
    return DistillLoss(name, **options)


__all__ = [
    "IGNORE_INDEX", "LOSSES", "BiLDTerms", "DistillLoss", "Selection", "bild", "bild_terms", "cross_entropy_rows",
    "dbild", "dbild_terms", "fast_select", "fixed_select", "forward_kl", "get_loss", "knee_k", "knee_select",
    "normaliser", "pair_kl",
    "reduce_rows", "reverse_kl", "sequence_loss", "sort_select", "supervised_positions",
]
