"""The loss head under bf16 autocast against float64 math on the same bf16-rounded operands.

DBiLD learns from differences between the top-k logits; logits rounded to bf16 (8 bits of mantissa)
lose them, and with them the Align and VSD gradients (8.5 % and 6.6 % off at these sizes when the head
returned bf16 logits, while CE was 0.24 % off). The head multiplies the bf16 operands into float32
logits; each term's gradient must be within 1 % of float64 math, fused and plain.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from switchkd.losses import DistillLoss, cross_entropy_rows, loss_head

TERMS = {"ce": ("student", "h_s"), "align": ("student", "h_s"), "vsd": ("switch", "h_w")}


def _problem(vocab: int, rows: int = 128, width: int = 64, teacher_width: int = 96):
    g = torch.Generator().manual_seed(0)
    student = nn.Linear(width, vocab, bias=False)  # float32 master weights, as a trained student has
    teacher = nn.Linear(teacher_width, vocab, bias=False).bfloat16().requires_grad_(False)  # teacher_dtype=compute
    with torch.no_grad():
        student.weight.copy_(torch.randn(vocab, width, generator=g) / width**0.5)
        teacher.weight.copy_((1.5 * torch.randn(vocab, teacher_width, generator=g) / teacher_width**0.5).bfloat16())
    h_t = torch.randn(rows, teacher_width, generator=g)
    hidden = {
        "h_s": torch.randn(rows, width, generator=g),
        "h_t": h_t,
        "h_w": h_t + 0.3 * torch.randn(rows, teacher_width, generator=g),
    }
    return student, teacher, hidden, torch.randint(0, vocab, (rows,), generator=g)


def _chunk_loss(term: str, targets: torch.Tensor):
    loss = DistillLoss("dbild_rkl")

    def fn(logits, rows):
        if term == "ce":
            return {"ce": cross_entropy_rows(logits["student"], targets[rows], reduction="sum")}
        t = logits["teacher"].detach()
        side = logits["student" if term == "align" else "switch"]
        return {term: loss.rows(side, t, loss.select(t)).loss.sum()}

    return fn


def _gradient(term, student, teacher, hidden, targets, *, fused: bool, vocab: int) -> torch.Tensor:
    """d term / d (the hidden states it trains) under bf16 autocast, through the loss head."""
    pathway, key = TERMS[term]
    x = hidden[key].clone().requires_grad_(True)
    heads = {"student": student, "switch": teacher}
    pathways = {"teacher": (hidden["h_t"], teacher), pathway: (x, heads[pathway])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss_head(pathways, _chunk_loss(term, targets), {term: 1.0}, vocab=vocab, chunk_rows=48, fused=fused)
    total.backward()
    return x.grad.double()


def _reference(term, student, teacher, hidden, targets, vocab: int) -> torch.Tensor:
    """The same term in float64 from the bf16-rounded hidden states and weights."""
    pathway, key = TERMS[term]
    x = hidden[key].bfloat16().double().requires_grad_(True)
    weights = {"student": student.weight.detach(), "switch": teacher.weight, "teacher": teacher.weight}
    w = {name: weights[name].bfloat16().double() for name in ("teacher", pathway)}
    logits = {"teacher": hidden["h_t"].bfloat16().double() @ w["teacher"].T, pathway: x @ w[pathway].T}
    total = _chunk_loss(term, targets)(logits, slice(None))[term]
    (grad,) = torch.autograd.grad(total, [x])
    return grad


@pytest.mark.parametrize("vocab", [8_000, pytest.param(151_936, marks=pytest.mark.slow)])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("term", ["ce", "align", "vsd"])
def test_each_term_within_one_percent_of_float64_on_bf16_operands(term, fused, vocab):
    student, teacher, hidden, targets = _problem(vocab)
    got = _gradient(term, student, teacher, hidden, targets, fused=fused, vocab=vocab)
    want = _reference(term, student, teacher, hidden, targets, vocab)
    error = ((got - want).norm() / want.norm()).item()
    assert error < 0.01, f"{term}: {100 * error:.2f} % off float64 on the same bf16 operands"


def test_reduced_precision_products_only_inside_the_head_and_only_for_operands_they_hold_exactly():
    """TF32 on CUDA for bf16 and fp16 operands; oneDNN's bf16 math on the CPU for bf16 operands only
    (an fp16 value has more mantissa than bf16 holds); restored on the way out, also after an error."""
    from switchkd.losses.head import exact_products

    cuda, cpu = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    before = cuda.fp32_precision, cpu.fp32_precision
    for operand in (torch.bfloat16, torch.float16):
        with exact_products(operand, torch.device("cuda")):
            assert cuda.fp32_precision == "tf32" and cpu.fp32_precision == before[1]
    with exact_products(torch.bfloat16, torch.device("cpu")):
        assert cpu.fp32_precision == "bf16" and cuda.fp32_precision == before[0]
    with pytest.raises(ValueError), exact_products(torch.bfloat16, torch.device("cpu")):
        raise ValueError
    assert (cuda.fp32_precision, cpu.fp32_precision) == before
    for operand, device in (
        (torch.float32, "cuda"),
        (torch.float16, "cpu"),
        (torch.float32, "cpu"),
        (torch.float64, "cpu"),
    ):
        with exact_products(operand, torch.device(device)):
            assert (cuda.fp32_precision, cpu.fp32_precision) == before  # these operands would be rounded


def test_the_cpus_bf16_products_are_exact_for_bf16_valued_operands():
    """What ``exact_products`` relies on: a float32 product of bf16-valued operands in oneDNN's bf16 mode
    equals the float64 product to float32 accumulation (the inputs are not rounded further), and an
    operand that is not bf16-valued is rounded to bf16 on the way in (as the fused head's logit
    gradients are in its backward products)."""
    from switchkd.losses.head import exact_products

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 256, generator=g).bfloat16().float()
    b = torch.randn(256, 512, generator=g).bfloat16().float()
    exact = a.double() @ b.double()
    c = torch.randn(64, 256, generator=g)  # float32 values, not bf16 ones
    with exact_products(torch.bfloat16, torch.device("cpu")):
        ab, cb = a @ b, c @ b
    assert ab.dtype == torch.float32
    assert ((ab.double() - exact).abs() / exact.abs().clamp_min(1)).max() < 1e-5
    rounded, unrounded = c.bfloat16().double() @ b.double(), c.double() @ b.double()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else oneDNN multiplies in float32 (exact as well)
        assert (cb.double() - rounded).abs().max() < 1e-3 < (cb.double() - unrounded).abs().max()
