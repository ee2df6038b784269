"""``train.compile``: the fused head's per-chunk loss (CE + DBiLD Align + DBiLD VSD from the chunk's logits,
knee included) is one graph under ``torch.compile`` - no graph break - and gives what the eager head
gives, values and every gradient, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from switchkd.losses import DistillLoss, loss_head
from switchkd.losses.head import _chunk_program
from tests.unit.losses.chunks import distiller_chunk_loss

pytestmark = pytest.mark.slow  # compiling takes tens of seconds on the CPU

VOCAB, ROWS = 1500, 40


def _problem():
    g = torch.Generator().manual_seed(0)
    student = nn.Linear(24, VOCAB, bias=False).double()
    teacher = nn.Linear(32, VOCAB, bias=False).double().requires_grad_(False)
    with torch.no_grad():
        student.weight.copy_(torch.randn(VOCAB, 24, generator=g, dtype=torch.float64))
        teacher.weight.copy_(1.5 * torch.randn(VOCAB, 32, generator=g, dtype=torch.float64))
    h_t = torch.randn(ROWS, 32, generator=g, dtype=torch.float64)
    hidden = {"h_s": torch.randn(ROWS, 24, generator=g, dtype=torch.float64), "h_t": h_t}
    hidden["h_w"] = h_t + 0.3 * torch.randn(ROWS, 32, generator=g, dtype=torch.float64)
    return student, teacher, hidden, torch.randint(0, VOCAB, (ROWS,), generator=g)


def _chunk_loss(targets):
    return distiller_chunk_loss(DistillLoss("dbild_rkl"), targets)


WEIGHTS = {"ce": 1.0, "align": 1.0, "vsd": 0.5}


def _run(compiled: bool):
    student, teacher, hidden, targets = _problem()
    h_s, h_w = (hidden[k].clone().requires_grad_(True) for k in ("h_s", "h_w"))
    pathways = {"student": (h_s, student), "teacher": (hidden["h_t"], teacher), "switch": (h_w, teacher)}
    total, sums = loss_head(
        pathways, _chunk_loss(targets), WEIGHTS, vocab=VOCAB, chunk_rows=16, fused=True, compiled=compiled
    )
    total.backward()
    return total.detach(), sums, (h_s.grad, h_w.grad, student.weight.grad)


def test_the_chunk_is_one_graph():
    _, _, hidden, targets = _problem()
    logits = {
        "student": torch.randn(16, VOCAB, dtype=torch.float64, requires_grad=True),
        "teacher": hidden["h_t"][:16] @ torch.randn(32, VOCAB, dtype=torch.float64),
        "switch": torch.randn(16, VOCAB, dtype=torch.float64, requires_grad=True),
    }
    explained = torch._dynamo.explain(_chunk_program)(_chunk_loss(targets), WEIGHTS, logits, 0, 16)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_equals_eager_in_float64():
    want_total, want_sums, want_grads = _run(compiled=False)
    got_total, got_sums, got_grads = _run(compiled=True)  # 16 + 16 + 8 rows: the last chunk is shorter
    torch.testing.assert_close(got_total, want_total, rtol=1e-10, atol=0)
    for key in want_sums:
        torch.testing.assert_close(got_sums[key], want_sums[key], rtol=1e-10, atol=1e-12)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert want_sums["align"] > 0 and want_sums["vsd"] > 0
