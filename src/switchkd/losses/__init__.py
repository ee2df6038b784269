"""Distillation losses: pure functions over logit rows (N, V), and one entry point by name.

Usage:

    from switchkd.losses import DistillLoss, dbild
    loss = dbild(student_rows, teacher_rows, temperature=3.0, kl="reverse")
    fn = DistillLoss("dbild_rkl", temperature=3.0)     # the paper's Table 4 as one config value
    rows = fn.rows(student_rows, teacher_rows)         # LossRows, the same type for every loss
"""

from switchkd.losses.bild import bild_rows
from switchkd.losses.head import auto_chunk_rows, loss_head
from switchkd.losses.kl import forward_kl, reverse_kl
from switchkd.losses.knee import Selection, fast_select, fixed_select, knee_k, knee_select, sort_select
from switchkd.losses.registry import LOSSES, DistillLoss, bild, dbild
from switchkd.losses.rows import LossRows, compute_dtype, reduce_rows, upcast
from switchkd.losses.sequence import IGNORE_INDEX, cross_entropy_rows, per_token, row_chunks, supervised_positions

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "DistillLoss",
    "LossRows",
    "Selection",
    "auto_chunk_rows",
    "bild",
    "bild_rows",
    "compute_dtype",
    "cross_entropy_rows",
    "dbild",
    "fast_select",
    "fixed_select",
    "forward_kl",
    "knee_k",
    "knee_select",
    "loss_head",
    "per_token",
    "reduce_rows",
    "reverse_kl",
    "row_chunks",
    "sort_select",
    "supervised_positions",
    "upcast",
]
