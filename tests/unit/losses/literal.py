"""A literal, independent implementation of the paper's losses, for tests only.

Everything is done the slow, obvious way: Python loops for the knee, Python sorting for the led
order, and the explicit list of k(k-1)/2 pairs with one softmax over it.
"""

from __future__ import annotations

import math

import torch


def literal_knee(row: list[float], k_min: int = 2, k_max: int | None = None) -> int:
    vals = sorted(row, reverse=True)
    n = len(vals)
    v_max, v_min = vals[0], vals[-1]
    if v_max == v_min:
        k = k_min
    else:
        best, k = -math.inf, None
        for i in range(1, n + 1):
            d = (1 - i / n) - (vals[i - 1] - v_min) / (v_max - v_min)
            if d > best:  # strict: the first maximum wins
                best, k = d, i
    k = max(k, k_min)
    k = min(k, n)
    return k if k_max is None else min(k, k_max)


def literal_order(row: list[float]) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def pair_softmax(vals: torch.Tensor, tau: float) -> torch.Tensor:
    k = vals.shape[0]
    diffs = torch.stack([vals[m] - vals[n] for m in range(k) for n in range(m + 1, k)])
    return torch.softmax(diffs / tau, dim=0)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def literal_branch(led: torch.Tensor, other: torch.Tensor, k: int, tau: float, kl_dir: str, student_leads: bool):
    idx = literal_order(led.detach().tolist())[:k]
    p_led, p_other = pair_softmax(led[idx], tau), pair_softmax(other[idx], tau)
    student, teacher = (p_led, p_other) if student_leads else (p_other, p_led)
    return kl(student, teacher) if kl_dir == "reverse" else kl(teacher, student)


def literal_bild(s: torch.Tensor, t: torch.Tensor, tau: float, kl_dir: str, k=None, k_min=2, k_max=None):
    """Mean over rows; ``k=None`` is DBiLD (knee per row and per led side)."""
    rows = []
    for i in range(s.shape[0]):
        kt = k or literal_knee(t[i].tolist(), k_min, k_max)
        ks = k or literal_knee(s[i].detach().tolist(), k_min, k_max)
        rows.append(
            literal_branch(t[i], s[i], kt, tau, kl_dir, student_leads=False)
            + literal_branch(s[i], t[i], ks, tau, kl_dir, student_leads=True)
        )
    return torch.stack(rows).mean()
