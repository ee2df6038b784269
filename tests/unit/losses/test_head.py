"""The loss head: fused (gradients computed chunk by chunk in forward) against the plain autograd graph,
in float64, for every registered loss, with and without the switch pathway, with terms switched off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from switchkd.losses import LOSSES, DistillLoss, auto_chunk_rows, cross_entropy_rows, loss_head
from switchkd.losses.head import fusable
from tests.unit.losses.chunks import distiller_chunk_loss

M, H_S, H_T, V_PAD, V = 37, 12, 20, 70, 64  # the heads have padding rows past the vocabulary, as Qwen's


def _heads(bias: bool = False, tied: nn.Embedding | None = None):
    g = torch.Generator().manual_seed(1)
    student = nn.Linear(H_S, V_PAD, bias=bias).double()
    teacher = nn.Linear(H_T, V_PAD, bias=False).double()
    with torch.no_grad():
        student.weight.copy_(torch.randn(V_PAD, H_S, generator=g, dtype=torch.float64))
        teacher.weight.copy_(1.5 * torch.randn(V_PAD, H_T, generator=g, dtype=torch.float64))
        if bias:
            student.bias.copy_(torch.randn(V_PAD, generator=g, dtype=torch.float64))
    if tied is not None:
        student.weight = tied.weight
    teacher.requires_grad_(False)
    return student, teacher


def _hidden(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(M, H_S, generator=g, dtype=torch.float64).requires_grad_(True)
    h_t = torch.randn(M, H_T, generator=g, dtype=torch.float64)
    h_w = (h_t + 0.5 * torch.randn(M, H_T, generator=g, dtype=torch.float64)).requires_grad_(True)
    targets = torch.randint(0, V, (M,), generator=g)
    return h_s, h_t, h_w, targets


def _ce(targets):
    """The LM objective's chunk function: CE of the student's logits, summed."""
    return lambda logits, rows: {"ce": cross_entropy_rows(logits["student"], targets[rows], reduction="sum")}


def _run(fused, name, *, switch=True, weights=(1.0, 1.0, 1.0), chunk_rows=5, bias=False, tied=None):
    student, teacher = _heads(bias, tied)
    h_s, h_t, h_w, targets = _hidden()
    ce_w, align_w, vsd_w = weights
    with_student = ce_w > 0 or align_w > 0
    pathways = {"teacher": (h_t, teacher)}
    if with_student:
        pathways["student"] = (h_s, student)
    if switch:
        pathways["switch"] = (h_w, teacher)
    fn = distiller_chunk_loss(
        DistillLoss(name, temperature=2.0, k=5), targets, student=with_student, switch=switch, align=align_w > 0
    )
    total, sums = loss_head(
        pathways, fn, {"ce": ce_w, "align": align_w, "vsd": vsd_w}, vocab=V, chunk_rows=chunk_rows, fused=fused
    )
    (3.0 * total).backward()  # an outer scale, as the trainer's 1 / num_items x processes
    grads = {"h_s": h_s.grad, "h_w": h_w.grad, "w_s": student.weight.grad, "b_s": student.bias.grad if bias else None}
    return total.detach(), {k: v.detach() for k, v in sums.items()}, grads


@pytest.fixture(params=["one block", "blocks"])
def vocabulary_blocks(request, monkeypatch):
    """The fused head's products over the whole vocabulary at once, or over blocks of it: 11 rows of
    the student's head and 7 of the teacher's here, the last block of each short."""
    if request.param == "blocks":
        from switchkd.losses import head

        monkeypatch.setitem(head.BLOCK_ELEMENTS, "cpu", 7 * H_T)
        assert (head.block_rows(H_S, "cpu"), head.block_rows(H_T, "cpu")) == (11, 7)
    return request.param


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("switch", [True, False])
def test_fused_equals_plain_values_and_every_gradient(name, switch, vocabulary_blocks):
    plain_total, plain_sums, plain_grads = _run(False, name, switch=switch, chunk_rows=None)
    total, sums, grads = _run(True, name, switch=switch, chunk_rows=5)  # 8 chunks, the last short
    assert total.item() == pytest.approx(plain_total.item(), rel=1e-12)
    assert sums.keys() == plain_sums.keys()
    for key, value in plain_sums.items():
        assert sums[key].dtype == value.dtype, key
        torch.testing.assert_close(sums[key], value, rtol=1e-12, atol=0)
    for key, g in plain_grads.items():
        if g is None:
            assert grads[key] is None, key
            continue
        assert grads[key] is not None and g.abs().sum() > 0, key
        torch.testing.assert_close(grads[key], g, rtol=1e-10, atol=1e-13)
    if switch:  # the switch pathway's gradient exists and is not the student's
        assert not torch.allclose(grads["h_w"], torch.zeros_like(grads["h_w"]))
    else:
        assert grads["h_w"] is None


@pytest.mark.parametrize("weights", [(1.0, 0.0, 1.0), (0.0, 0.0, 2.0), (0.5, 1.5, 0.0), (1.0, 0.0, 0.0)])
def test_terms_weighted_or_off_match_the_plain_graph(weights, vocabulary_blocks):
    plain_total, _, plain_grads = _run(False, "dbild_rkl", weights=weights, switch=weights[2] > 0)
    total, _, grads = _run(True, "dbild_rkl", weights=weights, switch=weights[2] > 0)
    assert total.item() == pytest.approx(plain_total.item(), rel=1e-12)
    for key, g in plain_grads.items():
        if g is not None:
            torch.testing.assert_close(grads[key], g, rtol=1e-10, atol=1e-13)
    if weights[0] == weights[1] == 0:
        assert grads["h_s"] is None and grads["w_s"] is None  # the student's head never ran


def test_the_padding_rows_of_the_head_get_exactly_zero_gradient_and_a_bias_its_own(vocabulary_blocks):
    total, _, grads = _run(True, "dbild_rkl", bias=True)
    plain_total, _, plain = _run(False, "dbild_rkl", bias=True)
    assert torch.all(grads["w_s"][V:] == 0) and torch.all(grads["b_s"][V:] == 0)
    assert total.item() == pytest.approx(plain_total.item(), rel=1e-12)
    for key, g in plain.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-10, atol=1e-13)


def test_a_head_tied_to_the_embeddings_gets_both_gradients(vocabulary_blocks):
    """Qwen2.5 <= 3B ties the LM head to the input embeddings: the head's gradient adds to the embedding's."""
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        embedding = nn.Embedding(V_PAD, H_S).double()
        student, teacher = _heads(tied=embedding)
        h_s, h_t, _, targets = _hidden()
        ids = torch.randint(0, V, (M,), generator=torch.Generator().manual_seed(3))
        hidden = h_s.detach() + embedding(ids)  # the embedding feeds the hidden states too
        fn = distiller_chunk_loss(DistillLoss("dbild_rkl"), targets, student=True, switch=False, align=True)
        total, _ = loss_head(
            {"student": (hidden, student), "teacher": (h_t, teacher)},
            fn,
            {"ce": 1.0, "align": 1.0},
            vocab=V,
            chunk_rows=4,
            fused=fused,
        )
        total.backward()
        results.append(embedding.weight.grad)
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-13)


def test_cross_entropy_through_the_fused_head_is_the_hand_written_one():
    student, _ = _heads()
    h_s, _, _, targets = _hidden()
    total, sums = loss_head(
        {"student": (h_s, student)},
        _ce(targets),
        {"ce": 1.0},
        vocab=V,
        chunk_rows=6,
    )
    logits = h_s @ student.weight[:V].T + 0.0  # no bias
    manual = -(logits.log_softmax(-1).gather(1, targets[:, None])).sum()
    assert total.item() == pytest.approx(manual.item(), rel=1e-12)
    total.backward()
    expected = (F.softmax(logits, -1) - F.one_hot(targets, V)) @ student.weight[:V]
    torch.testing.assert_close(h_s.grad, expected.detach(), rtol=1e-10, atol=1e-13)


def test_no_rows_and_no_grad_and_a_second_backward():
    student, _ = _heads()
    ce = lambda logits, rows: {"ce": logits["student"].sum() * 0 + logits["student"].logsumexp(-1).sum()}  # noqa: E731
    empty = torch.zeros(0, H_S, dtype=torch.float64, requires_grad=True)
    total, _ = loss_head({"student": (empty, student)}, ce, {"ce": 1.0}, vocab=V, chunk_rows=4)
    total.backward()  # zero rows: a zero loss that still joins the backward pass
    assert total.item() == 0.0 and torch.all(student.weight.grad == 0)
    h = torch.randn(8, H_S, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # evaluation: values only, no gradient work, no graph
        value, _ = loss_head({"student": (h, student)}, ce, {"ce": 1.0}, vocab=V, chunk_rows=3)
    assert not value.requires_grad
    total, _ = loss_head({"student": (h, student)}, ce, {"ce": 1.0}, vocab=V, chunk_rows=3)
    assert value.item() == pytest.approx(total.item(), rel=1e-12)
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        total.backward()


def test_a_half_precision_weight_that_trains_gets_its_gradient_a_vocabulary_block_at_a_time(monkeypatch):
    """bf16 head weights with no float32 master: each block's weight gradient is multiplied in float32 and
    added in bf16 (blocks of 3 rows here, the last one short); the padding rows get exactly zero."""
    from switchkd.losses import head

    monkeypatch.setitem(head.BLOCK_ELEMENTS, "cpu", 3 * H_S)
    assert head.block_rows(H_S, "cpu") == 3 and V % 3 != 0
    torch.manual_seed(0)
    student = nn.Linear(H_S, V_PAD, bias=False).bfloat16()
    h = torch.randn(M, H_S).bfloat16().requires_grad_(True)
    targets = torch.randint(0, V, (M,))
    total, _ = loss_head({"student": (h, student)}, _ce(targets), {"ce": 1.0}, vocab=V, chunk_rows=8)
    total.backward()
    w64 = student.weight.detach()[:V].double().requires_grad_(True)
    want = torch.autograd.grad(F.cross_entropy(h.detach().double() @ w64.T, targets, reduction="sum"), [w64])[0]
    got = student.weight.grad
    assert got.dtype == torch.bfloat16 and bool((got[V:] == 0).all())
    assert _relative(got[:V], want) < 0.01


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("block_rows", [None, 3])
def test_bfloat16_autocast_computes_like_the_plain_head(block_rows, monkeypatch):
    """Under autocast both heads multiply the bf16-rounded operands into float32 logits (bf16 logits
    lose the top-k differences DBiLD learns from), compute the loss from them in float32, and keep
    float32 gradients for float32 weights. Checked against float64 math on the same bf16-rounded
    operands: the loss to 1e-6 (logits rounded to bf16, or a loss computed in bf16, are ~1e-3 off in
    general), each gradient to 1 %."""
    from switchkd.losses import head

    if block_rows is not None:
        monkeypatch.setitem(head.BLOCK_ELEMENTS, "cpu", block_rows * H_S)
    torch.manual_seed(0)
    student = nn.Linear(H_S, V_PAD, bias=False)
    h = torch.randn(M, H_S)
    targets = torch.randint(0, V, (M,))
    out = []
    for fused in (False, True):
        student.zero_grad()
        x = h.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = loss_head(
                {"student": (x, student)},
                _ce(targets),
                {"ce": 1.0},
                vocab=V,
                chunk_rows=8,
                fused=fused,
            )
        total.backward()
        out.append((total.item(), x.grad, student.weight.grad))
    logits = h.bfloat16().double() @ student.weight.detach().bfloat16().double().T
    want_total = F.cross_entropy(logits[:, :V], targets, reduction="sum").item()
    x64 = h.bfloat16().double().requires_grad_(True)
    w64 = student.weight.detach().bfloat16().double().requires_grad_(True)
    want_x, want_w = torch.autograd.grad(F.cross_entropy((x64 @ w64.T)[:, :V], targets, reduction="sum"), [x64, w64])
    for total, grad_x, grad_w in out:
        assert total == pytest.approx(want_total, rel=1e-6)
        assert grad_w.dtype == torch.float32
        assert _relative(grad_x, want_x) < 0.01 and _relative(grad_w, want_w) < 0.01
    assert _relative(out[1][1], out[0][1].double()) < 0.005 and _relative(out[1][2], out[0][2].double()) < 0.005


def test_adapter_wrapped_heads_fall_back_to_the_plain_graph():
    student, _ = _heads()
    hooked = nn.Linear(H_S, V_PAD).double()
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert fusable(student) and not fusable(hooked) and not fusable(nn.Sequential(student))
    h = torch.randn(5, H_S, dtype=torch.float64, requires_grad=True)
    fn = lambda logits, rows: {"ce": logits["student"].logsumexp(-1).sum()}  # noqa: E731
    total, sums = loss_head({"student": (h, hooked)}, fn, {"ce": 1.0}, vocab=V, chunk_rows=2)
    assert sums["ce"].requires_grad  # the plain graph: every sum differentiable
    expected = (hooked.weight @ h.T).T + hooked.bias
    assert total.item() == pytest.approx((2 * expected[:, :V]).logsumexp(-1).sum().item(), rel=1e-12)


def test_chunk_rows_per_device():
    assert auto_chunk_rows(151_936, "cpu") == 208
    assert auto_chunk_rows(151_936, "cuda") == 880
    assert auto_chunk_rows(10, "cpu") % 16 == 0 and auto_chunk_rows(10**9, "cpu") == 16
