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


class _Side:
    """One side's pair distribution over a block of rows: the shifted terms, ``S`` and log Z.
    Row and column masses are computed only where a caller needs them."""

    def __init__(self, x: torch.Tensor, invalid: torch.Tensor):
        top = x.masked_fill(invalid, float("-inf")).amax(dim=-1, keepdim=True)
        low = x.masked_fill(invalid, float("inf")).amin(dim=-1, keepdim=True)
        self.alpha = torch.exp(x - top).masked_fill_(invalid, 0.0)
        self.beta = torch.exp(low - x).masked_fill_(invalid, 0.0)  # exp(-x - max(-x))
        self.col_raw = self.beta * _exclusive_cumsum(self.alpha)
        self.s = self.col_raw.sum(dim=-1, keepdim=True)
        self.log_z = (top - low + torch.log(self.s)).squeeze(-1)

    def underflows(self) -> bool:
        return self.s.dtype != torch.float64 and bool((self.s < torch.finfo(self.s.dtype).tiny * 1e6).any())

    def row(self) -> torch.Tensor:
        return self.alpha * _exclusive_suffix_sum(self.beta) / self.s

    def col(self) -> torch.Tensor:
        return self.col_raw / self.s


def _sides(a: torch.Tensor, b: torch.Tensor, invalid: torch.Tensor, need_b: bool = True):
    """Both sides of a block (only the one of ``a`` when ``need_b`` is false) in the input precision,
    or in float64 where the float32 sum underflows. Returns the sides and ``u = A - B`` (0 if masked)."""
    p = _Side(a, invalid)
    q = _Side(b, invalid) if need_b else None
    if p.underflows() or (q is not None and q.underflows()):
        a, b = a.double(), b.double()
        p = _Side(a, invalid)
        q = _Side(b, invalid) if need_b else None
    return p, q, (a - b.to(a.dtype)).masked_fill_(invalid, 0.0)


def _row_blocks(n_rows: int, width: int):
    # Blocks of ~256k elements: their temporaries stay in cache and in reused heap memory
    # (fresh multi-MB tensors cost more in page faults than in arithmetic on CPU).
    size = max(1, (1 << 18) // max(width, 1))
    return [slice(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]


class _PairKL(torch.autograd.Function):
    """Forward and backward run block by block. Forward needs P's masses but only Q's log Z; backward
    recomputes what its gradients need (P's masses for dA, both sides' masses for dB) rather than
    keeping a dozen (N, K) tensors alive between the passes."""

    @staticmethod
    def forward(ctx, p_values, q_values, valid, temperature):
        a, b = p_values / temperature, q_values / temperature
        invalid = ~valid
        out = torch.empty(a.shape[0], dtype=p_values.dtype, device=a.device)
        log_z_q = torch.empty(a.shape[0], dtype=torch.float64, device=a.device)
        for rows in _row_blocks(*a.shape):
            p, q, u = _sides(a[rows], b[rows], invalid[rows])
            out[rows] = ((u * (p.row() - p.col())).sum(-1) - p.log_z + q.log_z).to(out.dtype)
            log_z_q[rows] = q.log_z.double()
        ctx.temperature = temperature
        ctx.save_for_backward(a, b, invalid, out, log_z_q)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, b, invalid, kl, log_z_q = ctx.saved_tensors
        want_p, want_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_p = torch.empty_like(a) if want_p else None
        grad_q = torch.empty_like(b) if want_q else None
        for rows in _row_blocks(*a.shape):
            p, q, u = _sides(a[rows], b[rows], invalid[rows], need_b=want_q)
            g = grad_out[rows].to(u.dtype)[:, None] / ctx.temperature
            row, col = p.row(), p.col()
            if want_q:  # dKL/dB_j = (r^Q_j - c^Q_j) - (r^P_j - c^P_j)
                grad_q[rows] = g * ((q.row() - q.col()) - (row - col))
            if want_p:
                shift = (log_z_q[rows].to(u.dtype) - p.log_z - kl[rows].to(u.dtype))[:, None]  # C - KL
                after = p.alpha * _exclusive_suffix_sum(p.beta * u) / p.s  # sum_{n>j} P_jn u_n
                before = p.beta * _exclusive_cumsum(p.alpha * u) / p.s  # sum_{m<j} P_mj u_m
                # (u + C - KL) r - after - before + (u - C + KL) c
                grad_p[rows] = g * (u * (row + col) + shift * (row - col) - after - before)
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
