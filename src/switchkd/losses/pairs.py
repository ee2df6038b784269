"""KL between two pair distributions over the upper triangle, in O(k) time and memory.

For one row of k values in led order, ``P_mn = exp(A_m - A_n) / Z`` over pairs ``m < n`` (with
``A = a / tau``) is separable. With ``alpha_m = exp(A_m - max A)``, ``beta_n = exp(-A_n - max(-A))``,
the exclusive prefix ``Lam_n = sum_{m<n} alpha_m`` and suffix ``Rho_m = sum_{n>m} beta_n``:

    S   = sum_n beta_n Lam_n,            log Z_P = max A + max(-A) + log S
    r_m = sum_{n>m} P_mn = alpha_m Rho_m / S          (row mass)
    c_n = sum_{m<n} P_mn = beta_n Lam_n / S           (column mass)
    KL(P || Q) = sum_m u_m r_m - sum_n u_n c_n - log Z_P + log Z_Q,   u = A - B

(DESIGN.md writes the same in log space: ``L_n = log Lam_n + max A`` and ``R_m = log Rho_m + max(-A)``.)
The gradient is analytic and O(k) too; with ``C = log Z_Q - log Z_P``:

    dKL/dB_j = (r^Q_j - c^Q_j) - (r^P_j - c^P_j)
    dKL/dA_j = (u_j + C - KL) r_j - sum_{n>j} P_jn u_n - sum_{m<j} P_mj u_m + (u_j - C + KL) c_j

No k x k tensor is built. Entries past each row's k are masked (their alpha and beta are exactly 0).
Shifting by the row maxima keeps every term in [0, 1]; on the sorted led side the largest terms
open each prefix and close each suffix, so nothing underflows. Should an unsorted side span more
than the dtype's exponent range (``S`` underflows), the row is recomputed in float64.
"""

from __future__ import annotations

import torch


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum(x[:, :j])`` (exact zero for j = 0, no subtraction)."""
    out = torch.zeros_like(x)
    torch.cumsum(x[:, :-1], dim=-1, out=out[:, 1:])
    return out


def _exclusive_suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum(x[:, j+1:])``."""
    return _exclusive_cumsum(x.flip(-1)).flip(-1)


class _Masses:
    """Row masses, column masses and log Z of one side's pair distribution."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor):
        neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
        top = torch.where(valid, x, neg_inf).amax(dim=-1, keepdim=True)
        bottom = torch.where(valid, -x, neg_inf).amax(dim=-1, keepdim=True)
        self.alpha = torch.where(valid, torch.exp(x - top), 0.0)
        self.beta = torch.where(valid, torch.exp(-x - bottom), 0.0)
        lam = _exclusive_cumsum(self.alpha)
        col = self.beta * lam
        s = col.sum(dim=-1, keepdim=True)
        self.s = s
        self.row = self.alpha * _exclusive_suffix_sum(self.beta) / s
        self.col = col / s
        self.log_z = (top + bottom + torch.log(s)).squeeze(-1)


def _underflows(m: _Masses) -> bool:
    return m.s.dtype != torch.float64 and bool((m.s < torch.finfo(m.s.dtype).tiny * 1e6).any())


def _chunk_masses(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor):
    """Masses of both sides and ``u = A - B`` for a block of rows, in float64 if float32 underflows."""
    mp, mq = _Masses(a, valid), _Masses(b, valid)
    if _underflows(mp) or _underflows(mq):
        a, b = a.double(), b.double()
        mp, mq = _Masses(a, valid), _Masses(b, valid)
    return mp, mq, torch.where(valid, a - b, 0.0)


def _kl(mp: _Masses, mq: _Masses, u: torch.Tensor) -> torch.Tensor:
    return (u * (mp.row - mp.col)).sum(-1) - mp.log_z + mq.log_z


def _row_blocks(n_rows: int, width: int):
    # Blocks of ~256k elements: their temporaries stay in cache and in reused heap memory
    # (fresh multi-MB tensors cost more in page faults than in arithmetic on CPU).
    size = max(1, (1 << 18) // max(width, 1))
    return [slice(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]


class _PairKL(torch.autograd.Function):
    """Forward and backward run block by block; backward recomputes the masses rather than
    keeping a dozen (N, K) tensors alive between the passes."""

    @staticmethod
    def forward(ctx, p_values, q_values, valid, temperature):
        a, b = p_values / temperature, q_values / temperature
        out = torch.empty(a.shape[0], dtype=p_values.dtype, device=a.device)
        for rows in _row_blocks(*a.shape):
            mp, mq, u = _chunk_masses(a[rows], b[rows], valid[rows])
            out[rows] = _kl(mp, mq, u).to(out.dtype)
        ctx.temperature = temperature
        ctx.save_for_backward(a, b, valid)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, b, valid = ctx.saved_tensors
        want_p, want_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_p = torch.empty_like(a) if want_p else None
        grad_q = torch.empty_like(b) if want_q else None
        for rows in _row_blocks(*a.shape):
            mp, mq, u = _chunk_masses(a[rows], b[rows], valid[rows])
            g = grad_out[rows].to(u.dtype)[:, None] / ctx.temperature
            if want_q:
                grad_q[rows] = g * ((mq.row - mq.col) - (mp.row - mp.col))
            if want_p:
                shift = (mq.log_z - mp.log_z - _kl(mp, mq, u))[:, None]  # C - KL
                after = mp.alpha * _exclusive_suffix_sum(mp.beta * u) / mp.s  # sum_{n>j} P_jn u_n
                before = mp.beta * _exclusive_cumsum(mp.alpha * u) / mp.s  # sum_{m<j} P_mj u_m
                grad_p[rows] = g * ((u + shift) * mp.row - after - before + (u - shift) * mp.col)
        return grad_p, grad_q, None, None


def pair_kl(p_values: torch.Tensor, q_values: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``KL(P || Q)``; P from ``p_values``, Q from ``q_values``, both (N, K) in led order.

    ``valid`` (N, K) marks each row's first k entries (k >= 2). Returns (N,).
    """
    if p_values.shape != q_values.shape or p_values.shape != valid.shape:
        raise ValueError(f"pair_kl: shapes differ: {tuple(p_values.shape)}, {tuple(q_values.shape)}, "
                         f"{tuple(valid.shape)}")
    if p_values.shape[1] == 0:  # no rows at all (k >= 2 otherwise): keep the graph, return (N,) zeros
        return (p_values + q_values).sum(-1)
    return _PairKL.apply(p_values, q_values, valid, temperature)
