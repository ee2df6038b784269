"""The plain language-modelling objective (pt and sft stages): CE at supervised positions."""

from __future__ import annotations

import torch
from torch import nn

from switchkd.losses import cross_entropy_rows, per_token, row_chunks, supervised_positions


class LanguageModelingObjective(nn.Module):
    """CE of the student's next-token logits, computed one chunk of supervised rows at a time
    (``chunk_rows``; all at once when None) and normalised like the distiller's terms."""

    def __init__(self, student, chunk_rows: int | None = None):
        super().__init__()
        self.student = student
        self.chunk_rows = chunk_rows

    def forward(self, batch: dict, num_items_in_batch: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        positions, targets = supervised_positions(batch["labels"])
        hidden = self.student(
            batch["input_ids"], batch["attention_mask"], pixel_values=batch.get("pixel_values"), logits_at=None
        ).last_hidden_state[positions]  # (M, D)
        total = sum(
            cross_entropy_rows(self.student.token_logits(hidden[rows]), targets[rows], reduction="sum")
            for rows in row_chunks(targets.numel(), self.chunk_rows)
        )
        ce = per_token(total, targets.numel(), num_items_in_batch)
        return {"ce": ce, "total": ce}
