"""The plain language-modelling objective (pt and sft stages): CE at supervised positions."""

from __future__ import annotations

import torch
from torch import nn

from switchkd.data.dataset import image_inputs
from switchkd.diagnostics import gradient_norm
from switchkd.losses import cross_entropy_rows, loss_head, per_token, supervised_positions


class LanguageModelingObjective(nn.Module):
    """CE of the student's next-token logits through the loss head (``losses/head.py``: one chunk of
    ``chunk_rows`` supervised rows at a time, fused by default), normalised like the distiller's terms."""

    terms = ("ce",)
    """The loss terms ``forward`` returns beside ``total`` (the trainer logs these)."""

    def __init__(self, student, chunk_rows: int | None = None, fused: bool = True, compiled: bool = False):
        super().__init__()
        self.student = student
        self.chunk_rows = chunk_rows
        self.fused = fused
        self.compiled = compiled

    def forward(self, batch: dict, num_items_in_batch: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        positions, targets = supervised_positions(batch["labels"])
        hidden = self.student(
            batch["input_ids"], batch["attention_mask"], **image_inputs(batch), logits_at=None
        ).last_hidden_state[positions]  # (M, D)
        total, _ = loss_head(
            {"student": (hidden, self.student.lm_head)},
            lambda logits, rows: {"ce": cross_entropy_rows(logits["student"], targets[rows], reduction="sum")},
            {"ce": 1.0},
            vocab=self.student.vocab_size,
            chunk_rows=self.chunk_rows,
            fused=self.fused,
            compiled=self.compiled,
        )
        ce = per_token(total, targets.numel(), num_items_in_batch)
        return {"ce": ce, "total": ce}

    def diagnostics(self, batch: dict) -> dict[str, float]:
        """The gradient norm that CE sends into the vision tower's trainable parameters (as the
        distiller's ``grad_vision_ce``); no parameter's ``.grad`` changes."""
        params = [p for p in self.student.vision_tower.parameters() if p.requires_grad]
        if batch.get("pixel_values") is None or not params:
            return {}
        return {"grad_vision_ce": gradient_norm(self(batch)["total"], params)}
