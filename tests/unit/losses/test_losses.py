"""Loss values and gradients against the literal implementation, hand-computed examples, properties."""

import importlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from switchkd.losses import (
    LOSSES,
    DistillLoss,
    bild,
    dbild,
    forward_kl,
    knee_k,
    reverse_kl,
    sort_select,
    supervised_positions,
)
from tests.unit.losses.literal import kl, literal_bild, literal_knee, literal_order, pair_softmax
from tests.unit.losses.pair_kl import pair_kl


def varied_rows(n_rows: int = 12, vocab: int = 300, seed: int = 0) -> torch.Tensor:
    """Rows of many shapes, so knees land in many places."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_rows):
        kind = i % 6
        if kind == 0:  # bell-shaped
            r = torch.randn(vocab, generator=g, dtype=torch.float64) * (1 + i)
        elif kind == 1:  # heavy-tailed
            r = torch.distributions.StudentT(1.5).sample((vocab,)).double().clamp(-40, 40)
        elif kind == 2:  # a few dominant tokens
            r = torch.randn(vocab, generator=g, dtype=torch.float64)
            r[torch.randperm(vocab, generator=g)[:3]] += 12
        elif kind == 3:  # convex, decaying
            r = 20 * torch.exp(-torch.arange(vocab, dtype=torch.float64) / (5 + 7 * i))
            r = r[torch.randperm(vocab, generator=g)] + 1e-3 * torch.randn(vocab, generator=g, dtype=torch.float64)
        elif kind == 4:  # uniform
            r = torch.rand(vocab, generator=g, dtype=torch.float64) * 10
        else:  # skewed: exponential tail upwards
            r = torch.empty(vocab, dtype=torch.float64).exponential_(1.0, generator=g) * 3
        rows.append(r)
    return torch.stack(rows)


# ---- the knee ---------------------------------------------------------------------------------------


def test_knee_of_convex_decreasing_curve_is_brute_force_and_above_one():
    vals = torch.exp(-torch.arange(1000, dtype=torch.float64) / 50.0)
    k = knee_k(vals[torch.randperm(1000)][None]).item()
    assert k > 1
    assert k == literal_knee(vals.tolist())
    # Check against the closed form of the continuous curve y = e^{-x N/50}: slope -1 at x* = ln(N/50)/(N/50).
    n = 1000
    x_star = math.log(n / 50 * 1 / (1 - math.exp(-n / 50))) / (n / 50)
    assert abs(k / n - x_star) < 0.01


def test_knee_matches_literal_on_varied_rows():
    rows = varied_rows(24, 400)
    got = knee_k(rows).tolist()
    want = [literal_knee(r.tolist()) for r in rows]
    assert got == want
    assert len(set(got)) > 8  # many different knees


def test_knee_edge_cases():
    constant = torch.full((1, 50), 3.0)
    assert knee_k(constant).item() == 2
    assert knee_k(constant, k_min=5).item() == 5
    dominant = torch.zeros(1, 100)
    dominant[0, 17] = 10.0
    assert knee_k(dominant).item() == literal_knee(dominant[0].tolist()) == 2
    rows = varied_rows(6, 300)
    assert (knee_k(rows, k_max=7) <= 7).all()
    ties = torch.tensor([[5.0, 1.0, 1.0, 1.0, 0.0, 0.0, 3.0, 3.0]])
    assert knee_k(ties).item() == literal_knee(ties[0].tolist())
    with pytest.raises(ValueError, match="k_min must be >= 2"):
        knee_k(rows, k_min=1)


def test_led_order_breaks_ties_by_index():
    row = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 1.0]])
    sel = sort_select(row, k_min=6)
    assert sel.index[0].tolist() == literal_order(row[0].tolist()) == [1, 2, 4, 0, 5, 3]


# ---- the O(k) pair term -----------------------------------------------------------------------------


def test_pair_kl_hand_computed():
    # a = (2, 1, 0), b = (0, 1, 0), tau = 1. Pairs (1,2), (1,3), (2,3):
    # differences of a: 1, 2, 1  -> P = (e, e^2, e) / (2e + e^2)
    # differences of b: -1, 0, 1 -> Q = (e^-1, 1, e) / (e^-1 + 1 + e)
    e = math.e
    p = [e / (2 * e + e * e), e * e / (2 * e + e * e), e / (2 * e + e * e)]
    zq = 1 / e + 1 + e
    q = [(1 / e) / zq, 1 / zq, e / zq]
    want = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = pair_kl(
        torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.bool),
        1.0,
    )
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_pair_kl_padding_equals_unpadded():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 9, generator=g, dtype=torch.float64), torch.randn(2, 9, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    padded = pair_kl(a, b, valid, 2.0)
    short = pair_kl(a[1:, :5], b[1:, :5], torch.ones(1, 5, dtype=torch.bool), 2.0)
    assert padded[1].item() == pytest.approx(short.item(), rel=1e-12)
    a.requires_grad_(True)
    pair_kl(a, b, valid, 2.0).sum().backward()
    assert torch.isfinite(a.grad).all() and (a.grad[1, 5:] == 0).all()


def test_pair_kl_refuses_a_mask_that_is_not_a_prefix():
    a = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="prefix"):
        pair_kl(a, a, torch.tensor([[True, False, True, True], [True, True, False, False]]), 1.0)


def test_pair_kl_float32_far_spread_falls_back_to_float64():
    """An unsorted side spanning more than float32's exponent range still gives the right value."""
    a = torch.tensor([[-200.0, -150.0, 0.0, 50.0, 120.0]], dtype=torch.float64)  # reversed order: tiny Z
    b = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    valid = torch.ones(1, 5, dtype=torch.bool)
    want = kl(pair_softmax(a[0], 1.0), pair_softmax(b[0], 1.0))
    a32 = a.float().requires_grad_(True)
    got = pair_kl(a32, b.float(), valid, 1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.sum().backward()
    assert torch.isfinite(a32.grad).all()


# ---- DBiLD and BiLD against the literal implementation ---------------------------------------------


@pytest.mark.parametrize("kl_dir", ["reverse", "forward"])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_dbild_values_and_gradients_equal_literal(kl_dir, tau):
    t = varied_rows(12, 300, seed=2)
    s0 = t * 0.7 + torch.randn_like(t) * 2.0  # correlated, different knees
    s_fast = s0.clone().requires_grad_(True)
    s_lit = s0.clone().requires_grad_(True)
    fast = dbild(s_fast, t, temperature=tau, kl=kl_dir)
    lit = literal_bild(s_lit, t, tau, kl_dir)
    assert fast.item() == pytest.approx(lit.item(), rel=1e-9)
    fast.backward()
    lit.backward()
    torch.testing.assert_close(s_fast.grad, s_lit.grad, rtol=1e-9, atol=1e-13)
    assert s_fast.grad.abs().sum() > 0


@pytest.mark.parametrize("kl_dir", ["reverse", "forward"])
def test_dbild_row_blocks_do_not_change_results(monkeypatch, kl_dir):
    """The fused loss works block by block over rows; one-row blocks give the same values and gradients."""
    bild_module = importlib.import_module("switchkd.losses.bild")  # the package's `bild` is the function

    t = varied_rows(12, 300, seed=5)
    s0 = t * 0.5 + torch.randn_like(t)
    results = []
    for blocks in (
        bild_module.row_blocks,
        lambda n_rows, width, device="cpu": [slice(i, i + 1) for i in range(n_rows)],
    ):
        monkeypatch.setattr(bild_module, "row_blocks", blocks)
        s = s0.clone().requires_grad_(True)
        loss = dbild(s, t, kl=kl_dir, reduction="none")
        loss.sum().backward()
        results.append((loss.detach(), s.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kl_dir", ["reverse", "forward"])
def test_bild_values_and_gradients_equal_literal(kl_dir):
    t = varied_rows(6, 200, seed=3)
    s0 = torch.randn_like(t) * 3
    s_fast, s_lit = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    fast = bild(s_fast, t, k=8, temperature=3.0, kl=kl_dir)
    lit = literal_bild(s_lit, t, 3.0, kl_dir, k=8)
    assert fast.item() == pytest.approx(lit.item(), rel=1e-9)
    fast.backward()
    lit.backward()
    torch.testing.assert_close(s_fast.grad, s_lit.grad, rtol=1e-9, atol=1e-13)


def test_dbild_with_k_max_equals_literal():
    t = varied_rows(6, 300, seed=4)
    s = t.flip(-1) + 0.1
    assert dbild(s, t, k_max=5, k_min=3).item() == pytest.approx(
        literal_bild(s, t, 3.0, "reverse", k_min=3, k_max=5).item(), rel=1e-9
    )


def test_dbild_four_tokens_by_hand():
    t = torch.tensor([[3.0, 1.0, 0.0, -2.0]], dtype=torch.float64)
    s = torch.tensor([[1.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    # Knees by hand. Teacher sorted (3, 1, 0, -2), span 5: d = -.25, -.1, -.15, 0 -> k_t = 4.
    # Student sorted (2, 1, 0, 0) = indices (1, 0, 2, 3), span 2: d = -.25, 0, .25, 0 -> k_s = 3.
    assert knee_k(t).item() == 4 and knee_k(s).item() == 3
    # Teacher-led: order (0, 1, 2, 3); pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    t_led = [2, 3, 5, 1, 3, 2]
    s_cor = [-1, 1, 1, 2, 2, 0]
    # Student-led: order (1, 0, 2); pairs (1,0) (1,2) (0,2).
    s_led = [1, 2, 1]
    t_cor = [-2, 1, 3]

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    def kl_(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    rkl = kl_(softmax(s_cor), softmax(t_led)) + kl_(softmax(s_led), softmax(t_cor))
    fkl = kl_(softmax(t_led), softmax(s_cor)) + kl_(softmax(t_cor), softmax(s_led))
    assert dbild(s, t, temperature=1.0, kl="reverse").item() == pytest.approx(rkl, rel=1e-12)
    assert dbild(s, t, temperature=1.0, kl="forward").item() == pytest.approx(fkl, rel=1e-12)
    assert abs(rkl - fkl) > 1e-3  # the example tells the directions apart


def test_reverse_is_kl_of_student_to_teacher_on_pairs():
    """kl='reverse' is KL(student pairs || teacher pairs), on the teacher-led branch (k fixed)."""
    t = torch.tensor([[4.0, 2.0, 1.0, -1.0, -3.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 2.5, 1.0, 0.5, -1.0]], dtype=torch.float64)
    idx_t = [0, 1, 2]
    idx_s = [1, 2, 3]
    tl, sc = pair_softmax(t[0, idx_t], 2.0), pair_softmax(s[0, idx_t], 2.0)
    sl, tc = pair_softmax(s[0, idx_s], 2.0), pair_softmax(t[0, idx_s], 2.0)
    assert bild(s, t, k=3, temperature=2.0, kl="reverse").item() == pytest.approx(
        (kl(sc, tl) + kl(sl, tc)).item(), rel=1e-12
    )


@pytest.mark.parametrize("name", list(LOSSES))
def test_identical_inputs_give_zero(name):
    x = varied_rows(6, 200, seed=5)
    assert DistillLoss(name)(x, x).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_teacher_gets_no_gradient(name):
    t = varied_rows(4, 100, seed=6).requires_grad_(True)
    s = torch.randn(4, 100, dtype=torch.float64, requires_grad=True)
    DistillLoss(name)(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_full_vocabulary_kls_match_definitions():
    s, t = torch.randn(5, 50, dtype=torch.float64), torch.randn(5, 50, dtype=torch.float64)
    ps, pt = F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1)
    want_f = F.kl_div(ps, pt, log_target=True, reduction="batchmean")
    want_r = F.kl_div(pt, ps, log_target=True, reduction="batchmean")
    assert forward_kl(s, t, temperature=2.0).item() == pytest.approx(want_f.item(), rel=1e-12)
    assert reverse_kl(s, t, temperature=2.0).item() == pytest.approx(want_r.item(), rel=1e-12)


def test_half_precision_inputs_compute_in_float32():
    t = varied_rows(4, 300, seed=7).float()
    s = t + torch.randn_like(t)
    # the literal implementation, in float64 on the bf16 values: float32 arithmetic lands within 1e-5,
    # a loss computed (or only finished) in bf16 about 1e-3 away
    want = literal_bild(s.bfloat16().double(), t.bfloat16().double(), 3.0, "reverse").item()
    got = dbild(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="dbild_rkl"):
        DistillLoss("dbild")


# ---- the causal shift ---------------------------------------------------------------------------


def test_supervised_positions_shift():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, 9]])
    pos, targets = supervised_positions(labels)
    assert pos.tolist() == [[False, True, True, False, False], [True, False, False, True, False]]
    assert targets.tolist() == [7, 8, 5, 9]


# ---- a large knee in little memory --------------------------------------------------------------------


def test_row_with_twenty_thousand_knee_runs_in_little_memory():
    """k ≈ 20,000 on a 151,936 vocabulary: the literal pair matrix alone would be 1.6 GB (float64)."""
    script = textwrap.dedent("""
        import resource, torch
        from switchkd.losses import dbild, knee_k
        V, K = 151936, 20000
        x = torch.cat([torch.linspace(1.0, 0.2, K), torch.linspace(0.2, 0.0, V - K)]).double() * 20
        t = (x + 1e-6 * torch.randn(V, dtype=torch.float64))[None]
        s = (t + 0.05 * torch.randn_like(t)).requires_grad_(True)
        print("k", knee_k(t).item())
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dbild(s, t).backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("mb", (after - before) / 1024)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout.split()
    k, mb = int(out[1]), float(out[3])
    assert 19_000 <= k <= 21_000
    assert mb < 200, f"peak memory grew by {mb:.0f} MB"
