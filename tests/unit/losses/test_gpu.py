"""The losses on a CUDA device: the same selections and values as the CPU reference, and no host
synchronisation beyond the one per call that sizes the top-k. Run with ``pytest -m gpu``."""

from __future__ import annotations

import warnings

import pytest
import torch
from benchmarks.bench_losses import realistic_logits  # the LLM-like rows the loss benchmark times

from switchkd.losses import DistillLoss, cross_entropy_rows, knee_select, loss_head, sort_select
from switchkd.losses.head import auto_chunk_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

V = 151_936


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_knee_equals_the_cpu_sort_knee(dtype):
    _, teacher = realistic_logits(48, V)
    teacher = teacher.to(dtype)
    ref = sort_select(teacher)  # CPU reference, same values
    for method in ("fast", "sort"):
        got = knee_select(teacher.cuda(), method=method)
        assert torch.equal(got.k.cpu(), ref.k), method
        assert torch.equal(got.index.cpu(), ref.index), method


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["dbild_rkl", "dbild_fkl", "bild_rkl"])
def test_cuda_losses_and_gradients_equal_cpu_float64(dtype, name):
    student, teacher = realistic_logits(32, V, seed=1)
    student, teacher = student.to(dtype), teacher.to(dtype)
    loss = DistillLoss(name)
    ref_s = student.double().requires_grad_(True)
    ref = loss.rows(ref_s, teacher.double())  # CPU float64 on the same (rounded) values
    ref.loss.sum().backward()
    s = student.cuda().requires_grad_(True)
    got = loss.rows(s, teacher.cuda())
    got.loss.sum().backward()
    assert torch.equal(got.k_teacher.cpu(), ref.k_teacher) and torch.equal(got.k_student.cpu(), ref.k_student)
    torch.testing.assert_close(got.loss.double().cpu(), ref.loss.detach(), rtol=1e-5, atol=1e-6)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(s.grad.double().cpu(), ref_s.grad, rtol=tol, atol=tol * 1e-2)


def test_the_fused_head_synchronises_once_per_chunk_at_most_twice():
    """The whole DBiLD loss head on CUDA: host synchronisations are counted with torch's sync debug mode
    (the knee's top-k width, teacher-led and student-led, per chunk), not one per 16 rows."""
    rows = 3 * auto_chunk_rows(V, "cuda") // 2  # two chunks
    g = torch.Generator(device="cuda").manual_seed(0)
    head_s = torch.nn.Linear(896, V, bias=False, device="cuda")
    head_t = torch.nn.Linear(2048, V, bias=False, device="cuda").requires_grad_(False)
    h_s = torch.randn(rows, 896, device="cuda", generator=g).requires_grad_(True)
    h_t = torch.randn(rows, 2048, device="cuda", generator=g)
    targets = torch.randint(0, V, (rows,), device="cuda", generator=g)
    loss = DistillLoss("dbild_rkl")

    def chunk_loss(logits, sl):
        t = logits["teacher"].detach()
        sel = loss.select(t)
        out = {"ce": cross_entropy_rows(logits["student"], targets[sl], reduction="sum")}
        out["align"] = loss.rows(logits["student"], t, sel).loss.sum()
        return out

    def run(fused: bool):
        for p in (h_s, head_s.weight):
            p.grad = None
        total, _ = loss_head(
            {"student": (h_s, head_s), "teacher": (h_t, head_t)},
            chunk_loss,
            {"ce": 1.0, "align": 1.0},
            vocab=V,
            chunk_rows=None,
            fused=fused,
        )
        total.backward()
        return total.detach(), h_s.grad.clone(), head_s.weight.grad.clone()

    def syncs_of(fn) -> list[str]:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return out, [str(w.message) for w in seen if "synchroniz" in str(w.message).lower()]

    # the counter sees a sync when there is one (an upper bound alone passes when it counts nothing)
    _, control = syncs_of(lambda: h_t.sum().item())
    assert len(control) >= 1
    fused, syncs = syncs_of(lambda: run(True))
    assert len(syncs) <= 2 * 2, syncs
    plain = run(False)
    assert torch.isfinite(fused[0])
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-3)
    for got, want in zip(fused[1:], plain[1:]):
        assert ((got - want).norm() / want.norm()).item() < 1e-4
