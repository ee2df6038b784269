"""The plain language-modelling objective (pt and sft stages): CE at supervised positions."""

from __future__ import annotations

import torch
from torch import nn

from switchkd.losses import cross_entropy_rows, supervised_positions


class LanguageModelingObjective(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, batch: dict, num_items_in_batch: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        positions, targets = supervised_positions(batch["labels"])
        denom = num_items_in_batch if num_items_in_batch is not None else max(int(targets.numel()), 1)
        rows = self.student(batch["input_ids"], batch["attention_mask"], pixel_values=batch.get("pixel_values"),
                            logits_at=positions).logits[:, : self.student.vocab_size]
        ce = cross_entropy_rows(rows, targets, reduction="sum") / denom
        return {"ce": ce, "total": ce}
