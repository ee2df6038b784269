"""The one entry point for every loss: ``DistillLoss``, a registered loss by name with its options.

    loss = DistillLoss("dbild_rkl", temperature=3.0)   # also the `distill.loss` section of a run config
    rows = loss.rows(student_rows, teacher_rows)        # LossRows: per-row loss and k, whatever the loss
    value = loss(student_rows, teacher_rows)            # the mean over rows

The teacher's selection (knee or top-k) depends only on the teacher's logits, so the Align and VSD
terms of one step compute it once (``select``) and pass it to both ``rows`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from switchkd.errors import ConfigError
from switchkd.losses.bild import KL_DIRECTIONS, bild_rows
from switchkd.losses.kl import forward_kl, reverse_kl
from switchkd.losses.knee import Selection, fixed_select, knee_select
from switchkd.losses.rows import LossRows, reduce_rows

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
    """A distillation loss over logit rows (N, V), chosen by name (paper Table 4)."""

    name: str = "dbild_rkl"
    """fkl, rkl (full vocabulary), bild_fkl, bild_rkl (fixed k), dbild_fkl, dbild_rkl (knee k)."""
    temperature: float = 3.0
    """τ of the pair softmax (and of the KL losses)."""
    k: int = 8
    """Fixed k of the BiLD losses."""
    k_min: int = 2
    """Lower clamp of the knee k."""
    k_max: int | None = None
    """Upper clamp of the knee k (null: the paper's uncapped knee; a cap is an approximation)."""
    knee: Literal["fast", "sort"] = "fast"
    """Knee search: fast (exact, histogram-pruned) or sort (the reference); identical results."""

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ConfigError(f"unknown loss {self.name!r}; valid: {', '.join(LOSSES)}", key="name")
        if self.temperature <= 0:
            raise ConfigError("must be > 0", key="temperature")
        if self.k < 2:
            raise ConfigError("must be >= 2: a single logit has no pair", key="k")
        if self.k_min < 2:
            raise ConfigError("must be >= 2: a single logit has no pair", key="k_min")
        if self.k_max is not None and self.k_max < self.k_min:
            raise ConfigError(f"must be >= k_min ({self.k_min})", key="k_max")
        if self.knee not in ("fast", "sort"):
            raise ConfigError(f"must be fast or sort, got {self.knee!r}", key="knee")

    @property
    def family(self) -> str:
        return LOSSES[self.name][0]

    @property
    def kl(self) -> str:
        return LOSSES[self.name][1]

    def select(self, rows: torch.Tensor) -> Selection | None:
        """One side's led top-k: the knee (dbild), the fixed k (bild), nothing (full-vocabulary KL)."""
        if self.family == "dbild":
            return knee_select(rows.detach(), self.k_min, self.k_max, self.knee)
        if self.family == "bild":
            return fixed_select(rows.detach(), self.k)
        return None

    def rows(
        self, student_rows: torch.Tensor, teacher_rows: torch.Tensor, teacher_sel: Selection | None = None
    ) -> LossRows:
        """The loss of each row; ``teacher_sel`` reuses a teacher selection from ``select``."""
        if self.family == "kl":
            fn = forward_kl if self.kl == "forward" else reverse_kl
            per_row = fn(student_rows, teacher_rows, temperature=self.temperature, reduction="none")
            vocab = torch.full(per_row.shape, student_rows.shape[-1], dtype=torch.long, device=per_row.device)
            return LossRows(per_row, k_teacher=vocab, k_student=vocab)
        if teacher_sel is None:
            teacher_sel = self.select(teacher_rows)
        selections = (teacher_sel, self.select(student_rows))
        return bild_rows(student_rows, teacher_rows, selections, temperature=self.temperature, kl=self.kl)

    def __call__(
        self, student_rows: torch.Tensor, teacher_rows: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return reduce_rows(self.rows(student_rows, teacher_rows).loss, reduction)


def _named(family: str, kl: str) -> str:
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")
    return f"{family}_{'rkl' if kl == 'reverse' else 'fkl'}"


def dbild(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 3.0,
    kl: str = "reverse",
    k_min: int = 2,
    k_max: int | None = None,
    reduction: str = "mean",
    knee: str = "fast",
) -> torch.Tensor:
    """DBiLD: BiLD with k per row at the knee of each led side's sorted logits (paper Eqs. 7-15).

    ``knee``: "fast" (exact, histogram-pruned) or "sort" (the reference full sort); same results.
    """
    loss = DistillLoss(_named("dbild", kl), temperature=temperature, k_min=k_min, k_max=k_max, knee=knee)
    return loss(student_logits, teacher_logits, reduction=reduction)


def bild(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    k: int = 8,
    temperature: float = 3.0,
    kl: str = "reverse",
    reduction: str = "mean",
) -> torch.Tensor:
    """BiLD (Li et al. 2024) with a fixed top-k on both branches."""
    loss = DistillLoss(_named("bild", kl), temperature=temperature, k=k)
    return loss(student_logits, teacher_logits, reduction=reduction)
